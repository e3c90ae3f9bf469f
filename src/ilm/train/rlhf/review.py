"""Reviewers for the fast path: who decides whether a suspiciously well-rewarded response is actually good.

A reviewer takes suspects (a query record, the response text, its reward and why it was flagged) and
returns one verdict each: approved or rejected, and for a rejection optionally a correction (a better
response to the same query). Three kinds, one interface (`review(suspects) -> verdicts`):

- `VerifierReviewer(fn)`: tasks with a checkable answer; `fn(query_record, response) -> bool | float |
  (bool, correction)`.
- `JudgeReviewer(base_url, model, api_key)`: a judge model behind an OpenAI-compatible chat endpoint
  (the `openai` client when it is installed, else plain HTTP).
- `FileReviewer`: a person, through a jsonl round trip (`ilm rlhf review export|import`): the suspects
  go out as jsonl, each line comes back with a "verdict" ("approve" / "reject") and optionally a
  "correction". Malformed lines are named (file:line), counted, and the rest is used.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Suspect:
    id: str  # stable within a run: "r{round}-u{update}-{row}"
    record: dict  # the query's jsonl record (messages, category, and whatever a verifier needs)
    response: str
    reward: float
    reasons: list[str]


@dataclass
class Verdict:
    id: str
    approved: bool
    correction: str | None = None


class Reviewer:
    """Approve or reject each suspect; `review` returns verdicts for those it decided (a subset is fine)."""

    def review(self, suspects: list[Suspect]) -> list[Verdict]:
        raise NotImplementedError


class VerifierReviewer(Reviewer):
    def __init__(self, fn: Callable[[dict, str], Any]):
        self.fn = fn

    def review(self, suspects: list[Suspect]) -> list[Verdict]:
        out = []
        for s in suspects:
            got = self.fn(s.record, s.response)
            correction = None
            if isinstance(got, tuple):
                got, correction = got
            ok = bool(got > 0) if isinstance(got, (int, float)) and not isinstance(got, bool) else bool(got)
            out.append(Verdict(s.id, ok, None if ok else correction))
        return out


def load_function(spec: str) -> Callable:
    """"package.module:function" -> the function (a clear error otherwise)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"{spec!r} must look like package.module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load {spec!r}: {err}") from err


# ----------------------------------------------------------------------------- a judge model

JUDGE_PROMPT = (
    "You review answers that a reward model scored suspiciously high. Decide whether the answer is actually "
    "correct and helpful for the conversation. Reply with APPROVE or REJECT on the first line; after a "
    "REJECT you may add a line starting with CORRECTION: followed by a better answer."
)


def parse_judgement(text: str) -> tuple[bool | None, str | None]:
    """(approved, correction) from a judge's reply; approved None when the reply says neither."""
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    if not lines:
        return None, None
    head = lines[0].upper()
    approved = True if head.startswith("APPROVE") else False if head.startswith("REJECT") else None
    correction = None
    for i, line in enumerate(lines):
        if line.upper().startswith("CORRECTION:"):
            correction = "\n".join([line.split(":", 1)[1].strip()] + lines[i + 1 :]).strip() or None
            break
    return approved, correction


class JudgeReviewer(Reviewer):
    """A judge model behind an OpenAI-compatible `/chat/completions` endpoint; unparsable replies are skipped."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0):
        self.base_url, self.model, self.timeout = base_url.rstrip("/"), model, timeout
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.unparsed = 0

    def _messages(self, s: Suspect) -> list[dict]:
        convo = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in s.record.get("messages", []))
        return [{"role": "system", "content": JUDGE_PROMPT},
                {"role": "user", "content": f"Conversation:\n{convo}\n\nAnswer to review:\n{s.response}"}]

    def _chat(self, messages: list[dict]) -> str:
        try:
            import openai
        except ImportError:
            openai = None
        if openai is not None:
            client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout)
            reply = client.chat.completions.create(model=self.model, messages=messages, temperature=0)
            return reply.choices[0].message.content or ""
        import urllib.request

        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0}).encode()
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read())["choices"][0]["message"]["content"] or ""

    def review(self, suspects: list[Suspect]) -> list[Verdict]:
        out = []
        for s in suspects:
            approved, correction = parse_judgement(self._chat(self._messages(s)))
            if approved is None:
                self.unparsed += 1
                continue
            out.append(Verdict(s.id, approved, None if approved else correction))
        return out


# ----------------------------------------------------------------------------- a person, via jsonl

VERDICTS = {"approve": True, "approved": True, "accept": True, "reject": False, "rejected": False}


def export_suspects(suspects: Iterable[Suspect], path: str | Path) -> Path:
    """One line per suspect, with an empty "verdict" and "correction" for the reviewer to fill in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**asdict(s), "verdict": "", "correction": ""}, ensure_ascii=False) for s in suspects]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def verdict_row(v: Verdict) -> dict[str, Any]:
    """A verdict as a line of the reviewed-file format (what `read_verdicts` reads back)."""
    return {"id": v.id, "verdict": "approve" if v.approved else "reject", "correction": v.correction or ""}


def read_verdicts(path: str | Path, known: set[str] | None = None) -> tuple[list[Verdict], dict[str, Any]]:
    """Verdict lines from a reviewed file; each malformed line is named (file:line: why) and counted."""
    with open(path, encoding="utf-8") as f:
        return verdicts_from_lines(str(path), [(n, line) for n, line in enumerate(f, 1) if line.strip()], known)


def verdicts_from_lines(path: str, lines: list[tuple[int, str]],
                        known: set[str] | None = None) -> tuple[list[Verdict], dict[str, Any]]:
    """Verdicts from numbered lines of the file `path` (named in the problems), malformed ones counted."""
    verdicts: list[Verdict] = []
    report: dict[str, Any] = {"lines": 0, "used": 0, "malformed": 0, "problems": []}

    def bad(where: str, why: str) -> None:
        report["malformed"] += 1
        report["problems"].append(f"{where}: {why}")

    seen: set[str] = set()
    for n, line in lines:
        report["lines"] += 1
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            bad(where, f"not JSON ({err.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            bad(where, "no string `id`")
            continue
        if known is not None and obj["id"] not in known:
            bad(where, f"unknown id {obj['id']!r} (not a suspect of this round)")
            continue
        verdict = str(obj.get("verdict") or "").strip().lower()
        if verdict not in VERDICTS:
            bad(where, f"`verdict` must be approve or reject, got {obj.get('verdict')!r}")
            continue
        correction = obj.get("correction")
        if correction is not None and not isinstance(correction, str):
            bad(where, "`correction` must be a string")
            continue
        if obj["id"] in seen:
            bad(where, f"duplicate id {obj['id']!r}")
            continue
        seen.add(obj["id"])
        approved = VERDICTS[verdict]
        verdicts.append(Verdict(obj["id"], approved, None if approved else (correction or "").strip() or None))
    report["used"] = len(verdicts)
    return verdicts, report


def build_pairs(suspects: list[Suspect], verdicts: list[Verdict], records: dict[str, dict]) -> tuple[list[dict], dict]:
    """Preference pairs from verdicts: rejected = a rejected suspect; chosen = the reviewer's correction,
    else an approved response to the same query. Rejections with neither are counted, not used."""
    by_id = {s.id: s for s in suspects}
    approved: dict[int, list[str]] = {}
    for v in verdicts:
        if v.approved and v.id in by_id:
            approved.setdefault(records[v.id]["query_index"], []).append(by_id[v.id].response)
    pairs, counts = [], {"approved": 0, "rejected": 0, "no_chosen": 0}
    for v in verdicts:
        if v.id not in by_id:
            continue
        if v.approved:
            counts["approved"] += 1
            continue
        counts["rejected"] += 1
        s, rec = by_id[v.id], records[v.id]
        better = [t for t in approved.get(rec["query_index"], []) if t != s.response]
        chosen = v.correction or (better[0] if better else None)
        if not chosen or chosen == s.response:
            counts["no_chosen"] += 1
            continue
        pairs.append({"prefix": rec["messages"], "chosen": chosen, "rejected": s.response,
                      "domain": rec.get("domain"), "suspect": v.id, "rejected_reward": s.reward,
                      "chosen_from": "correction" if v.correction else "approved"})
    return pairs, counts


class FileReviewer(Reviewer):
    """Reads the verdicts imported for this round (`ilm rlhf review import`); none yet means "waiting"."""

    def __init__(self, verdict_file: str | Path):
        self.path = Path(verdict_file)

    def ready(self) -> bool:
        return self.path.exists()

    def review(self, suspects: list[Suspect]) -> list[Verdict]:
        if not self.ready():
            return []
        verdicts, _ = read_verdicts(self.path, {s.id for s in suspects})
        return verdicts

"""The slow path's inbox: label files (jsonl) that annotators drop into `slow.inbox` while the rounds run.

A file is (re)read when it is new, when its sha256 changed or when it grew: an annotator who appends to
`labels.jsonl`, or drops a new version under the same name, is heard. Only lines never used before (by
content) become pairs, so an appended file gives just its new lines, once. The ledger (state.json's
"inbox") records per file every read: the round it arrived in, the line numbers used, and the reward
model they went into (`used_by_rm_of_round`); the rounds' manifests list these reads.

A label line is either a pair (`chosen` / `rejected`, used as is) or a verdict on a rollout of a slow
export (`id` + "verdict" + optional "correction"), which becomes a pair like the fast path's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ilm.train.rlhf.files import sha256
from ilm.train.rlhf.review import Suspect, build_pairs, verdicts_from_lines


def scan_inbox(inbox: Path, ledger: dict[str, dict], k: int) -> None:
    """Mark each label file that is new, changed or grown as pending, first seen in round k."""
    if not inbox.is_dir():
        return
    for f in sorted(inbox.glob("*.jsonl")):
        data = f.read_bytes()
        entry = ledger.setdefault(f.name, {"file": str(f), "sha256": None, "size": 0, "used_lines": [], "reads": []})
        if entry["sha256"] == sha256(data) or entry.get("pending"):
            continue
        entry.update(sha256=sha256(data), size=len(data), pending={"arrived_round": k})


def read_pending(entry: dict, k: int, exported: dict[str, dict]) -> tuple[list[dict], dict[str, Any]]:
    """A pending file's unused lines -> pairs, recorded as one read for RM_{k+1}; (pairs, report)."""
    path = Path(entry["file"])
    used = set(entry["used_lines"])
    lines = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        key = sha256(line.strip().encode())
        if line.strip() and key not in used:
            used.add(key)
            lines.append((n, line, key))
    pairs, report = label_lines_to_pairs(path, [(n, line) for n, line, _ in lines], exported)
    numbers = [n for n, _, _ in lines]
    entry["used_lines"] += [key for _, _, key in lines]
    entry["reads"].append({"file": str(path), "sha256": entry["sha256"], "lines": _ranges(numbers),
                           "pairs": len(pairs), "arrived_round": entry["pending"]["arrived_round"],
                           "used_by_rm_of_round": k + 1})
    entry["pending"] = None
    report["line_numbers"] = _ranges(numbers)
    return pairs, report


def reads_for(ledger: dict[str, dict], j: int) -> list[dict]:
    """The inbox reads that went into RM_j (file, sha256, line ranges, arrival round)."""
    return [r for e in ledger.values() for r in e["reads"] if r["used_by_rm_of_round"] == j]


def slow_labels_to_pairs(path: Path, exported: dict[str, dict]) -> tuple[list[dict], dict[str, Any]]:
    """Every line of a label file -> preference pairs (what the rounds do with a file's new lines)."""
    lines = [(n, x) for n, x in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1) if x.strip()]
    return label_lines_to_pairs(Path(path), lines, exported)


def label_lines_to_pairs(path: Path, lines: list[tuple[int, str]],
                         exported: dict[str, dict]) -> tuple[list[dict], dict[str, Any]]:
    """Numbered label lines -> preference pairs; each malformed line is named (file:line: why) and counted."""
    pairs: list[dict] = []
    report: dict[str, Any] = {"lines": 0, "pairs": 0, "malformed": 0, "problems": []}
    verdict_lines = []
    for n, line in lines:
        report["lines"] += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            report["malformed"] += 1
            report["problems"].append(f"{path}:{n}: not JSON ({err.msg})")
            continue
        if isinstance(obj, dict) and "chosen" in obj and "rejected" in obj:
            pairs.append({k: obj[k] for k in ("prefix", "prompt", "chosen", "rejected", "domain") if k in obj})
        else:
            verdict_lines.append((n, line))
    if verdict_lines:
        verdicts, vrep = verdicts_from_lines(str(path), verdict_lines, set(exported))
        report["malformed"] += vrep["malformed"]
        report["problems"] += vrep["problems"]
        suspects = [Suspect(v.id, {}, exported[v.id]["response"], exported[v.id].get("rm_score", 0.0), ["slow"])
                    for v in verdicts]
        pairs += build_pairs(suspects, verdicts, exported)[0]
    report["pairs"] = len(pairs)
    return pairs, report


def _ranges(numbers: list[int]) -> list[list[int]]:
    """[1, 2, 3, 7, 8] -> [[1, 3], [7, 8]]: line numbers as inclusive ranges."""
    out: list[list[int]] = []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out

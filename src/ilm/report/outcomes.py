"""What the trained models do, as the report shows it: evaluation (task scores, Needle in a Haystack) and the
chats through the server, each naming the model behind it (the chain's or the RLHF task model)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ilm.report import figures
from ilm.report.html import Safe, details, figure, join, kv, not_run, p, pre, section, table, tag
from ilm.report.run import STAGES, Run, _model_line

# ----------------------------------------------------------------------------- evaluation


def evaluation(run: Run) -> Safe:
    from ilm.report import evaluation as ev

    res, niah = run.json("eval/results.json"), run.json("eval/niah.json")
    if res is None and niah is None:
        return not_run("eval", STAGES[7][2], "no eval/results.json or eval/niah.json")
    body = []
    if res is not None:
        body += [tag("h3", "Results"), _model_line(run, "Model evaluated", _checkpoint(res), _which(run, _checkpoint(res))),
                 ev.results_table(res)]
    else:
        body.append(p("No eval/results.json.", class_="notrun"))
    if niah is not None:
        demo = run.stage("eval").get("niah") or {}
        guess = demo.get("chance")  # 10^-N for N random digits, as the console prints it
        chance = (f"; chance {guess:.3%} ({round(-math.log10(guess))} random digits)"
                  if isinstance(guess, float) and 0 < guess < 1 else "")
        body += [tag("h3", "Needle in a Haystack"),
                 _model_line(run, "Model evaluated", _checkpoint(niah), _which(run, _checkpoint(niah)) + chance)]
        part = ev.niah_part(niah)
        if part:
            body += part
        elif run.file("eval/niah.png"):
            body.append(figure(figures.png_file(run.path / "eval" / "niah.png", "NIAH heatmap"),
                               "The evaluation's own heatmap (niah.json has no grid this report reads)."))
        body.append(ev.scalars(niah))
    return section("eval", STAGES[7][2], join(body))


def _which(run: Run, path: Any) -> str:
    """" — the pretrained model (pretrain section)" and the like: which of the demo's models a path is."""
    if not path:
        return ""
    rlhf = run.stage("rlhf")
    known = [(run.stage("pretrain").get("export"), "the pretrained model of the pretrain section (the chain)"),
             (run.stage("sft").get("export"), "the SFT model of the SFT section (the chain)"),
             (rlhf.get("actor"), "the final RLHF policy of the RLHF section (the separate task model, also served)"),
             ((rlhf.get("actors") or {}).get("1"), "the RLHF task model's SFT start")]
    target = str(path).removeprefix("pretrained=").split(",")[0]
    for p_, text in known:
        if p_ and Path(str(p_)).resolve() == Path(target).resolve():
            return f" — {text}"
    return ""


def _checkpoint(obj: Any) -> str | None:
    """The checkpoint an eval file names: ours ("checkpoint") or lm-eval's (config.model_args)."""
    if not isinstance(obj, dict):
        return None
    c = obj.get("checkpoint")
    if not c and isinstance(obj.get("config"), dict):
        c = obj["config"].get("model_args")
    return str(c) if c else None


# ----------------------------------------------------------------------------- chats


def _content(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, list):  # OpenAI content parts
        return "".join(x.get("text", "") if isinstance(x, dict) else str(x) for x in c)
    return "" if c is None else str(c)


def _message(m: dict[str, Any]) -> Safe:
    role = str(m.get("role", "?"))
    head = role + (f" · {m['name']}" if m.get("name") else "") + (
        f" · result of {m['tool_call_id']}" if m.get("tool_call_id") else "")
    parts = [tag("div", head, class_="role")]
    text = _content(m)
    if text:
        parts.append(pre(text, 3000) if role in ("tool", "environment") or "\n" in text else tag("div", text))
    for call in m.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.dumps(json.loads(args), ensure_ascii=False)
            except ValueError:
                pass
        elif args is not None:
            args = json.dumps(args, ensure_ascii=False)
        parts.append(tag("div", join(["tool call: ", tag("code", f"{fn.get('name', '?')}({args or ''})")]),
                         class_="call"))
    return tag("div", join(parts), class_=f"msg {role}")


def _tool_values(check: Any) -> list[Safe]:
    """The serve stage's tool-value check: the console's line and the policy's round trips."""
    if not isinstance(check, dict) or not isinstance(check.get("policy"), dict):
        return []
    rows = [[r.get("question", ""), r.get("tool_result") or "no call parsed", r.get("answer") or "—",
             "yes" if r.get("uses_result") else "NO"] for r in check["policy"].get("rows", []) if isinstance(r, dict)]
    return [tag("h3", "Tool-value check"), p(str(check.get("line", ""))),
            details(f"The policy's {len(rows)} round trips", table(["question", "tool result", "final answer",
                                                                    "states the tool's value"], rows))]


def chats(run: Run) -> Safe:
    data = run.json("serve/transcripts.json")
    if data is None:
        body = [p("Not run: no serve/transcripts.json.", class_="notrun")]
        samples = run.stage("model").get("chat_samples")
        if samples:
            body += [tag("h3", "Direct generation from the SFT model (the demo's model stage, no server)"),
                     table(["reply"], [[s] for s in samples])]
        return section("chats", STAGES[8][2], join(body), status="not run")
    exchanges = data if isinstance(data, list) else data.get("exchanges", []) if isinstance(data, dict) else []
    body = []
    served = run.stage("serve").get("checkpoint")
    if served:  # the demo serves the RLHF policy (rlhf.actor): say which model these replies came from
        rlhf = run.stage("rlhf").get("actor")
        body.append(_model_line(run, "Model behind the server", served,
                                " (the final RLHF policy of the RLHF section)" if served == rlhf else ""))
    body += _tool_values(run.stage("serve").get("tool_values"))
    for i, ex in enumerate(exchanges):
        if not isinstance(ex, dict):
            continue
        msgs = [m for m in ex.get("messages", []) if isinstance(m, dict)]
        parts = [join(_message(m) for m in msgs)]
        if ex.get("streamed_text"):
            parts.append(tag("div", join([tag("div", "streamed reply (deltas joined)", class_="role"),
                                          tag("div", ex["streamed_text"])]), class_="msg assistant"))
        calls = [c for c in ex.get("tool_calls") or [] if isinstance(c, dict)]
        if calls:  # the reply's own calls (the server's streamed tool_calls), not the request's
            parts.append(_message({"role": "assistant", "name": "reply", "tool_calls": calls}))
        facts = [(k, v) for k, v in ex.items() if k not in ("messages", "streamed_text", "title", "name", "kind")
                 and isinstance(v, (int, float, str, bool))]
        for k, v in ex.items():
            if isinstance(v, dict) and k != "messages":
                facts += [(f"{k}.{a}", b) for a, b in v.items() if isinstance(b, (int, float, str, bool))]
        if facts:
            parts.append(kv(facts))
        title = ex.get("title") or ex.get("name") or ex.get("kind") or f"Exchange {i + 1}"
        title = f"Exchange {i + 1}: {title}" if not str(title).startswith("Exchange") else title
        kinds = " (with a tool call)" if calls or any(m.get("tool_calls") for m in msgs) else ""
        body.append(tag("div", join([tag("h3", f"{title}{kinds}"), *parts]), class_="chat"))
    if not body:
        body = [p("serve/transcripts.json holds no exchanges.", class_="notrun")]
    return section("chats", STAGES[8][2], join(body))

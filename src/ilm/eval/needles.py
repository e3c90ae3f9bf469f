"""Needle in a Haystack as the demo uses it: chat data that teaches the task (`needle_conversations`) and
`make demo`'s NIAH step (`demo`), on top of `ilm.eval.niah`'s prompts and scoring.

The demo's 2-layer task model learns needle retrieval from these conversations in its SFT data, and the
demo then asks it in the same chat template at half, one and two times its window: the hit rate within the
window shows the skill, the one past it what dynamic NTK and plain RoPE make of the longer context.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ilm.eval import niah

# The demo's needle: two random digits, as the task's numbers. Measured on the task model (4,000 task + 600
# tool + 800 needle chats, 5 epochs): within its window 22% with two digits (chance 1%), 6% with three
# (0.1%), 0% with the default five, whose first digit it copies and then loses.
DEMO_NEEDLE = "The secret number of {key} is {value:2}."


def needle_conversations(tokenizer: Any, n: int, window: int, seed: int = 0, needle: str = DEMO_NEEDLE,
                         min_tokens: int = 16) -> list[dict[str, Any]]:
    """Chat data that teaches the NIAH task: the user's message is haystack sentences (a random run of at
    least `min_tokens` tokens) with a needle on a random sentence boundary, then the question; the assistant
    answers "<subject> is <value>.". Each conversation fits `window` tokens in the chat template, so a model
    fine-tuned on them is asked within its window by `run_grid(..., chat=True)`; random needles and values,
    so the only way to the answer is to find it in the context."""
    rng = random.Random(f"needle-conversations/{seed}")  # not the stream run_grid draws its needles from
    haystack = niah.Haystack(tokenizer)
    head, mid = niah.chat_frame(tokenizer)
    out = []
    for _ in range(n):
        nd = niah.make_needle(needle, rng)
        answer = f"{nd.answer_start} {nd.value}."
        fixed = len(head) + len(mid) + 2 + sum(len(tokenizer.encode(" " + t)) for t in (nd.text, nd.ask, answer))
        room = window - fixed
        if room < min_tokens:
            raise niah.NiahError(f"a {window}-token window leaves {room} tokens of haystack for needle {needle!r}")
        target, start, parts, total = rng.randint(min_tokens, room), rng.randrange(len(haystack.texts)), [], 0
        for i in range(start, start + len(haystack.texts)):
            if parts and total + len(haystack.ids(i)) > target:
                break
            if total + len(haystack.ids(i)) <= room:  # a sentence longer than the room is skipped
                parts.append(haystack.texts[i % len(haystack.texts)])
                total += len(haystack.ids(i))
        if not parts:
            raise niah.NiahError(f"no haystack sentence fits the {room} tokens a {window}-token window leaves")
        parts.insert(rng.randint(0, len(parts)), nd.text)
        out.append({"messages": [{"role": "user", "content": " ".join(parts) + " " + nd.ask},
                                 {"role": "assistant", "content": answer}]})
    return out


def chance(needle: str = DEMO_NEEDLE) -> float | None:
    """The hit rate of guessing N random digits: 10^-N (10^-5 for the default needle; None for a literal one)."""
    digits = niah.value_digits(needle)
    return None if digits is None else 10.0 ** -digits


def demo(out: Path, checkpoint: Path, quick: bool = True, chat: bool = False, label: str | None = None,
         needle: str = DEMO_NEEDLE) -> dict:
    """`make demo`'s NIAH step: a small heatmap of `checkpoint` at half, one and two times its trained length
    (seconds of CPU), dynamic NTK against plain RoPE, into out/eval/niah.png and niah.json. `chat` asks in
    the chat template (a chat model); prompt and answer then fit each length (`answer_room`), so the lengths
    up to the trained one are within the window the model was fine-tuned on. `label` names the model on
    the console line.

    Returns {"lengths", "depths", "trials", "trained_length", "chance", "model", "dynamic": {...},
    "plain": {...}, "json", "png"}, each run with its overall hit rate, per length, and within / beyond the
    trained length.
    """
    trained = niah.trained_length(checkpoint)
    lengths = [trained // 2, trained, 2 * trained] + ([] if quick else [4 * trained])
    depths = [0.0, 0.5, 1.0] if quick else [0.0, 0.25, 0.5, 0.75, 1.0]
    trials, new = (2 if quick else 3), 8
    result = niah.evaluate(checkpoint, lengths, depths, Path(out) / "eval", compare_ntk=True, needle=needle,
                           max_new_tokens=new, trials=trials, answer_room=new if chat else 0, chat=chat)
    model = label or str(checkpoint)
    summary = {"lengths": lengths, "depths": depths, "trials": trials, "chat": chat, **result["summary"],
               "chance": chance(needle), "model": model, "checkpoint": str(checkpoint),
               "json": str(Path(out) / "eval" / "niah.json"), "png": str(Path(out) / "eval" / "niah.png")}
    s = result["summary"]
    rates = {part: ", ".join(f"{niah._label(n, result['runs'][n]['rope_scaling'])} {s[n][part]:.0%}" for n in result["runs"])
             for part in ("within", "beyond")}
    inside = [n for n in lengths if n <= trained]
    found, guess = max(s[n]["within"] or 0.0 for n in result["runs"]), chance(needle) or 0.0
    verdict = ("" if found > 10 * guess else "; NOT WORKING: no needle found within the window" if not found
               else "; NOT WORKING: within the window no better than 10x chance")
    print(f"[eval] NIAH on {model} ({checkpoint}), {len(lengths)} lengths x {len(depths)} depths x {trials} needles: "
          f"within its {trained}-token window ({', '.join(map(str, inside))} tokens) {rates['within']}; past it "
          f"({', '.join(str(n) for n in lengths if n > trained)}) {rates['beyond']}; chance {chance(needle):.3%} "
          f"({niah.value_digits(needle)} random digits){verdict} -> {summary['png']}")
    return summary

"""Needle in a Haystack (`ilm eval niah`): the score with stand-in models, needle placement, outputs, bad
input, a tiny real checkpoint end to end through the CLI; chat-template prompts (`--chat`), the chat data
that teaches the task (`ilm.eval.needles`) and the demo's console line."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from ilm.eval import needles, niah
from ilm.tokenizer.chat import render_text

NEEDLE_RE = re.compile(r"The secret number of (\w+) is (\d{5})\.")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from ilm.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("niah-tok")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(niah.sentences(niah.haystack_text())[:3000]))
    return train_tokenizer([corpus], d / "tok", vocab_size=512)


@pytest.fixture(scope="module")
def haystack(tok):
    return niah.Haystack(tok)


def run_cli(argv: list[str]) -> int:
    """Through `ilm eval niah` once ilm.eval.cli exists, else this module's own entry point (same errors)."""
    if importlib.util.find_spec("ilm.eval.cli") is not None:
        from ilm.cli import main

        return main(["eval", "niah", *argv])
    return niah.main(argv)


def copier(tok):
    """A stand-in model that finds the needle in its prompt and answers with its value."""
    def answer(ids):
        m = NEEDLE_RE.search(tok.decode(ids))
        return tok.encode(" " + m.group(2)) if m else []
    return answer


def test_scores_copier_100_never_0_and_partial_the_expected_fraction(tok, haystack):
    lengths, depths = [120, 240], [0.0, 0.25, 0.5, 0.75, 1.0]
    full = niah.run_grid(copier(tok), tok, lengths, depths, seed=3, trials=2, haystack=haystack)
    assert len(full["cells"]) == 2 * 5 * 2
    assert full["score"]["overall"] == 1.0 and all(c["hit"] for c in full["cells"])
    assert {c["value"] for c in full["cells"]} and all(c["value"] in c["answer"] for c in full["cells"])

    never = niah.run_grid(lambda ids: tok.encode(" I do not know, maybe 4242."), tok, lengths, depths, seed=3,
                          trials=2, haystack=haystack)
    assert never["score"]["overall"] == 0.0 and not any(c["hit"] for c in never["cells"])

    # copies only the short contexts -> exactly half; and only the first half of the depths -> per-depth rows
    copy = copier(tok)
    half = niah.run_grid(lambda ids: copy(ids) if len(ids) <= 120 else [], tok, lengths, depths, seed=3, trials=2,
                         haystack=haystack)
    assert half["score"]["overall"] == 0.5
    assert half["score"]["by_length"] == {"120": 1.0, "240": 0.0}
    assert half["score"]["grid"] == [[1.0, 0.0]] * 5

    # a model that copies a different number (the needle's digits reversed) never scores
    def wrong(ids):
        return tok.encode(" " + NEEDLE_RE.search(tok.decode(ids)).group(2)[::-1] + "x")
    assert niah.run_grid(wrong, tok, [120], [0.5], seed=1, haystack=haystack)["score"]["overall"] == 0.0


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0])
def test_needle_lands_at_the_requested_depth_on_a_sentence_boundary(tok, haystack, depth):
    import random

    needle = niah.make_needle(niah.DEFAULT_NEEDLE, random.Random(0))
    n_ids, q_ids = tok.encode(" " + needle.text), tok.encode(" " + needle.question)
    for length, offset in ((400, 0), (700, 57)):
        p = niah.build_prompt(haystack, n_ids, q_ids, length, depth, offset)
        assert len(p.ids) == length and p.ids[0] == tok.bos_id
        assert p.ids[p.needle_at:p.needle_at + len(n_ids)] == n_ids
        assert p.ids[-len(q_ids):] == q_ids
        before = p.ids[1:p.needle_at]
        after = p.ids[p.needle_at + len(n_ids):len(p.ids) - len(q_ids)]
        assert len(before) + len(after) == p.haystack_tokens
        # on a sentence boundary: the haystack before it ends a sentence (or is empty at depth 0)
        assert before == [] or tok.decode(before).rstrip()[-1] in ".!?"
        longest = max(len(haystack.ids(i)) for i in range(offset, offset + 80))
        assert abs(len(before) - depth * p.haystack_tokens) <= longest / 2 + 1
        if depth == 0.0:
            assert p.needle_at == 1
        if depth == 1.0:
            assert after == []
    text = tok.decode(niah.build_prompt(haystack, n_ids, q_ids, 400, depth).ids)
    assert needle.text in text and text.endswith(needle.question)


def test_needle_template_and_literal_needles():
    import random

    n = niah.make_needle(niah.DEFAULT_NEEDLE, random.Random(1))
    assert re.fullmatch(r"The secret number of \w+ is \d{5}\.", n.text) and n.value in n.text
    assert n.question.startswith("What is the secret number of ") and n.question.endswith(" is")
    p = niah.make_needle("The pass key is {value}. Remember it.", random.Random(2))
    assert p.question == "What is the pass key? The pass key is" and re.fullmatch(r"\d{5}", p.value)
    lit = niah.make_needle("Alice said hello. The best city is Paris.", random.Random(0))
    assert lit.value == "Paris" and lit.question == "What is the best city? The best city is"
    with pytest.raises(niah.NiahError, match="subject> is <value"):
        niah.make_needle("no value here", random.Random(0))


def test_heatmap_png_and_json_written(tmp_path, tok, haystack):
    runs = {name: niah.run_grid(fn, tok, [100, 200], [0.0, 1.0], haystack=haystack)
            for name, fn in (("dynamic", copier(tok)), ("plain", lambda ids: []))}
    result = {"checkpoint": "x", "runs": runs, "summary": niah.summarise(runs, trained_length=100)}
    paths = niah.write_outputs(tmp_path / "out", result)
    for name in ("niah.png", "niah-dynamic.png", "niah-plain.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    cell = data["runs"]["dynamic"]["cells"][0]
    assert {"length", "depth", "hit", "answer"} <= set(cell)
    assert data["summary"]["dynamic"] == {"overall": 1.0, "by_length": {"100": 1.0, "200": 1.0}, "within": 1.0,
                                          "beyond": 1.0}
    assert data["summary"]["plain"]["within"] == 0.0 and data["summary"]["trained_length"] == 100
    assert not list((tmp_path / "out").glob(".*tmp"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    """A tiny random model trained at 96 positions, with the tokenizer beside its weights."""
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint

    d = tmp_path_factory.mktemp("niah-ckpt")
    tok.save(d / "tok")
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=96,
                                   rope_theta=10_000.0), seed=3).eval()
    files = {p.name: p.read_bytes() for p in (d / "tok").iterdir()}
    return save_checkpoint(model, d / "ckpt", extra_files=files)


def test_tiny_checkpoint_end_to_end_through_the_cli(tmp_path, checkpoint, capsys):
    out = tmp_path / "niah"
    rc = run_cli(["--checkpoint", str(checkpoint), "--lengths", "96,256", "--depths", "0,0.5,1", "--out", str(out),
                  "--compare-ntk", "--max-new-tokens", "4", "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "niah.json").read_text())
    assert set(data["runs"]) == {"dynamic", "plain"}
    assert data["runs"]["dynamic"]["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    assert data["runs"]["plain"]["rope_scaling"] is None
    for run in data["runs"].values():
        assert [(c["length"], c["depth"]) for c in run["cells"]] == [(n, d) for n in (96, 256) for d in (0, 0.5, 1)]
        assert all(c["prompt_tokens"] == c["length"] for c in run["cells"])
    assert data["summary"]["trained_length"] == 96
    assert (out / "niah.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "dynamic" in printed and "plain" in printed and "niah.json" in printed


def test_model_answers_past_the_cap_equal_a_full_recompute(checkpoint):
    """The answerer takes prompts past max_position_embeddings x factor (the generator's cap today) and
    gives what greedy decoding by full recompute gives; plain RoPE's raised max_position_embeddings changes
    no logit."""
    import torch

    from ilm.model.hf import load_checkpoint

    prompt = [1] + [(7 * i) % 400 + 20 for i in range(220)]  # 221 tokens: past 96 x 2
    original = load_checkpoint(checkpoint).eval()
    plain = niah.load_model(checkpoint, None, positions=240)
    assert plain.config.max_position_embeddings == 240
    with torch.no_grad():
        ids = torch.tensor([prompt])
        assert torch.equal(original(ids), plain(ids))
    for rope in (None, {"type": "dynamic", "factor": 2.0}):
        model = niah.load_model(checkpoint, rope, positions=240)
        got = niah.model_answerer(model, 6, stop_ids=())(prompt)
        assert list(got) == niah.greedy_full(niah.load_model(checkpoint, rope), prompt, 6)
    dyn = niah.load_model(checkpoint, {"type": "dynamic", "factor": 2.0}, positions=240)
    assert dyn.config.max_position_embeddings == 96  # dynamic NTK's base depends on it: never changed


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "abc"], "--lengths must be"),
    (["--lengths", "0,64"], "--lengths must be"),
    (["--lengths", ""], "--lengths must be"),
    (["--depths", "0,1.5"], "--depths must be"),
    (["--depths", "nan"], "--depths must be"),
    (["--depths", "x"], "--depths must be"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be"),
    (["--needle", "nothing to find"], "must read '<subject> is <value>."),
])
def test_nonsense_options_are_one_line_errors(tmp_path, checkpoint, capsys, argv, message):
    base = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--lengths", "96", "--depths", "0"]
    assert run_cli(base + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "niah.json").exists()


def test_needle_longer_than_the_haystack_names_both_lengths(tmp_path, checkpoint, capsys):
    long_needle = "The pass key is {value}. " + "It is a long and winding story about nothing at all. " * 6
    assert run_cli(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--lengths", "40,400",
                    "--depths", "0.5", "--needle", long_needle]) == 2
    err = capsys.readouterr().err
    m = re.search(r"the needle \((\d+) tokens\) is longer than the haystack left at context length 40 \((\d+) tokens",
                  err)
    assert m and int(m.group(1)) > int(m.group(2)) and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before any model ran


def test_checkpoint_without_a_tokenizer(tmp_path, capsys):
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint

    path = save_checkpoint(build_model(get_preset("tiny"), seed=0), tmp_path / "bare")
    assert run_cli(["--checkpoint", str(path), "--out", str(tmp_path / "o"), "--lengths", "96"]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer" in err and err.count("\n") == 1


def test_demo_writes_a_small_heatmap_and_returns_its_summary(tmp_path, tok):
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint

    tok.save(tmp_path / "tok")
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=192), seed=4)
    files = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()}
    ckpt = save_checkpoint(model, tmp_path / "ckpt", extra_files=files)
    summary = needles.demo(tmp_path / "run", ckpt, quick=True)
    assert summary["lengths"] == [96, 192, 384] and summary["depths"] == [0.0, 0.5, 1.0] and summary["trials"] == 2
    assert summary["trained_length"] == 192 and {"dynamic", "plain"} <= set(summary)
    assert summary["chance"] == 0.01 and summary["chat"] is False  # the demo needle: two random digits
    assert (tmp_path / "run" / "eval" / "niah.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "run" / "eval" / "niah.json").read_text())
    assert len(data["runs"]["dynamic"]["cells"]) == 18
    json.dumps(summary)  # goes into the demo's report.json as is


def test_passkey_training_rows_put_the_labels_on_the_needle_digits(tok, haystack):
    """examples/passkey.py: each row fits the window and is supervised on exactly its needle's digits."""
    import importlib.util
    import random
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "passkey.py"
    spec = importlib.util.spec_from_file_location("passkey_example", path)
    passkey = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(passkey)
    ids, labels = passkey.make_batch(tok, haystack, random.Random(0), 6, 160)
    assert ids.shape == labels.shape == (6, 160)
    for row, lab in zip(ids.tolist(), labels.tolist()):
        at = [i for i, t in enumerate(lab) if t != -100]
        assert at == list(range(at[0], at[-1] + 1))
        assert [lab[i] for i in at] == row[at[0] + 1:at[-1] + 2]  # position t is supervised with token t + 1
        value = re.search(r"The pass key is (\d{5})\. Remember it\.", tok.decode(row)).group(1)
        assert tok.decode([lab[i] for i in at]).strip() == value
        assert tok.decode(row[:at[0] + 1]).endswith("What is the pass key? The pass key is")


def test_the_memory_estimate_s_refusal_is_one_line_not_a_fallback(tmp_path, checkpoint, capsys, monkeypatch):
    """Past the trained window the generator's memory estimate may refuse a prompt: NIAH says so in one
    line (exit 2) instead of falling back to a full forward with no check."""
    import ilm.model.generate as gen
    from ilm.model.memory import ContextMemoryError

    def refuse(model, prompts, sampling, keep_stop=False):
        raise ContextMemoryError(f"a context of {len(prompts[0])} tokens needs ~1.8 GB; 0.5 GB is free")

    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to a full forward past the memory estimate")

    monkeypatch.setattr(gen, "generate", refuse)
    monkeypatch.setattr(niah, "greedy_full", no_fallback)
    rc = run_cli(["--checkpoint", str(checkpoint), "--lengths", "256", "--depths", "0.5", "--out", str(tmp_path),
                  "--max-new-tokens", "2", "--compare-ntk"])  # dynamic NTK (x2) first: 256 is past its 192
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "needs ~1.8 GB; 0.5 GB is free" in err


# ---------------------------------------------------------------- chat models (`--chat`, the demo)


def test_chat_prompts_are_the_chat_template_around_haystack_and_question(tok):
    head, mid = niah.chat_frame(tok)
    assert tok.decode(head) == render_text([{"role": "user", "content": ""}])[: -len("<|im_end|>\n")]
    assert tok.decode(mid) == "<|im_end|>\n<|im_start|>assistant\n"

    seen = []

    def copier(ids):  # finds the needle in the user's message and answers with its value
        seen.append(ids)
        m = NEEDLE_RE.search(tok.decode(ids))
        return tok.encode(" " + m.group(2)) if m else []

    grid = niah.run_grid(copier, tok, [120, 240], [0.0, 0.5, 1.0], seed=2, trials=2, answer_room=8, chat=True)
    assert grid["chat"] is True and grid["score"]["overall"] == 1.0
    for ids, cell in zip(seen, grid["cells"]):
        assert len(ids) == cell["length"] - 8 and ids[: len(head)] == head  # prompt + answer room = the length
        text = tok.decode(ids)
        needle = NEEDLE_RE.search(text)
        key = needle.group(1)
        assert text.endswith(f" What is the secret number of {key}?<|im_end|>\n<|im_start|>assistant\n"
                             f"The secret number of {key} is")
    plain = niah.run_grid(copier, tok, [120], [0.5], seed=2)  # the default stays plain text after BOS
    assert plain["chat"] is False and "<|im_start|>" not in tok.decode(seen[-1])


def test_needle_conversations_fit_the_window_and_answer_from_the_context(tok):
    convs = needles.needle_conversations(tok, 40, window=200, seed=3, needle=niah.DEFAULT_NEEDLE)
    assert convs == needles.needle_conversations(tok, 40, window=200, seed=3, needle=niah.DEFAULT_NEEDLE)
    assert convs != needles.needle_conversations(tok, 40, window=200, seed=4, needle=niah.DEFAULT_NEEDLE)
    two = needles.needle_conversations(tok, 5, window=200)  # the demo's needle: two digits
    assert all(re.search(r"The secret number of \w+ is \d{2}\.$", c["messages"][1]["content"]) for c in two)
    values = set()
    for c in convs:
        user, assistant = c["messages"]
        assert len(tok.render(c["messages"]).ids) <= 200
        m = NEEDLE_RE.search(user["content"])
        assert m and user["content"].count("The secret number of") == 1
        assert user["content"].endswith(f"What is the secret number of {m.group(1)}?")
        assert assistant == {"role": "assistant", "content": m.group(0)}
        values.add(m.group(2))
    assert len(values) == 40  # random values: only the context gives the answer
    with pytest.raises(niah.NiahError, match="40-token window leaves"):
        needles.needle_conversations(tok, 1, window=40)


def test_demo_line_names_the_model_the_window_and_chance_and_says_not_working(tmp_path, tok, capsys):
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint

    tok.save(tmp_path / "tok")
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=256), seed=4)
    files = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()}
    ckpt = save_checkpoint(model, tmp_path / "ckpt", extra_files=files)
    summary = needles.demo(tmp_path / "run", ckpt, quick=True, chat=True, label="a random model",
                           needle=niah.DEFAULT_NEEDLE)
    line = capsys.readouterr().out.strip()
    assert summary["model"] == "a random model" and summary["chat"] is True and summary["lengths"] == [128, 256, 512]
    assert line.startswith(f"[eval] NIAH on a random model ({ckpt}), 3 lengths x 3 depths x 2 needles")
    assert "within its 256-token window (128, 256 tokens) dynamic NTK x2 0%, plain RoPE 0%" in line
    assert "past it (512) dynamic NTK x2 0%, plain RoPE 0%; chance 0.001% (5 random digits)" in line
    assert "NOT WORKING: no needle found within the window" in line  # a random model finds none
    cells = json.loads((tmp_path / "run" / "eval" / "niah.json").read_text())["runs"]["plain"]["cells"]
    assert all(c["prompt_tokens"] == c["length"] - 8 for c in cells)


def test_value_digits_and_chance():
    import random

    two = niah.make_needle("The secret number of {key} is {value:2}.", random.Random(5))
    assert re.fullmatch(r"\d{2}", two.value) and two.text.endswith(f" is {two.value}.")
    assert niah.value_digits("x {value:3}") == 3 and niah.value_digits(niah.DEFAULT_NEEDLE) == 5
    assert niah.value_digits("The best city is Paris.") is None
    assert needles.chance("{key} is {value:2}.") == pytest.approx(0.01) and needles.chance() == pytest.approx(
        10.0 ** -niah.value_digits(needles.DEMO_NEEDLE))
    assert needles.chance("The best city is Paris.") is None
    with pytest.raises(niah.NiahError, match="1 to 9 digits"):
        niah.make_needle("The secret number of {key} is {value:0}.", random.Random(0))


def test_chat_flag_through_the_cli(tmp_path, checkpoint, capsys):
    """`ilm eval niah --chat` with a two-digit needle: the run is marked as asked in the chat template, its
    values have two digits, and every prompt (prompt_tokens) is its length."""
    out = tmp_path / "niah"
    rc = run_cli(["--checkpoint", str(checkpoint), "--lengths", "96,160", "--depths", "0,1", "--out", str(out),
                  "--max-new-tokens", "2", "--chat", "--needle", "The secret number of {key} is {value:2}."])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "niah.json").read_text())
    run = data["runs"]["checkpoint"]
    assert run["chat"] is True and all(len(c["value"]) == 2 for c in run["cells"])
    assert all(c["prompt_tokens"] == c["length"] for c in run["cells"])


def test_mc_chance_is_the_binomial_tail_of_a_guesser():
    """The demo's eval line: 4-choice chance and the probability a guesser scores at least the model's accuracy."""
    from ilm.eval.demo import mc_chance

    assert mc_chance(4, 1.0) == (0.25, pytest.approx(0.25 ** 4))
    assert mc_chance(4, 0.5)[1] == pytest.approx(1 - 0.75 ** 4 - 4 * 0.25 * 0.75 ** 3)
    assert mc_chance(40, 0.0)[1] == pytest.approx(1.0) and mc_chance(40, 0.35)[1] == pytest.approx(0.1032, abs=1e-4)

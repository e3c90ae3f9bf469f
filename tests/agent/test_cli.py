"""`ilm chat` end to end on a tiny real checkpoint, with piped stdin; bad checkpoints fail in one line."""

from __future__ import annotations

import io

import pytest

from ilm.cli import main

from .conftest import needs_jail


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint

    # a context that holds the builtin tools' declaration (~600 tokens with this 512-token vocabulary)
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=2048), seed=3).eval()
    path = save_checkpoint(model, tmp_path_factory.mktemp("chat") / "ckpt")
    tok.save(path)
    return path, model


def _greedy(model, tok, messages, n=6) -> str:
    from ilm.model.generate import Sampling, generate

    ids = tok.render(messages, add_generation_prompt=True).ids
    [out] = generate(model, [ids], Sampling(max_new_tokens=n, greedy=True, stop_ids=tuple(tok.stop_ids)))
    assert tok.control_ids["<|action_start|>"] not in out  # a plain reply (no action) for this seed
    return tok.parse(out).content


def _chat(monkeypatch, capsys, lines: list[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = main(["chat", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_chat_streams_replies_keeps_history_and_obeys_commands(checkpoint, tok, monkeypatch, capsys):
    path, model = checkpoint
    system = {"role": "system", "content": "Be brief."}
    first = _greedy(model, tok, [system, {"role": "user", "content": "hello"}])
    second = _greedy(model, tok, [system, {"role": "user", "content": "hello"},
                                  {"role": "assistant", "content": first}, {"role": "user", "content": "the fox"}])
    after_reset = _greedy(model, tok, [system, {"role": "user", "content": "the dog"}])
    assert first and second and after_reset
    code, out, err = _chat(monkeypatch, capsys, ["/system Be brief.", "hello", "the fox", "/reset", "the dog",
                                                 "/nonsense", "/exit", "never read"],
                           "--checkpoint", str(path), "--greedy", "--max-new-tokens", "6")
    assert code == 0, err
    expected = ("[system prompt set; conversation reset]\n" + first + "\n" + second + "\n"
                "[conversation reset]\n" + after_reset + "\n[unknown command /nonsense; ")
    assert out.startswith(expected), (out, expected)
    assert "never read" not in out


@needs_jail
def test_chat_ends_at_end_of_input_with_tools_and_interpreter(checkpoint, monkeypatch, capsys):
    path, _ = checkpoint
    code, out, err = _chat(monkeypatch, capsys, [], "--checkpoint", str(path), "--tools", "builtin", "--interpreter")
    assert code == 0 and out == "" and err == ""


def test_bad_checkpoints_are_one_line_errors(checkpoint, tok, tmp_path, monkeypatch, capsys):
    path, _ = checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((path / f).read_bytes())
    no_model = tmp_path / "no_model"
    tok.save(no_model)
    cases = [(empty, "has no tokenizer"), (no_tok, "has no tokenizer"), (no_model, "has no config.json"),
             (tmp_path / "missing", "not a checkpoint directory")]
    for directory, said in cases:
        code, out, err = _chat(monkeypatch, capsys, ["hello"], "--checkpoint", str(directory))
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("error: ") and said in err, err


def test_chat_prints_tool_calls_and_results(checkpoint, tok, monkeypatch, capsys):
    """With a scripted stand-in for the checkpoint's model: the call and its result are shown."""
    from .conftest import ScriptedModel

    path, _ = checkpoint
    script = ScriptedModel(tok, [
        ('Computing.<|action_start|><|plugin|>\n{"name": "calculator", "parameters": {"expression": "6 * 7"}}'
         "<|action_end|><|im_end|>"),
        "The answer is 42.<|im_end|>",
    ])
    monkeypatch.setattr("ilm.agent.loop.GenerateModel", lambda model: script)
    code, out, err = _chat(monkeypatch, capsys, ["what is 6 * 7?"], "--checkpoint", str(path), "--tools", "builtin")
    assert code == 0, err
    assert out == ('Computing.\n[tool call] calculator({"expression": "6 * 7"})\n'
                   "[environment plugin] 42\nThe answer is 42.\n")
    assert '"name": "calculator"' in tok.decode(script.prompts[0])  # the builtin tools were declared

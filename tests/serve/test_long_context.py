"""Dynamic NTK past the trained window, served: a request 2x past max_position_embeddings gets the text
`ilm generate` prints for the same prompt (both decode from the KV cache by the causal rule)."""

from __future__ import annotations

from ilm.cli import main
from ilm.model import build_model, get_preset
from ilm.model.generate import greedy_recompute
from ilm.serve.app import build_app
from ilm.serve.cli import ServerThread
from ilm.serve.engine import Engine
from tests.serve.conftest import _save, raw

MAX_POS = 32


def test_a_request_twice_past_the_window_gets_the_text_of_ilm_generate(tok, tmp_path, capsys):
    cfg = get_preset("tiny", max_position_embeddings=MAX_POS, rope_scaling={"type": "dynamic", "factor": 2.0},
                     initializer_range=0.1)  # sharper attention: positions matter
    model = build_model(cfg, seed=2).eval()
    ckpt = _save(model, tok, tmp_path / "ckpt")
    words = ["the", "river", "runs", "past", "the", "old", "town", "and", "the", "mill", "by", "the", "bridge", "at", "night"]
    prompt = next(" ".join(words[:n]) for n in range(1, len(words) + 1)
                  if len(tok.encode(" ".join(words[:n]), bos=True)) > MAX_POS)
    P = len(tok.encode(prompt, bos=True))
    new = 2 * MAX_POS + 4 - P
    assert P > MAX_POS and new > 0

    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", prompt, "--greedy",
                 "--max-new-tokens", str(new)]) == 0
    cli_text = capsys.readouterr().out.removesuffix("\n")

    engine = Engine(model, tok, max_batch=2, max_len=3 * MAX_POS).start()
    try:
        with ServerThread(build_app(engine, "tiny", None)) as srv:
            status, body = raw(srv.url, "POST", "/v1/completions",
                               {"model": "tiny", "prompt": prompt, "max_tokens": new, "temperature": 0})
    finally:
        engine.stop()
    assert status == 200, body
    usage = body["usage"]
    assert usage["prompt_tokens"] == P and usage["completion_tokens"] == new  # no stop id: all the way
    assert P + new > 2 * MAX_POS
    assert body["choices"][0]["text"] == cli_text and cli_text.strip()
    # and both are the tokens of decoding by full recompute (the causal rule) at every step
    ref = greedy_recompute(model, tok.encode(prompt, bos=True), new, causal_ntk=True)
    assert tok.decode(ref, skip_special=True) == cli_text

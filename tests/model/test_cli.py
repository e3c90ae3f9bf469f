import torch

from ilm.cli import main
from ilm.model import build_model, get_preset
from ilm.model.generate import Sampling, generate
from ilm.model.hf import load_checkpoint, save_checkpoint


def test_model_info_prints_exact_counts(capsys):
    assert main(["model", "info", "--preset", "internlm2-20b", "--seq-len", "4096"]) == 0
    out = capsys.readouterr().out
    assert "19,861,149,696" in out
    assert "48 / 6144 / 48 / 8 / 16384" in out


def test_convert_both_directions_keeps_every_tensor(tmp_path):
    model = build_model(get_preset("tiny"), seed=12)
    src = save_checkpoint(model, tmp_path / "orig", extra_files={"tokenizer_config.json": "{}"})
    assert main(["model", "convert", str(src), str(tmp_path / "llama"), "--to", "llama"]) == 0
    assert main(["model", "convert", str(tmp_path / "llama"), str(tmp_path / "back"), "--to", "internlm2"]) == 0
    assert (tmp_path / "llama" / "tokenizer_config.json").exists()  # side files travel with the weights
    back = load_checkpoint(tmp_path / "back")
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_convert_refuses_an_existing_destination(tmp_path, capsys):
    src = save_checkpoint(build_model(get_preset("tiny"), seed=3), tmp_path / "orig")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("a user's earlier export")
    assert main(["model", "convert", str(src), str(dst), "--to", "llama"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert (dst / "keep.txt").read_text() == "a user's earlier export"
    assert main(["model", "convert", str(src), str(dst), "--to", "llama", "--overwrite"]) == 0
    assert (dst / "config.json").exists()


def test_generate_with_ids(tmp_path, capsys):
    model = build_model(get_preset("tiny"), seed=13).eval()
    path = save_checkpoint(model, tmp_path / "ckpt")
    assert main(["generate", "--checkpoint", str(path), "--ids", "1,5,9", "--max-new-tokens", "6", "--greedy"]) == 0
    printed = [int(t) for t in capsys.readouterr().out.strip().split(",")]
    expected = generate(model, [[1, 5, 9]], Sampling(max_new_tokens=6, greedy=True))
    assert printed == expected[0]


def test_generate_rejects_bad_ids_and_text_without_tokenizer(tmp_path, capsys):
    path = save_checkpoint(build_model(get_preset("tiny")), tmp_path / "ckpt")
    assert main(["generate", "--checkpoint", str(path), "--ids", "1,x"]) == 2
    assert main(["generate", "--checkpoint", str(path), "--prompt", "hello"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_unknown_stage_and_help(capsys):
    assert main(["--help"]) == 0
    assert "tokenizer" in capsys.readouterr().out


def test_generate_with_text_and_chat(tmp_path, capsys):
    from ilm.tokenizer import train_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(400)))
    tok = train_tokenizer([corpus], tmp_path / "tok", vocab_size=512)
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=14).eval()
    files = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()}
    path = save_checkpoint(model, tmp_path / "ckpt", extra_files=files)
    sampling = Sampling(max_new_tokens=8, greedy=True, stop_ids=tuple(tok.stop_ids))
    assert main(["generate", "--checkpoint", str(path), "--prompt", "the quick", "--max-new-tokens", "8",
                 "--greedy"]) == 0
    expected = generate(model, [tok.encode("the quick", bos=True)], sampling)[0]
    assert capsys.readouterr().out.strip() == tok.decode(expected, skip_special=True).strip()
    assert main(["generate", "--checkpoint", str(path), "--prompt", "hi", "--chat", "--max-new-tokens", "8",
                 "--greedy"]) == 0
    chat_ids = tok.render([{"role": "user", "content": "hi"}], add_generation_prompt=True).ids
    expected = generate(model, [chat_ids], sampling)[0]
    assert capsys.readouterr().out.strip() == tok.decode(expected, skip_special=True).strip()


def test_generate_stops_at_im_end_listed_in_the_export(tmp_path, capsys):
    """An export with a tokenizer lists `</s>` and `<|im_end|>` in generation_config.json; `ilm generate --ids`
    (the model's stop ids, no tokenizer) stops at `<|im_end|>`: a model that always predicts it emits one."""
    import json

    from ilm.tokenizer import train_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(300)))
    tok = train_tokenizer([corpus], tmp_path / "tok", vocab_size=512)
    im_end = tok.control_ids["<|im_end|>"]
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=5).eval()
    with torch.no_grad():  # hidden dimension 0 dominates every position; only <|im_end|>'s head row reads it
        model.model.tok_embeddings.weight[:, 0] = 1000.0
        model.output.weight.zero_()
        model.output.weight[im_end, 0] = 1.0
    files = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()}
    path = save_checkpoint(model, tmp_path / "ckpt", extra_files=files)
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eos_id, im_end]
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(path), "--ids", "1,5,9", "--max-new-tokens", "6", "--greedy"]) == 0
    assert capsys.readouterr().out.strip() == str(im_end)
    for to in ("llama", "internlm2"):  # a conversion keeps both
        converted = main(["model", "convert", str(path), str(tmp_path / to), "--to", to])
        assert converted == 0
        assert json.loads((tmp_path / to / "generation_config.json").read_text())["eos_token_id"] == [2, im_end]


def test_generate_past_the_memory_estimate_is_one_line(tmp_path, capsys, monkeypatch):
    from ilm.model import memory

    model = build_model(get_preset("tiny"), seed=13).eval()
    path = save_checkpoint(model, tmp_path / "ckpt")
    ids = ",".join(["7"] * 600)  # past max_position_embeddings 256: runs (chunked) while memory allows
    assert main(["generate", "--checkpoint", str(path), "--ids", ids, "--max-new-tokens", "3", "--greedy",
                 "--prefill-chunk", "128"]) == 0
    assert len(capsys.readouterr().out.strip().split(",")) == 3
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    assert main(["generate", "--checkpoint", str(path), "--ids", ids, "--max-new-tokens", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: generating 1 row(s) of up to 603 positions needs an estimated") and "\n" not in err


def test_generate_past_the_window_under_dynamic_ntk_both_modes(tmp_path, capsys):
    """`ilm generate` decodes past max_position_embeddings from the cache (the causal rule) by default and by
    re-running the whole sequence with `--ntk recompute`; each equals its full recompute."""
    from ilm.model.generate import greedy_recompute

    cfg = get_preset("tiny", max_position_embeddings=8, rope_scaling={"type": "dynamic", "factor": 2.0},
                     initializer_range=0.1)
    model = build_model(cfg, seed=14).eval()
    path = save_checkpoint(model, tmp_path / "ckpt")
    prompt = [1, 5, 9, 33, 41, 7]
    base = ["generate", "--checkpoint", str(path), "--ids", ",".join(map(str, prompt)), "--max-new-tokens", "14",
            "--greedy"]
    for extra, causal in (([], True), (["--ntk", "recompute"], False)):
        assert main(base + extra) == 0
        printed = [int(t) for t in capsys.readouterr().out.strip().split(",")]
        ref = greedy_recompute(model, prompt, 14, causal_ntk=causal)
        stop = next((i + 1 for i, t in enumerate(ref) if t in cfg.stop_token_ids), len(ref))
        assert printed == ref[:stop] and len(prompt) + len(printed) > cfg.max_position_embeddings

"""InternLM2-layout exports load in plain transformers through their shipped modeling code (`auto_map`,
trust_remote_code=True), in a process that never imports ilm: logits equal to ilm's (fp32, GQA, packed
wqkv; plain and dynamic-NTK RoPE past max_position_embeddings), greedy `generate` equal to ilm's token for
token (left-padded batch, KV cache), and the reward model's score equal to `ilm rm score`'s."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ilm.model import build_model, get_preset
from ilm.model.generate import Sampling, generate_stream
from ilm.model.hf import save_checkpoint
from ilm.train.export import export_hf
from ilm.train.reward import encode_sequence, score
from ilm.train.reward_model import RewardModel, save_reward_model

pytest.importorskip("transformers")

AUTO_MAP = {  # as the released InternLM2 checkpoints name their shipped code
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForSequenceClassification": "modeling_internlm2.InternLM2ForRewardModel",
}
PROMPTS = [[1, 17, 33, 65, 129, 257, 5, 9, 200, 311], [1, 44, 45, 46, 470, 12]]
NEW_TOKENS = 20

# Runs in a fresh interpreter: transformers and torch only.
CHILD = r"""
import json, sys
import torch
import transformers

root = sys.argv[1]
cases = json.load(open(root + "/cases.json"))
out = {}
for name, case in cases.items():
    if name == "rm":
        rm = transformers.AutoModelForSequenceClassification.from_pretrained(
            case["dir"], trust_remote_code=True, dtype=torch.float32).eval()
        seqs = case["seqs"]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [2] * (width - len(s)) for s in seqs])  # right padding
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        with torch.no_grad():
            out[name] = {"batched": rm(input_ids=ids, attention_mask=mask).logits[:, 0].tolist(),
                         "single": [rm(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs],
                         "class": type(rm).__name__}
        continue
    model = transformers.AutoModelForCausalLM.from_pretrained(
        case["dir"], trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.load(root + f"/{name}-ids.pt")
    with torch.no_grad():
        diff = (model(ids).logits - torch.load(root + f"/{name}-logits.pt")).abs().max().item()
    prompts = case["prompts"]
    width = max(len(p) for p in prompts)
    batch = torch.tensor([[2] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    gen = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=case["new_tokens"],
                         do_sample=False, eos_token_id=2, pad_token_id=2, return_dict_in_generate=True,
                         output_logits=True)
    rows = []
    for row in gen.sequences[:, width:].tolist():
        rows.append(row[: row.index(2) + 1] if 2 in row else row)
    step_logits = torch.load(root + f"/{name}-step-logits.pt")  # ilm's, per step (steps, B, V)
    step_diff = max((gen.logits[t][r] - step_logits[t, r]).abs().max().item()
                    for r, row in enumerate(rows) for t in range(len(row)))
    out[name] = {"max_abs_diff": diff, "step_diff": step_diff, "generated": rows, "class": type(model).__name__}
out["ilm_imported"] = any(m == "ilm" or m.startswith("ilm.") for m in sys.modules)
json.dump(out, open(root + "/result.json", "w"))
"""


class _Tok:
    """Stand-in chat tokenizer for scoring: `render` gives <s> then each message's bytes folded into the vocab."""

    def render(self, messages):
        ids = [1]
        for m in messages:
            ids += [10 + (b % 400) for b in f"{m['role']}:{m['content']}".encode()]
        return SimpleNamespace(ids=ids)


def _causal_case(root: Path, name: str, model, writer: str) -> dict:
    if writer == "save_checkpoint":
        path = save_checkpoint(model, root / name)
    else:  # the trainers' streamed export
        path = export_hf({k: v.detach() for k, v in model.state_dict().items()}, model.config, root / name,
                         max_shard_bytes=40_000)
    ids = torch.randint(3, model.config.vocab_size, (2, 3 * model.config.max_position_embeddings // 2))
    with torch.no_grad():
        torch.save(model(ids), root / f"{name}-logits.pt")
    torch.save(ids, root / f"{name}-ids.pt")
    steps, expected = [], [[] for _ in PROMPTS]
    # the export's `generate` re-runs the whole sequence past max_position_embeddings under dynamic NTK
    # (the whole-sequence rule): ilm's "recompute" mode (no effect on the other cases)
    sampling = Sampling(max_new_tokens=NEW_TOKENS, greedy=True, stop_ids=(2,), ntk="recompute")
    for step in generate_stream(model, PROMPTS, sampling, on_step=lambda logits, _: steps.append(logits.clone())):
        for row, token in zip(expected, step):
            if token is not None:
                row.append(token)
    torch.save(torch.stack(steps), root / f"{name}-step-logits.pt")
    return {"dir": str(path), "prompts": PROMPTS, "new_tokens": NEW_TOKENS, "expected": expected}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_remote")
    cases = {}
    plain = build_model(get_preset("tiny"), seed=3).eval()  # 4 heads over 2 KV heads: GQA
    cases["plain"] = _causal_case(root, "plain", plain, "save_checkpoint")
    # dynamic NTK with a short max_position_embeddings: the logits and the generation run past it
    dyn_cfg = get_preset("tiny", max_position_embeddings=16, rope_scaling={"type": "dynamic", "factor": 2.0},
                         initializer_range=0.1)  # sharper attention: positions matter more
    cases["dynamic"] = _causal_case(root, "dynamic", build_model(dyn_cfg, seed=4).eval(), "export_hf")
    lin_cfg = get_preset("tiny", max_position_embeddings=16, rope_scaling={"type": "linear", "factor": 2.0})
    cases["linear"] = _causal_case(root, "linear", build_model(lin_cfg, seed=5).eval(), "save_checkpoint")

    rm = RewardModel(build_model(get_preset("tiny"), seed=6), seed=7).eval()
    meta = {"conditions": {"default": "Be helpful.", "concise": "Be brief."}, "default_domain": "default",
            "max_length": 256, "reward_token_id": 500}
    save_reward_model(rm, root / "rm", meta)
    records = [
        {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello!"}],
         "domain": "concise"},
        {"messages": [{"role": "user", "content": "tell me a longer story please"},
                      {"role": "assistant", "content": "once upon a time, far away"}]},
    ]
    rewards, _ = score(rm, _Tok(), meta, records)
    seqs = [encode_sequence(_Tok(), meta["conditions"][r.get("domain", "default")], r["messages"][:-1],
                            r["messages"][-1:], meta["reward_token_id"])[0] for r in records]
    cases["rm"] = {"dir": str(root / "rm"), "seqs": seqs, "expected": rewards}

    (root / "cases.json").write_text(json.dumps(cases))
    (root / "child.py").write_text(CHILD)
    proc = subprocess.run([sys.executable, str(root / "child.py"), str(root)], capture_output=True, text=True,
                          check=False, timeout=600, cwd=root, env={"PATH": "/usr/bin:/bin", "HOME": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cases, json.loads((root / "result.json").read_text()), root


def test_export_ships_modeling_code_under_released_keys(loaded):
    cases, _, _ = loaded
    for name in ("plain", "dynamic", "rm"):
        d = Path(cases[name]["dir"])
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["auto_map"] == AUTO_MAP
        assert (cfg["architectures"], cfg["model_type"], cfg["bias"]) == (["InternLM2ForCausalLM"], "internlm2", False)
        for file in ("configuration_internlm2.py", "modeling_internlm2.py"):
            text = (d / file).read_text()
            assert "import ilm" not in text and "from ilm" not in text
    assert json.loads((Path(cases["dynamic"]["dir"]) / "config.json").read_text())["rope_scaling"] == {
        "type": "dynamic", "factor": 2.0}


def test_loaded_without_ilm(loaded):
    assert loaded[1]["ilm_imported"] is False


@pytest.mark.parametrize("name", ["plain", "dynamic", "linear"])
def test_logits_equal_ilm(loaded, name):
    _, result, _ = loaded
    assert result[name]["class"] == "InternLM2ForCausalLM"
    assert result[name]["max_abs_diff"] <= 1e-4, result[name]["max_abs_diff"]


@pytest.mark.parametrize("name", ["plain", "dynamic", "linear"])
def test_greedy_generate_equals_ilm(loaded, name):
    cases, result, _ = loaded
    expected = cases[name]["expected"]
    assert result[name]["generated"] == expected
    assert result[name]["step_diff"] <= 1e-4, result[name]["step_diff"]  # every step's logits, through the KV cache
    if name == "dynamic":  # the generation really ran past max_position_embeddings (16)
        assert max(len(p) + len(e) for p, e in zip(PROMPTS, expected)) > 16


def test_reward_model_score_equals_ilm(loaded):
    cases, result, _ = loaded
    expected = cases["rm"]["expected"]
    assert result["rm"]["class"] == "InternLM2ForRewardModel"
    assert all(r is not None for r in expected)
    assert result["rm"]["batched"] == pytest.approx(expected, abs=1e-4)
    assert result["rm"]["single"] == pytest.approx(expected, abs=1e-4)


def test_convert_writes_the_code_for_the_target_layout_only(tmp_path):
    from ilm.model.hf import convert

    src = save_checkpoint(build_model(get_preset("tiny"), seed=8), tmp_path / "src")
    (src / "modeling_internlm2.py").write_text("# stale copy\n")
    llama = convert(src, tmp_path / "llama", "llama")
    assert not list(llama.glob("*.py")) and "auto_map" not in json.loads((llama / "config.json").read_text())
    back = convert(llama, tmp_path / "back", "internlm2")
    again = convert(src, tmp_path / "again", "internlm2")
    for d in (back, again):
        assert json.loads((d / "config.json").read_text())["auto_map"] == AUTO_MAP
        assert (d / "modeling_internlm2.py").read_text() == (back / "modeling_internlm2.py").read_text() != "# stale copy\n"

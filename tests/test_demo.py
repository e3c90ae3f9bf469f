import html
import json
import re
from pathlib import Path

from ilm.cli import main
from ilm.demo import SECTIONS, write_report
from ilm.model.hf import load_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_demo_sections() -> list[str]:
    """The stage names of README's "What `make demo` does" list (`N. **name**: ...`)."""
    text = README.read_text()
    part = text[text.index("## What `make demo` does"):]
    part = part[: part.index("\n## ", 3)]
    return re.findall(r"^\d+\. \*\*([a-z]+)\*\*", part, flags=re.MULTILINE)


def test_report_writes_every_section_readme_names(tmp_path):
    named = readme_demo_sections()
    assert named and set(named) == set(SECTIONS), named
    sections = {s: {"number": i} for i, s in enumerate(SECTIONS)}
    seconds = {s: 1.5 + i for i, s in enumerate(SECTIONS)}
    report = json.loads(write_report(tmp_path, sections, seconds).read_text())
    for s in named:
        assert report[s]["seconds"] == seconds[s] and report[s]["number"] == sections[s]["number"]
        assert report["stage_seconds"][s] == seconds[s]
    assert report["seconds"] == round(sum(seconds.values()), 3)


def test_readme_states_the_demo_timing_that_report_json_carries():
    text = README.read_text()
    assert "about a minute" not in text
    assert "a few minutes on 2 CPU cores" in text and "report.json" in text


def test_demo_runs_every_stage_and_the_tiny_recipe_learns(tmp_path, capsys):
    """The whole `make demo` path: recipes/tiny.toml on the default corpus, all three stages."""
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for tag in ("[data]", "[code]", "[tokenizer]", "[shards]", "[pretrain]", "[sft]", "[rm]", "[model] chat sample",
                "[rlhf] round 1 fast path", "[rlhf] reward and KL curves", "[eval]", "[serve]"):
        assert tag in out
    report = json.loads((tmp_path / "report.json").read_text())
    for s in readme_demo_sections():  # every section README names, with its wall time
        assert report[s]["seconds"] > 0, s
    ledger = report["data"]["ledger"]
    assert ledger["balanced"] is True and report["data"]["kept_docs"] == ledger["kept_docs"]
    assert ledger["kept_docs"] + ledger["removed_docs"] == ledger["input_docs"]
    assert report["code"]["files"] > 0 and report["code"]["repos"] == 2 and report["code"]["balanced"] is True
    assert report["tokenizer"]["vocab_size"] == 2048
    assert report["shards"]["text"]["tokens"] > 0 and report["shards"]["heldout"]["documents"] > 0
    assert report["model"]["parameters"] > 0 and report["model"]["llama_logits_max_diff"] <= 1e-5
    assert (tmp_path / "pretrain" / "training.png").exists()
    pre = report["pretrain"]
    assert pre["steps"] == pre["total_steps"] == 500
    # the tiny recipe's held-out loss ends well below the default corpus's unigram entropy
    assert pre["eval_loss"] < pre["unigram_entropy"] - 1.0, (pre["eval_loss"], pre["unigram_entropy"])
    long = report["sft"]["data"]["long_context"]  # long-context samples in the SFT data (scaled-down window)
    assert long["kept"] > 0 and long["max"] <= long["window"] and long["by_kind"]["file"] > 0
    assert set(report["rm"]["accuracy_by_domain"]) >= {"helpful", "code", "math"}
    rlhf = report["rlhf"]  # two rounds of PPO with the fast path; the curves plotted
    assert [c["round"] for c in rlhf["curves"]] == [1, 2] and (tmp_path / "rlhf-rounds" / "curves.png").exists()
    assert rlhf["rounds"]["1"]["fast"]["pairs"] >= 20
    # the policy itself on 200 fresh queries: the final actor beats its SFT start on the true reward, and says so
    start, end = rlhf["policies"][0], rlhf["policies"][-1]
    assert (start["after_round"], end["after_round"]) == (0, 2) and rlhf["beats_sft"], rlhf["policies"]
    assert end["true_reward"] > start["true_reward"] + 0.1 and "RLHF beats its SFT start on the true reward" in out
    ev = report["eval"]  # perplexity and a task through ilm eval; NIAH dynamic NTK vs plain RoPE
    assert ev["mc_chance"] == 0.25 and 0 <= ev["mc_p_value"] <= 1  # the task's score next to a guesser's
    assert "[eval] the pretrained model of the chain on ilm_stdlib_mc: acc" in out and "vs chance 25.0%" in out
    assert (tmp_path / "eval" / "results.json").exists() and (tmp_path / "eval" / "niah.png").exists()
    assert set(ev["niah"]["dynamic"]) >= {"overall", "beyond"} and set(ev["niah"]["plain"]) >= {"overall", "beyond"}
    # NIAH on the RLHF task policy (two-digit needle chats in its SFT data): needles found within its window,
    # far above chance (1%); the console line names the model and says so
    niah = ev["niah"]
    assert niah["checkpoint"] == rlhf["actor"] and niah["chance"] == 0.01 and niah["trained_length"] == 256
    assert max(niah["dynamic"]["within"], niah["plain"]["within"]) >= 0.5, niah
    line = next(x for x in out.splitlines() if x.startswith("[eval] NIAH on the RLHF policy"))
    assert "NOT WORKING" not in line and "chance 1.000% (2 random digits)" in line
    serve = report["serve"]  # the RLHF model, through the server, with the openai client
    assert serve["checkpoint"] == rlhf["actor"] and serve["requests"] >= 2
    # the tool-value check: 20 round trips, each tool answering its own temperature; the policy states it
    values = serve["tool_values"]
    assert values["policy"]["cases"] == 20 and values["policy"]["used"] >= 18, values["policy"]["rows"]
    assert values["sft_start"]["checkpoint"] == rlhf["actors"]["1"] and values["line"].endswith(": works")
    assert f"[serve] {values['line']}" in out
    transcripts = json.loads((tmp_path / "serve" / "transcripts.json").read_text())
    assert transcripts[0]["streamed_text"] and transcripts[0]["usage"]["completion_tokens"] > 0
    page = (tmp_path / "report.html").read_text()  # ilm report ran last; its chats are the served RLHF model's
    assert out.rstrip().splitlines()[-1] == f"report: {tmp_path / 'report.html'}"
    chats = page[page.index('id="chats"'):]
    assert "(the final RLHF policy of the RLHF section)" in chats and html.escape(transcripts[0]["streamed_text"]) in chats
    assert html.escape(values["line"]) in chats  # console and report agree
    evaluation = page[page.index('id="eval"'):page.index('id="chats"')]
    assert "the pretrained model of the pretrain section" in evaluation and "the final RLHF policy" in evaluation
    model = load_checkpoint(tmp_path / "checkpoint-llama")
    assert model.config.vocab_size == 2048 and model.config.rope_theta == 1_000_000


def test_model_stage_llama_copy_carries_the_tokenizer(tmp_path, capsys):
    """The demo's Llama-format copy loads with AutoTokenizer and runs under `ilm generate --prompt`."""
    from transformers import AutoTokenizer

    from ilm.demo import stage_model
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import train_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"def main(): return {i} # the quick brown fox {i * 7}" for i in range(300)))
    tok = train_tokenizer([corpus], tmp_path / "tok", vocab_size=512)
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=3).eval()
    chat = save_checkpoint(model, tmp_path / "chat")  # no tokenizer files beside it: they come from `tok`
    info = stage_model(tmp_path, chat, tok)
    llama = Path(info["llama"])
    hf_tok = AutoTokenizer.from_pretrained(llama)
    assert hf_tok("the quick brown fox", add_special_tokens=False)["input_ids"] == tok.encode("the quick brown fox")
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(llama), "--prompt", "def main", "--max-new-tokens", "4",
                 "--greedy"]) == 0
    assert capsys.readouterr().out.strip()

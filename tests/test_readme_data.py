"""README's "Your own data" examples go through the real readers, so the docs cannot drift from the code:
each example line is read by the stage that consumes it and must come out used, with nothing dropped."""

import json
import re
import sysconfig
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def examples() -> dict[str, list[str]]:
    """Label (the bold lead-in) -> the JSON lines of the code block that follows it."""
    text = README.read_text()
    part = text[text.index("## Your own data"):]
    part = part[: part.index("\n## ", 3)]
    found = re.findall(r"\*\*([^*]+)\*\*.*?```json\n(.*?)\n```", part, flags=re.DOTALL)
    return {label: [x for x in block.splitlines() if x.strip()] for label, block in found}


EXPECTED = ["Pretraining documents", "SFT conversations", "Reward-model pairs", "PPO queries", "Slow-path labels",
            "Review verdicts"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from ilm.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("readme-tok")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (root / "t.txt").write_text("\n".join(p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:30]))
    return train_tokenizer([root / "t.txt"], root / "tok", vocab_size=512)


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_format_has_one_example():
    ex = examples()
    assert list(ex) == EXPECTED
    assert all(len(lines) == 1 for lines in ex.values()), ex


def test_pretraining_documents(tmp_path):
    from ilm.data.io import read_documents

    dropped = []
    docs = list(read_documents(_write(tmp_path, "docs.jsonl", examples()["Pretraining documents"]),
                               drop=lambda d, why: dropped.append(why)))
    assert dropped == [] and len(docs) == 1 and docs[0].id == "web-000001" and docs[0].text


def test_sft_conversations(tmp_path, tok):
    from ilm.train.sft import encode_conversations

    convs, report = encode_conversations([_write(tmp_path, "sft.jsonl", examples()["SFT conversations"])], tok, 4096)
    assert report["kept"] == 1 and not any(report["dropped"].values()) and convs[0].mask.any()


def test_reward_model_pairs(tmp_path, tok):
    from ilm.train.reward import RMData, encode_pairs

    _, report = encode_pairs([_write(tmp_path, "rm.jsonl", examples()["Reward-model pairs"])], tok, RMData(),
                                 reward_id=tok.eos_id)
    assert report["kept"] == 1 and not any(report["dropped"].values()) and report["unknown_domain"] == 0


def test_ppo_queries(tmp_path, tok):
    from ilm.train.reward import DEFAULT_CONDITIONS
    from ilm.train.rlhf.ppo import load_queries

    _, report = load_queries([str(_write(tmp_path, "q.jsonl", examples()["PPO queries"]))], tok,
                                   DEFAULT_CONDITIONS, "default", 2048)
    assert report["kept"] == 1 and not any(report["skipped"].values()) and report["unknown_category"] == 0


def test_slow_path_labels(tmp_path, tok):
    from ilm.train.reward import RMData, encode_pairs
    from ilm.train.rlhf.rounds import slow_labels_to_pairs

    pairs, report = slow_labels_to_pairs(_write(tmp_path, "labels.jsonl", examples()["Slow-path labels"]), {})
    assert report["pairs"] == 1 and report["malformed"] == 0
    out = tmp_path / "pairs.jsonl"
    out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    _, rm = encode_pairs([out], tok, RMData(), reward_id=tok.eos_id)  # and the reward model can train on it
    assert rm["kept"] == 1


def test_review_verdicts(tmp_path):
    from ilm.train.rlhf.review import read_verdicts

    line = examples()["Review verdicts"]
    verdicts, report = read_verdicts(_write(tmp_path, "done.jsonl", line), known={"r1-u3-7"})
    assert report["used"] == 1 and report["malformed"] == 0
    assert not verdicts[0].approved and verdicts[0].correction

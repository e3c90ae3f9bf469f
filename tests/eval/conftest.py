"""A tiny Llama-format checkpoint with its tokenizer, the way `ilm model convert --to llama` leaves one."""

import os
import tempfile
from pathlib import Path

import pytest

# lm-eval loads task data through the datasets library, which caches what it reads: keep that out of the
# home directory (set before `datasets` is imported), and never reach the hub
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ilm-test-datasets-"))
for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_k, "1")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("eval_model")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(f"def main(): return {i} # the quick brown fox {i * 7}. Which module? Answer: A B C D"
                                for i in range(300)))
    tok = train_tokenizer([corpus], d / "tok", vocab_size=512)
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=3).eval()
    files = {p.name: p.read_bytes() for p in (d / "tok").iterdir() if p.is_file()}
    return save_checkpoint(model, d / "llama", fmt="llama", extra_files=files)

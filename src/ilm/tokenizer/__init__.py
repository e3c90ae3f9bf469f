"""ilm.tokenizer: the InternLM2 vocabulary (cl100k top-K + Chinese + spare block) and chat format.

Public API (everything a later stage needs):

    from ilm.tokenizer import build_tokenizer, load_tokenizer

    tok = build_tokenizer("runs/tok8k", vocab_size=8192)   # builds (~15 s) or reuses a matching build
    tok = build_tokenizer("runs/tok8k", vocab_size=8192, chinese_words=50_000)  # ~3 s: top Chinese words only
    tok = build_tokenizer("runs/tok")                       # the released layout: 92,544 tokens
    tok = load_tokenizer("runs/tok")                        # a saved dir, or an InternLM2 tokenizer.model

    ids = tok.encode("hello 世界")                          # list[int]; bos=True prepends <s>
    ids = tok.encode("<|im_end|>", special=True)            # control-token text -> control id (off by default)
    batch = tok.encode_batch(texts)                         # parallel over all cores
    text = tok.decode(ids)                                  # skip_special=True drops control tokens
    tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids, tok.control_ids["<|im_start|>"]

    r = tok.render(messages, tools=None, add_generation_prompt=False)   # chat.Rendered
    r.text, r.ids, r.mask                                   # mask: 1 on assistant tokens (SFT loss)
    reply = tok.parse(generated_ids_or_text)                # chat.Reply: content, tool_calls, code
    tok.save(dir)                                           # tokenizer.json + HF config files

`messages` are OpenAI-style dicts (system / user / assistant / environment / tool, optional `name`,
assistant `tool_calls`); see `ilm.tokenizer.chat` for the exact format. Directories written by `save`
load with `transformers.AutoTokenizer.from_pretrained(dir)` and give the same ids and chat text.

`train_tokenizer(corpus_files, out_dir, vocab_size)` learns a plain byte-level BPE with the same
control layout. The layout and the seed-vs-release reconciliation: `ilm.tokenizer.layout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ilm.tokenizer.layout import RELEASED_VOCAB_SIZE, Layout

__all__ = ["RELEASED_VOCAB_SIZE", "Layout", "build_tokenizer", "load_tokenizer", "train_tokenizer"]


def build_tokenizer(out_dir: str | Path, vocab_size: int = RELEASED_VOCAB_SIZE, **kwargs: Any):
    """Build the InternLM2-layout tokenizer into `out_dir` (reused if already built) and return it."""
    from ilm.tokenizer.build import build_tokenizer as _build

    return _build(out_dir, vocab_size, **kwargs)


def train_tokenizer(corpus: list[str | Path], out_dir: str | Path | None = None, vocab_size: int = 8192, **kwargs: Any):
    """Train a byte-level BPE on `corpus` files with the InternLM2 control layout."""
    from ilm.tokenizer.build import train_tokenizer as _train

    return _train(corpus, out_dir, vocab_size, **kwargs)


def load_tokenizer(path: str | Path):
    """Load a directory saved by ilm (tokenizer.json) or a sentencepiece `tokenizer.model` (file or dir)."""
    path = Path(path)
    if path.is_dir() and (path / "tokenizer.json").exists() or path.suffix == ".json":
        from ilm.tokenizer.hf import HFTokenizer

        return HFTokenizer.load(path)
    model = path / "tokenizer.model" if path.is_dir() else path
    if model.exists():
        from ilm.tokenizer.spm import SentencePieceTokenizer

        return SentencePieceTokenizer.load(model)
    raise FileNotFoundError(f"no tokenizer.json or tokenizer.model at {path}")

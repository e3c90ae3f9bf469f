"""`HFTokenizer`: the ilm tokenizer object: an HF `tokenizers` vocabulary, encoded with tiktoken's engine.

Saved as the three files `transformers.AutoTokenizer.from_pretrained(dir)` reads (`tokenizer.json`,
`tokenizer_config.json` with InternLM2's chat template, `special_tokens_map.json`) plus
`ilm_tokenizer.json`, a manifest of how it was built.

Encoding runs on tiktoken's engine over the same vocabulary (`fast.py`: same ids, checked once per
tokenizer.json and recorded in the manifest by its sha256); a vocabulary that fails the check keeps
encoding with HF `tokenizers`, and `encoder_note` says why. Offsets (chat loss masks) and decoding use
HF `tokenizers`.

BOS: the tokenizer itself never adds one (no post-processor in tokenizer.json, `add_bos_token: false`),
as `encode` (and `ilm tokenizer encode`) without `bos=True`; the chat template writes `<s>` itself. So
`tok(tok.apply_chat_template(conv, tokenize=False))` and `apply_chat_template(conv, tokenize=True)` both give
exactly one BOS, the ids of `render`. Plain text that should start with BOS (as pretraining documents do):
`encode(text, bos=True)`, or `add_bos_token=True` when loading with transformers.

Two encoders share one vocabulary: `encode(..., special=True)` reads control-token text such as
`<|im_start|>` as the control token (what `AutoTokenizer` does); the default, `special=False`, reads it
as ordinary text. The chat renderer only ever uses the latter for message content, so nobody can
inject a control token by typing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tokenizers import Tokenizer as _HF

from ilm.tokenizer import base as _base
from ilm.tokenizer import fast as _fast
from ilm.tokenizer.chat import CHAT_TEMPLATE, ChatMixin
from ilm.tokenizer.layout import BOS, CONTROL_HEAD, EOS, IM_END, NAMED_SPARE, PAD, UNK

MANIFEST = "ilm_tokenizer.json"
MODEL_MAX_LENGTH = 32_768
PARALLEL_CHARS = _fast.PARALLEL_CHARS
split_for_parallel = _fast.split_for_parallel
# Bump when `fast.check` changes, so a manifest's recorded verdict from an older check is not trusted.
ENCODER_CHECK = 1


def _batch(tok: _HF):
    """`encode_batch_fast` (no offsets; tokenizers >= 0.21) where available, else `encode_batch`."""
    return getattr(tok, "encode_batch_fast", tok.encode_batch)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HFTokenizer(ChatMixin):
    """Encode/decode text and render chats with the InternLM2 vocabulary (or any ilm-built one)."""

    def __init__(self, hf: _HF, manifest: dict | None = None, *, source_sha256: str | None = None) -> None:
        """`source_sha256`: the sha256 of the tokenizer.json `hf` was read from (trusts a recorded check)."""
        hf.post_processor = None  # BOS only where asked (`bos=`, the chat template); see the module docstring
        self.hf = hf
        self.manifest = manifest or {}
        self._plain_copy: _HF | None = None
        self.control_ids: dict[str, int] = {
            t.content: i for i, t in hf.get_added_tokens_decoder().items() if t.special
        }
        missing = [n for n in (*CONTROL_HEAD, *NAMED_SPARE) if n not in self.control_ids]
        if missing:
            raise ValueError(f"tokenizer lacks control tokens {missing}")
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.unk_id = self.control_ids[UNK]
        self.bos_id = self.control_ids[BOS]
        self.eos_id = self.control_ids[EOS]
        self.pad_id = self.control_ids[PAD]
        self.stop_ids = (self.eos_id, self.control_ids[IM_END])  # docs/recipe.md, Tokenizer: stop at </s> or <|im_end|>
        self.fast, self.encoder_note = self._fast_encoder(source_sha256)

    @property
    def _plain(self) -> _HF:
        """A second HF copy whose special-token matching is off: control-token text -> ordinary tokens
        (made on first use: offsets, or encoding where tiktoken cannot be used)."""
        if self._plain_copy is None:
            self._plain_copy = _HF.from_str(self.hf.to_str())
            self._plain_copy.encode_special_tokens = True
        return self._plain_copy

    def _fast_encoder(self, source_sha256: str | None) -> tuple[_fast.FastEncoder | None, str]:
        """tiktoken over this vocabulary if `fast.check` passes (or passed for this very file), else why not."""
        recorded = self.manifest.get("encoder") or {}
        if source_sha256 and recorded.get("tokenizer_sha256") == source_sha256 and recorded.get("check") == ENCODER_CHECK:
            if recorded.get("backend") != "tiktoken":
                return None, recorded.get("reason", "")
            vocab = self.hf.get_vocab(with_added_tokens=False)
            ranks = {_base.from_bytelevel(t): i for t, i in vocab.items() if t not in self.control_ids}
        else:
            ranks, reason = _fast.check(json.loads(self.hf.to_str()))
            if ranks is None:
                return None, reason
        return _fast.FastEncoder(_fast.encoding(ranks, self.control_ids), self._hf_encode), ""

    def _hf_encode(self, text: str, special: bool) -> list[int]:
        return (self.hf if special else self._plain).encode(text, add_special_tokens=False).ids

    @property
    def backend(self) -> str:
        """The engine `encode` / `encode_batch` run on: "tiktoken", or "tokenizers" (see `encoder_note`)."""
        return "tiktoken" if self.fast is not None else "tokenizers"

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, layout={self.manifest.get('layout')})"

    # --- encoding ---------------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, special: bool = False) -> list[int]:
        """Ids of `text`; `bos` prepends <s>; `special` reads control-token text as control tokens.

        Long texts are cut at safe boundaries and encoded on all cores; the ids are the same.
        """
        if self.fast is not None:
            return self.fast.encode(text, [self.bos_id] if bos else [], special)
        tok = self.hf if special else self._plain
        ids = [self.bos_id] if bos else []
        if len(text) < PARALLEL_CHARS:
            return ids + _batch(tok)([text], add_special_tokens=False)[0].ids
        for enc in _batch(tok)(split_for_parallel(text, 4 * (os.cpu_count() or 1)), add_special_tokens=False):
            ids += enc.ids
        return ids

    def encode_batch(self, texts: list[str], *, bos: bool = False, special: bool = False) -> list[list[int]]:
        """`encode` over many texts in parallel (all cores; no offsets computed)."""
        if self.fast is not None:
            return self.fast.encode_batch(list(texts), [self.bos_id] if bos else [], special)
        tok = self.hf if special else self._plain
        head = [self.bos_id] if bos else []
        return [head + e.ids for e in _batch(tok)(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ordinary-text ids with (start, end) character offsets into `text` (used for loss masks)."""
        enc = self._plain.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: list[int], *, skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes of ordinary token `i` (control tokens: their name, UTF-8)."""
        s = self.hf.id_to_token(i)
        if s is None:
            raise KeyError(i)
        return s.encode() if s in self.control_ids else _base.from_bytelevel(s)

    # --- files ------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and the manifest."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(out / "tokenizer.json"))
        self.manifest["encoder"] = {"backend": self.backend, "reason": self.encoder_note, "check": ENCODER_CHECK,
                                    "tokenizer_sha256": _file_sha256(out / "tokenizer.json")}
        named = [n for n in reversed(NAMED_SPARE)]  # the released order: im_start, im_end, ...
        added = {
            str(i): {"content": n, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for n, i in sorted(self.control_ids.items(), key=lambda kv: kv[1])
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": added,
            "additional_special_tokens": named,
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": UNK,
            "pad_token": PAD,
            "add_bos_token": False,  # the chat template writes <s>: tok(rendered text) has one BOS, not two
            "add_eos_token": False,
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MODEL_MAX_LENGTH,
        }
        special_map = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
                       "additional_special_tokens": named}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
        (out / MANIFEST).write_text(json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        """Load a directory written by `save` (or any dir/file holding such a tokenizer.json)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        manifest_path = file.parent / MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        return cls(_HF.from_file(str(file)), manifest=manifest, source_sha256=_file_sha256(file))

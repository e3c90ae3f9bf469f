"""`SentencePieceTokenizer`: the same interface over an official InternLM2 `tokenizer.model`.

InternLM2 released its tokenizer as a sentencepiece model. Users who have that file can encode,
decode and render chats with it exactly like with an ilm-built tokenizer. Control tokens are found by
name (`<|im_start|>` ...); when a model only has the spare names (`[UNUSED_TOKEN_146]` ...), the
released positions map them. Pieces that sentencepiece would match inside text (user-defined
symbols) are switched off in a second, "plain" copy of the model, so message content never turns into
control tokens (editing the model uses `protobuf`, sentencepiece's file format).
"""

from __future__ import annotations

import re
from pathlib import Path

import sentencepiece as spm

from ilm.tokenizer.chat import ChatMixin
from ilm.tokenizer.layout import (
    BOS,
    EOS,
    IM_END,
    N_SPARE,
    NAMED_SPARE,
    PAD,
    RELEASED_VOCAB_SIZE,
    UNK,
    spare_name,
)


def _plain_proto(proto: bytes, names: set[str]) -> bytes | None:
    """A copy of the model where user-defined pieces named like control tokens are never produced.

    None when the model has no such piece (sentencepiece matches user-defined pieces inside any text).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(proto)
    changed = 0
    for piece in model.pieces:
        if piece.type == pb.ModelProto.SentencePiece.USER_DEFINED and piece.piece in names:
            piece.type = pb.ModelProto.SentencePiece.UNUSED
            changed += 1
    return model.SerializeToString() if changed else None


class SentencePieceTokenizer(ChatMixin):
    """Encode/decode/render with a sentencepiece model; control tokens follow the InternLM2 names."""

    def __init__(self, proto: bytes, path: Path | None = None) -> None:
        self.proto = proto
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.vocab_size = self.sp.get_piece_size()
        ids = {UNK: self.sp.unk_id(), BOS: self.sp.bos_id(), EOS: self.sp.eos_id()}
        if min(ids.values()) < 0:
            raise ValueError("the sentencepiece model needs <unk>, <s> and </s> ids")
        first_spare = RELEASED_VOCAB_SIZE - N_SPARE
        for j, name in enumerate(NAMED_SPARE):
            released = RELEASED_VOCAB_SIZE - len(NAMED_SPARE) + j
            for piece in (name, spare_name(released - first_spare)):
                i = self.sp.piece_to_id(piece)
                if i != self.sp.unk_id() and self.sp.id_to_piece(i) == piece:
                    ids[name] = i
                    break
            else:
                raise ValueError(f"the sentencepiece model has no piece for {name}")
        self.control_ids = ids
        self.unk_id, self.bos_id, self.eos_id = ids[UNK], ids[BOS], ids[EOS]
        self.pad_id = ids[PAD]
        self.stop_ids = (self.eos_id, ids[IM_END])
        self._names = {i: n for n, i in ids.items()}
        plain = _plain_proto(proto, {self.sp.id_to_piece(i) for i in ids.values()})
        self._plain = spm.SentencePieceProcessor(model_proto=plain) if plain else self.sp
        self._control_re = re.compile("|".join(re.escape(n) for n in sorted(ids, key=len, reverse=True)))

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceTokenizer:
        path = Path(path)
        return cls(path.read_bytes(), path)

    def __len__(self) -> int:
        return self.vocab_size

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.model").write_bytes(self.proto)
        return out

    def encode(self, text: str, *, bos: bool = False, special: bool = False) -> list[int]:
        """Ids of `text`; `special` reads control-token names in the text as control tokens."""
        out = [self.bos_id] if bos else []
        if not special:
            return out + self._plain.encode(text)
        pos = 0
        for m in self._control_re.finditer(text):
            if m.start() > pos:
                out += self._plain.encode(text[pos : m.start()])
            out.append(self.control_ids[m.group()])
            pos = m.end()
        if pos < len(text):
            out += self._plain.encode(text[pos:])
        return out

    def encode_batch(self, texts: list[str], *, bos: bool = False, special: bool = False) -> list[list[int]]:
        if special:
            return [self.encode(t, bos=bos, special=True) for t in texts]
        head = [self.bos_id] if bos else []
        return [head + ids for ids in self._plain.encode(list(texts), num_threads=0)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        m = self._plain.encode_as_offset_mapping(text)
        return list(m["ids"]), [tuple(o) for o in m["offsets"]]

    def decode(self, ids: list[int], *, skip_special: bool = False) -> str:
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._names:
                if run:
                    parts.append(self._plain.decode(run))
                    run = []
                if not skip_special:
                    parts.append(self._names[i])
            else:
                run.append(i)
        if run:
            parts.append(self._plain.decode(run))
        return "".join(parts)

    def id_to_token(self, i: int) -> str:
        return self._names.get(i) or self.sp.id_to_piece(i)

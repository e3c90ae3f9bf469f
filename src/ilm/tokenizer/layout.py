"""The InternLM2 vocabulary layout: which id range holds what, at any vocabulary size.

Reconciling the seed with the release
-------------------------------------
The seed says: keep cl100k's top 60,004 tokens, add 32,397 Chinese tokens, add 147 spare tokens so the
size is a multiple of 128 -> 92,544. Those add up to 92,548, four more than the released 92,544. The
released checkpoints fix the ids, so the release wins:

    ids 0, 1, 2                 <unk>, <s>, </s>                  (3 control tokens)
    ids 3 .. 60,006             cl100k ranks 0 .. 60,003           (60,004 base tokens, id = rank + 3)
    ids 60,007 .. 92,396        Chinese tokens, in merge order     (32,390 = what fills the ordinary range)
    ids 92,397 .. 92,543        spare block [UNUSED_TOKEN_0..146]  (147 slots; the last six are named)

The named six keep the released ids: <|plugin|> 92538, <|interpreter|> 92539, <|action_end|> 92540,
<|action_start|> 92541, <|im_end|> 92542, <|im_start|> 92543. So the Chinese count is not the seed's
32,397 but 92,544 - 3 - 60,004 - 147 = 32,390 (the seed's count presumably did not subtract the three
control tokens and rounded once more).

Scaling down keeps the same shape: three control ids first, the 147-slot spare block last (so the
named tokens are always the last six ids), and the ordinary range split between base and Chinese
tokens in the released proportion (at least the 256 byte tokens stay, so every byte string encodes).
"""

from __future__ import annotations

from dataclasses import dataclass

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
PAD = EOS  # docs/recipe.md, Tokenizer: pad = </s>
CONTROL_HEAD = (UNK, BOS, EOS)  # ids 0, 1, 2

PLUGIN = "<|plugin|>"
INTERPRETER = "<|interpreter|>"
ACTION_END = "<|action_end|>"
ACTION_START = "<|action_start|>"
IM_END = "<|im_end|>"
IM_START = "<|im_start|>"
# The last six ids of the vocabulary, in id order (released: 92538 .. 92543).
NAMED_SPARE = (PLUGIN, INTERPRETER, ACTION_END, ACTION_START, IM_END, IM_START)

RELEASED_VOCAB_SIZE = 92_544
SEED_BASE_TOKENS = 60_004
SEED_CHINESE_TOKENS = 32_397  # what the seed says; the release holds 32,390 (see module docstring)
N_SPARE = 147
N_BYTES = 256  # cl100k ranks 0..255 are the 256 single bytes
VOCAB_MULTIPLE = 128


def spare_name(k: int) -> str:
    """Name of spare slot k (0-based within the block), as in the released tokenizer."""
    return f"[UNUSED_TOKEN_{k}]"


@dataclass(frozen=True)
class Layout:
    """Sizes of the four id ranges; `vocab_size = 3 + n_base + n_chinese + n_spare`."""

    vocab_size: int
    n_base: int
    n_chinese: int
    n_spare: int = N_SPARE

    @classmethod
    def for_size(cls, vocab_size: int = RELEASED_VOCAB_SIZE, n_base: int | None = None) -> Layout:
        """The layout for `vocab_size`; the default reproduces the release (60,004 + 32,390)."""
        minimum = len(CONTROL_HEAD) + N_BYTES + N_SPARE
        if vocab_size < minimum:
            raise ValueError(
                f"vocab size {vocab_size} cannot hold the special block: it needs {len(CONTROL_HEAD)} control "
                f"ids + {N_BYTES} byte tokens + {N_SPARE} spare slots = {minimum}; use at least "
                f"{-(-minimum // VOCAB_MULTIPLE) * VOCAB_MULTIPLE}"
            )
        if vocab_size % VOCAB_MULTIPLE:
            up = -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
            raise ValueError(f"vocab size {vocab_size} is not a multiple of {VOCAB_MULTIPLE}; use {up}")
        n_ordinary = vocab_size - len(CONTROL_HEAD) - N_SPARE
        if n_base is None:
            released_ordinary = RELEASED_VOCAB_SIZE - len(CONTROL_HEAD) - N_SPARE
            n_base = max(N_BYTES, round(n_ordinary * SEED_BASE_TOKENS / released_ordinary))
        if not N_BYTES <= n_base <= n_ordinary:
            raise ValueError(f"base tokens {n_base} must lie in [{N_BYTES}, {n_ordinary}] for vocab size {vocab_size}")
        return cls(vocab_size, n_base, n_ordinary - n_base)

    def __post_init__(self) -> None:
        total = len(CONTROL_HEAD) + self.n_base + self.n_chinese + self.n_spare
        if total != self.vocab_size or self.n_spare < len(NAMED_SPARE) or self.n_base < N_BYTES:
            raise ValueError(f"inconsistent layout {self}")

    @property
    def first_base(self) -> int:
        return len(CONTROL_HEAD)

    @property
    def first_chinese(self) -> int:
        return self.first_base + self.n_base

    @property
    def first_spare(self) -> int:
        return self.first_chinese + self.n_chinese

    def control_tokens(self) -> dict[str, int]:
        """Every control token (head, spare slots, named specials) -> id."""
        out = {name: i for i, name in enumerate(CONTROL_HEAD)}
        for k in range(self.n_spare):
            out[spare_name(k)] = self.first_spare + k
        named_from = self.vocab_size - len(NAMED_SPARE)
        for j, name in enumerate(NAMED_SPARE):
            del out[spare_name(named_from + j - self.first_spare)]
            out[name] = named_from + j
        return out

"""Needle in a Haystack's material: the needle (a template with a random key and value), the haystack (public-domain
text that ships with Python, cut at sentence ends) and the prompt that hides one in the other at a length and a
depth, raw or in a chat template. `ilm.eval.niah` runs the grid over them and scores the answers."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

DEFAULT_NEEDLE = "The secret number of {key} is {value}."
KEYS = (
    "apple", "river", "lantern", "falcon", "harbor", "violin", "glacier", "meadow", "compass", "orchid",
    "thunder", "marble", "saddle", "walnut", "beacon", "canyon", "pepper", "quartz", "tulip", "anchor",
    "blossom", "cobalt", "dolphin", "ember", "feather", "garnet", "hazel", "island", "jasmine", "kettle",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class NiahError(ValueError):
    """A user's mistake in the NIAH inputs (the CLI prints it as one line)."""


class Tokenizer(Protocol):
    bos_id: int

    def encode(self, text: str, *, bos: bool = False) -> list[int]: ...
    def decode(self, ids: list[int], *, skip_special: bool = False) -> str: ...


# ---------------------------------------------------------------- needle and haystack

@dataclass(frozen=True)
class Needle:
    text: str  # the sentence(s) put into the haystack
    value: str  # what the answer must contain
    question: str  # follows the haystack; ends where the answer begins

    @property
    def ask(self) -> str:
        """The question alone ("What is ...?"): a chat prompt's user turn ends with it."""
        return self.question.split("? ", 1)[0] + "?"

    @property
    def answer_start(self) -> str:
        """The answer up to the value ("The secret number of apple is"): a chat prompt's assistant turn."""
        return self.question.split("? ", 1)[1]


_VALUE = re.compile(r"\{value(?::(\d))?\}")


def value_digits(template: str) -> int | None:
    """How many random digits a template's value has: 5 for `{value}`, N for `{value:N}`; None if literal."""
    m = _VALUE.search(template)
    return None if m is None else int(m.group(1) or 5)


def make_needle(template: str, rng: random.Random) -> Needle:
    """A needle from a template: `{key}` becomes a random word, `{value}` random 5 digits (`{value:N}`: N
    digits, 1-9). A template without a value is literal and must read "<subject> is <value>." (the value is
    the word after "is")."""
    text = template.replace("{key}", rng.choice(KEYS))
    m = _VALUE.search(text)
    if m is not None:
        digits = int(m.group(1) or 5)
        if digits < 1:
            raise NiahError(f"needle {template!r}: {{value:N}} needs 1 to 9 digits")
        value = f"{rng.randrange(10**digits):0{digits}d}"
        at = m.start()
        text = text[:at] + value + text[m.end():]
    else:
        m = re.search(r"\bis\s+([^\s.!?,;]+)", text)
        if m is None:
            raise NiahError(f"needle {template!r} must read '<subject> is <value>.' (or hold {{value}}), "
                            f"e.g. {DEFAULT_NEEDLE!r}")
        value, at = m.group(1), m.start(1)
    prefix = _SENTENCE_END.split(text[:at])[-1].strip()  # the sentence holding the value, up to the value
    if not prefix.endswith(" is"):
        raise NiahError(f"needle {template!r}: the value must follow '<subject> is', e.g. {DEFAULT_NEEDLE!r}")
    subject = prefix[: -len(" is")]
    question = f"What is {subject[:1].lower()}{subject[1:]}? {prefix}"
    return Needle(text=text, value=value, question=question)


@lru_cache(maxsize=2)
def haystack_text(max_docs: int = 2000) -> str:
    """Real English prose available on every machine with Python: its docs and standard-library docstrings."""
    from ilm.data.corpus import real_texts

    return "\n\n".join(real_texts(min_words=60, max_docs=max_docs))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.replace("\n", " ")) if s.strip()]


class Haystack:
    """Haystack sentences, tokenized on demand (each with a leading space, so they concatenate as text does)."""

    def __init__(self, tokenizer: Tokenizer, text: str | None = None):
        self.tokenizer = tokenizer
        self.texts = sentences(text if text is not None else haystack_text())
        if not self.texts:
            raise NiahError("the haystack text has no sentences")
        self._ids: dict[int, list[int]] = {}

    def ids(self, i: int) -> list[int]:
        i %= len(self.texts)  # a context longer than the whole text wraps around to its start
        if i not in self._ids:
            self._ids[i] = self.tokenizer.encode(" " + self.texts[i])
        return self._ids[i]


@dataclass(frozen=True)
class Prompt:
    ids: list[int]  # BOS + haystack with the needle + question
    needle_at: int  # index in `ids` of the needle's first token
    haystack_tokens: int  # haystack tokens around the needle
    depth: float  # where the needle landed, as a fraction of the haystack


def build_prompt(haystack: Haystack, needle_ids: list[int], question_ids: list[int], length: int, depth: float,
                 offset: int = 0, answer_room: int = 0, head: Sequence[int] | None = None) -> Prompt:
    """BOS + haystack + question of exactly `length - answer_room` tokens, the needle on the sentence boundary
    nearest `depth` of the haystack (0: right after BOS, 1: right before the question). `head` replaces the
    lone BOS (a chat prompt's BOS and user header).

    The haystack is the sentences from `offset` on; its first sentence is cut at the front to make the length
    exact, so every later boundary is a real sentence end.
    """
    head = [haystack.tokenizer.bos_id] if head is None else list(head)
    room = length - answer_room - len(head) - len(question_ids) - len(needle_ids)  # haystack tokens
    if room < len(needle_ids):
        raise NiahError(
            f"the needle ({len(needle_ids)} tokens) is longer than the haystack left at context length {length} "
            f"({max(room, 0)} tokens after the {len(head)}-token start, the needle and the {len(question_ids)}-token question"
            + (f" and {answer_room} for the answer" if answer_room else "") + "); use a longer length or a shorter needle")
    parts: list[list[int]] = []
    total = 0
    i = offset
    while total < room:
        parts.append(haystack.ids(i))
        total += len(parts[-1])
        i += 1
    excess = total - room  # cut from the front: the haystack may start mid-sentence, never end there
    ends = [0]
    for p in parts:
        ends.append(ends[-1] + len(p))
    bounds = [0] + [e - excess for e in ends if e - excess > 0]
    cut = min(bounds, key=lambda e: (abs(e - depth * room), e))
    flat = [t for p in parts for t in p][excess:]
    ids = [*head, *flat[:cut], *needle_ids, *flat[cut:], *question_ids]
    return Prompt(ids=ids, needle_at=len(head) + cut, haystack_tokens=room, depth=cut / room)


def chat_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The chat template around a user message: (BOS + user header, end of the user turn + assistant header).

    Read off the tokenizer's own renderer, so a chat prompt is exactly what the model was fine-tuned on."""
    if not hasattr(tokenizer, "render"):
        raise NiahError("--chat needs a tokenizer with a chat template (ilm's tokenizer.json)")
    plain = tokenizer.render([{"role": "user", "content": ""}]).ids  # ... <|im_end|>\n
    full = tokenizer.render([{"role": "user", "content": ""}], add_generation_prompt=True).ids
    head = plain[:-2]
    if full[: len(head)] != head:
        raise NiahError("the tokenizer's chat template does not end a user turn with <|im_end|> and a newline")
    return head, full[len(head):]


def needle_ids(tokenizer: Tokenizer, needle: Needle, chat: tuple[list[int], list[int]] | None = None
               ) -> tuple[list[int], list[int]]:
    """The needle's ids and the question's: plain text ("... What is X? X is"), or in a chat frame (the
    question as the user's last words, the answer's start as the assistant's first)."""
    if chat is None:
        return tokenizer.encode(" " + needle.text), tokenizer.encode(" " + needle.question)
    return (tokenizer.encode(" " + needle.text),
            [*tokenizer.encode(" " + needle.ask), *chat[1], *tokenizer.encode(needle.answer_start)])

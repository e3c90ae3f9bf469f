"""Incremental detokenisation: the visible text of a request's output, a few ids at a time.

Decoding the whole output again on every token makes a token at position 8k cost 8k decodes' worth of work
(quadratic in the output). Streaming detokenisers instead decode a short window: the ids since the last
point where the text was known to be complete (`prefix`), and the same window without the newest ids
(`read`); the new text is the difference. A window whose text ends in U+FFFD may be half a character
(byte-level tokens split UTF-8), so nothing is emitted until a later id completes it. Starting each window
at a point where the text so far ended on a whole character keeps the sum of the pieces equal to decoding
all the ids at once (the tests check it on arbitrary id sequences).

`TextTracker` applies the chat format's rules on top (`ilm.tokenizer.chat.parse_reply`, the non-streamed
reading of the same ids): control tokens split the text into runs decoded separately, a tool call or code
action (`<|action_start|><|plugin|>` / `<|interpreter|>` ... `<|action_end|>`) is not text, text after it
is, a stray `<|action_start|>` is dropped and the text after it kept, and `<|im_end|>` / `</s>` end it.
Stop strings cut the text; text that could be the start of one is held back until it is known not to be.
Streamed deltas and the non-streamed content both come from this one object, so they cannot differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ilm.tokenizer.layout import ACTION_END, ACTION_START, EOS, IM_END, INTERPRETER, PLUGIN


class IncrementalDecoder:
    """One run of ordinary ids -> text; each `push` decodes a window of a few ids, not the whole run."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.ids: list[int] = []
        self.prefix = 0  # the window starts here (the text before it is complete)
        self.read = 0  # ids up to here are already emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tok.decode(self.ids[self.prefix : self.read])
        text = self.tok.decode(self.ids[self.prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd"):  # nothing new, or half a character
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]

    def end(self) -> str:
        """The rest of the run (a trailing incomplete character comes out as U+FFFD, as a full decode
        gives it); the decoder is then empty, ready for the next run."""
        if self.read == len(self.ids):
            self.ids, self.prefix, self.read = [], 0, 0
            return ""
        before = self.tok.decode(self.ids[self.prefix : self.read])
        text = self.tok.decode(self.ids[self.prefix :])
        self.ids, self.prefix, self.read = [], 0, 0
        return text[len(before) :]


class TextTracker:
    """The visible text of one output, id by id (see the module docstring).

    `mode` "chat" reads the chat format (tool calls are not text); "plain" (text completions) keeps every
    ordinary id and drops control tokens. `prefix`: ids the server wrote before the model's output (a
    forced tool-call header), read but not part of the text.
    """

    def __init__(self, tok: Any, stop: Sequence[str] = (), mode: str = "chat", prefix: Sequence[int] = ()):
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.names = {i: n for n, i in tok.control_ids.items()}
        self.mode = mode
        self.state = "text"  # "text" | "start" (after <|action_start|>) | "action" | "done"
        self.dec = IncrementalDecoder(tok)
        self.pending = ""  # decoded, not yet sent (held back for stop strings)
        self.parts: list[str] = []
        self.stopped = False  # a stop string ended the text
        for token in prefix:
            self._route(token)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def push(self, token: int) -> tuple[str, bool]:
        """Add one output id -> (new text to send, whether a stop string ended the text)."""
        if self.stopped:
            return "", True
        return self._visible(self._route(token))

    def flush(self) -> tuple[str, bool]:
        """At the end of the output: the rest of the text (held-back tail included)."""
        if self.stopped:
            return "", True
        out, hit = self._visible(self.dec.end())
        if not hit and self.pending:
            out += self._emit(self.pending)
            self.pending = ""
        return out, hit

    def _route(self, token: int) -> str:
        """Decoded text this id adds (before stop strings), following the chat format's states."""
        name = self.names.get(token)
        if self.mode == "plain":
            return self.dec.push(token) if name is None else self.dec.end()
        if self.state == "done":
            return ""
        if self.state == "action":
            if name == ACTION_END:
                self.state = "text"
            elif name in (IM_END, EOS):
                self.state = "done"
            return ""
        if self.state == "start":
            if name in (PLUGIN, INTERPRETER):
                self.state = "action"
                return ""
            self.state = "text"  # a stray <|action_start|>: this id is read as usual
        if name is None:
            return self.dec.push(token)
        out = self.dec.end()  # a control token ends the run of text
        if name in (IM_END, EOS):
            self.state = "done"
        elif name == ACTION_START:
            self.state = "start"
        return out

    def _visible(self, text: str) -> tuple[str, bool]:
        if not text:
            return "", False
        self.pending += text
        hits = [at for at in (self.pending.find(s) for s in self.stop) if at >= 0]
        if hits:
            out = self._emit(self.pending[: min(hits)])
            self.pending, self.stopped = "", True
            return out, True
        cut = len(self.pending) - self.hold
        if cut <= 0:
            return "", False
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return self._emit(out), False

    def _emit(self, text: str) -> str:
        if text:
            self.parts.append(text)
        return text

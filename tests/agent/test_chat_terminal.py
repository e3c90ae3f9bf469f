"""`ilm chat` on a pseudo-terminal, as a person uses it: the up arrow recalls the last line (readline), Ctrl-C
mid-reply stops the reply and keeps the conversation, and a conversation longer than the model's context
drops its oldest exchanges with a notice, never a Python warning."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time

import pytest

UP = b"\x1b[A"
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
REPLY = 600  # tokens of the reply Ctrl-C interrupts (seconds of decoding)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tok):
    """Tiny random models with a 4,096-token context (long replies) and a 64-token one."""
    from ilm.model import build_model, get_preset
    from ilm.model.generate import Sampling, generate
    from ilm.model.hf import save_checkpoint

    root = tmp_path_factory.mktemp("chat-pty")
    out = {}
    for name, positions, seed in (("long", 4096, 2), ("short", 64, 3)):  # seed 2: a reply without a stop token
        model = build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=positions),
                            seed=seed).eval()
        out[name] = save_checkpoint(model, root / name)
        tok.save(out[name])
        if name == "long":  # its greedy reply in the test's conversation never stops: Ctrl-C lands mid-reply
            ids = tok.render(CONVERSATION, add_generation_prompt=True).ids
            [reply] = generate(model, [ids], Sampling(max_new_tokens=REPLY, greedy=True, stop_ids=tuple(tok.stop_ids)))
            assert len(reply) == REPLY and not set(reply) & set(tok.stop_ids)
    return out


class Terminal:
    """A child process on a pseudo-terminal (its controlling terminal, so Ctrl-C is a real SIGINT)."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: Ctrl-C's SIGINT handled as on a real terminal, even when the test runs in
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job (which ignores it, across exec)
            os.execve(sys.executable, [sys.executable, *args], env)
        self.seen = b""
        self.buf = b""

    def expect(self, needle: bytes, timeout: float = 180) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} within {timeout} s; the terminal shows: {self.seen[-1500:]!r}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"the chat ended before {needle!r}: {self.seen[-1500:]!r}")
                self.buf += data
                self.seen += data
        cut = self.buf.index(needle) + len(needle)
        before, self.buf = self.buf[:cut], self.buf[cut:]
        return before

    def wait_for_text(self, timeout: float = 180) -> None:
        """Until the terminal shows something beyond whitespace and readline's control sequences."""
        deadline = time.monotonic() + timeout
        while not self.buf.replace(b"\x1b[?2004l", b"").strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply within {timeout} s: {self.seen[-1500:]!r}")
            if select.select([self.fd], [], [], 0.5)[0]:
                data = os.read(self.fd, 4096)
                self.buf += data
                self.seen += data

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:
                    pass
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"the chat did not exit: {self.seen[-1500:]!r}")


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return {**env, "HOME": str(tmp_path), "TERM": "xterm", "ILM_DEBUG": ""}


def test_arrow_key_history_and_ctrl_c_mid_reply_keeps_the_conversation(checkpoints, tmp_path):
    t = Terminal(["-m", "ilm.cli", "chat", "--checkpoint", str(checkpoints["long"]), "--greedy",
                  "--max-new-tokens", str(REPLY)], _env(tmp_path))
    try:
        t.expect(b"> ")
        t.send(b"/system Be brief.\r")
        t.expect(b"[system prompt set; conversation reset]")
        t.expect(b"> ")
        t.send(UP + b"\r")  # readline recalls the line; without it the escape codes would be a user message
        t.expect(b"[system prompt set; conversation reset]")
        t.expect(b"> ")
        t.send(b"hello\r")
        t.expect(b"hello\r\n")
        t.wait_for_text()  # the reply starts streaming ...
        t.send(b"\x03")  # ... and Ctrl-C stops it
        t.expect(b"[reply stopped; the conversation is kept, with the reply so far]")
        t.expect(b"> ")
        t.send(b"/history\r")
        shown = t.expect(b"> ")
        assert b"[system] Be brief." in shown and b"[user] hello" in shown and b"[assistant] " in shown, shown
        assert b"[3 messages," in shown
        t.send(b"/exit\r")
    finally:
        code = t.close()
    assert code == 0
    assert b"Traceback" not in t.seen and b"KeyboardInterrupt" not in t.seen
    assert "/system Be brief." in (tmp_path / ".ilm_chat_history").read_text()  # history kept for next time


def test_conversation_longer_than_the_context_drops_the_oldest_turns(checkpoints, tmp_path):
    t = Terminal(["-m", "ilm.cli", "chat", "--checkpoint", str(checkpoints["short"]), "--greedy"], _env(tmp_path))
    try:
        banner = t.expect(b"> ")
        assert b"64-token context, replies up to 32 tokens" in banner  # the default reply length fits
        for i in range(4):
            t.send(f"the quick brown fox {i}\r".encode())
            t.expect(b"> ")
        t.send(b"/history\r")
        shown = t.expect(b"> ")
        t.send(b"/exit\r")
    finally:
        code = t.close()
    assert code == 0
    assert b"[context: the oldest" in t.seen and b"dropped to keep the prompt within 32 tokens]" in t.seen
    assert b"the quick brown fox 3" in shown and b"[user] the quick brown fox 0" not in shown
    # every prompt fit: generation past the 64 positions would have warned (shown as a [warning] line)
    assert b"warning" not in t.seen.lower() and b"Traceback" not in t.seen

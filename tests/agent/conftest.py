"""A small trained tokenizer and a scripted stand-in model for the agent tests."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import pytest

from ilm.tokenizer import train_tokenizer

WORDS = ("the quick brown fox jumps over the lazy dog calc expression parameters name print hello "
         "answer result error tool sum python code")


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("agent_tok")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(f'{WORDS} {{"name": "calc", "parameters": {{"x": {i}}}}} {i * 7}' for i in range(300)))
    return train_tokenizer([corpus], d / "tok", vocab_size=512)


def output_ids(tok, text: str) -> list[int]:
    """Raw model output as ids: control-token names become their ids, the rest is encoded as text."""
    names = sorted(tok.control_ids, key=len, reverse=True)
    ids: list[int] = []
    for part in re.split("(" + "|".join(re.escape(n) for n in names) + ")", text):
        if part in tok.control_ids:
            ids.append(tok.control_ids[part])
        elif part:
            ids += tok.encode(part)
    return ids


class ScriptedModel:
    """Stands in for the model: replies from a script (raw output text with control tokens), in order;
    records every prompt it was given."""

    def __init__(self, tok, replies: list[str]):
        self.tok, self.replies, self.prompts = tok, list(replies), []

    def __call__(self, prompt_ids, sampling):
        self.prompts.append(list(prompt_ids))
        yield from output_ids(self.tok, self.replies.pop(0))


def _kernel_confines() -> str | None:
    """Why this system cannot confine the interpreter (checked without ilm's code), or None."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1)) < 1:
        return "no Landlock in this kernel"
    if not shutil.which("unshare"):
        return "no unshare(1) to check for namespaces"
    done = subprocess.run(["unshare", "--user", "--net", "--pid", "--fork", "--map-root-user", "true"],
                          capture_output=True, check=False)
    return None if done.returncode == 0 else "no user/network/PID namespaces here"


_WHY = _kernel_confines()
needs_confinement = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

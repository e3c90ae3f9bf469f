"""A small trained tokenizer and a scripted stand-in model for the agent tests."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
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


def _jail_unavailable() -> str | None:
    """Why bubblewrap cannot build the interpreter's jail here (checked without ilm's code), or None."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if ctypes.util.find_library("seccomp") is None:
        return "libseccomp is not installed"
    as_nobody = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    done = subprocess.run(["bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "true"],
                          capture_output=True, text=True, check=False, **as_nobody)
    return None if done.returncode == 0 else f"bwrap cannot make user namespaces here: {done.stderr.strip()}"


JAIL_MISSING = _jail_unavailable()
needs_jail = pytest.mark.skipif(JAIL_MISSING is not None, reason=JAIL_MISSING or "")

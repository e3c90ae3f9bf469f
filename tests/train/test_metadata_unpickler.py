"""The DCP `.metadata` unpickler: crafted files are refused as one ResumeError line and change nothing.

Each crafted file is first loaded with plain pickle in a child process, to show what it does there
(the damage would otherwise last for the rest of this test process)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.serialization

from ilm.train import checkpoint


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(s: str) -> bytes:
    data = s.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _build_on(target: bytes, attribute: str, value: bytes) -> bytes:
    """`target`, then BUILD with slot state {attribute: value}: setattr on whatever `target` is."""
    return b"\x80\x02" + target + b"N}" + _text(attribute) + value + b"s\x86b."


PATH_ATTACK = _build_on(_global("pathlib", "PosixPath"), "__truediv__", b"N")
LAYOUT_ATTACK = _build_on(_global("torch.serialization", "_get_layout"), "cache", b"}" + _text("torch.strided") + b"Ns")
UNKNOWN_LAYOUT = b"\x80\x02" + _global("torch.serialization", "_get_layout") + _text("torch.no_such_layout") + b"\x85R."
DTYPE_ATTACK = _build_on(_global("torch", "float32"), "is_floating_point", b"N")


def _plain_load(data: bytes, then: str) -> subprocess.CompletedProcess:
    code = f"import pickle, pathlib\ntry:\n    pickle.loads({data!r})\nexcept Exception as e:\n    print('load failed', type(e).__name__)\n{then}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)


def test_a_refused_build_leaves_path_working(tmp_path):
    broken = _plain_load(PATH_ATTACK, "pathlib.Path('a') / 'b'")
    assert "TypeError" in broken.stderr  # plain pickle: PosixPath lost its `/` for the whole process
    (tmp_path / ".metadata").write_bytes(PATH_ATTACK)
    with pytest.raises(checkpoint.ResumeError) as err:
        checkpoint.read_metadata(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path / ".metadata") in str(err.value)
    assert "refused to set the state of PosixPath" in str(err.value)
    assert Path("a") / "b" == Path("a/b")


@pytest.mark.parametrize(("name", "data", "said"), [
    ("layout cache", LAYOUT_ATTACK, "refused to set the state of function"),
    ("unknown layout", UNKNOWN_LAYOUT, "KeyError"),
    ("dtype", DTYPE_ATTACK, "refused to set the state of dtype"),
    ("truncated", PATH_ATTACK[:12], "not a readable checkpoint index"),
    ("empty", b"", "not a readable checkpoint index"),
    ("deep", b"\x80\x02" + b"(" * 100_000 + b".", "not a readable checkpoint index"),
])
def test_every_failure_is_one_resume_error_line(tmp_path, name, data, said):
    (tmp_path / ".metadata").write_bytes(data)
    with pytest.raises(checkpoint.ResumeError) as err:
        checkpoint.read_metadata(tmp_path)
    assert "\n" not in str(err.value) and said in str(err.value), (name, str(err.value))
    assert torch.serialization._get_layout("torch.strided") is torch.strided  # the layout cache is intact
    assert torch.float32.is_floating_point


def test_the_layout_cache_attack_works_with_plain_pickle():
    poisoned = _plain_load(LAYOUT_ATTACK, "import torch.serialization\nprint(torch.serialization._get_layout('torch.strided'))")
    assert poisoned.stdout.strip() == "None"  # the cache was replaced: torch.strided now loads as None


def test_a_real_dcp_index_still_loads(tmp_path):
    dcp.save({"w": torch.arange(6.0).reshape(2, 3), "lr": 0.5}, checkpoint_id=tmp_path, no_dist=True)
    md = checkpoint.read_metadata(tmp_path)
    assert md.state_dict_metadata["w"].size == torch.Size([2, 3])
    assert pickle.loads((tmp_path / ".metadata").read_bytes()).state_dict_metadata.keys() == md.state_dict_metadata.keys()

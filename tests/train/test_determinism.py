"""The determinism switch: untouched when off (no inductor import at start-up), cuBLAS workspace set on CUDA."""

import os
import subprocess
import sys

import torch

OFF = """
import sys
import torch
from ilm.train.run import determinism
before = torch.are_deterministic_algorithms_enabled()
with determinism(False):
    pass
print("torch._inductor" in sys.modules, torch.are_deterministic_algorithms_enabled() == before)
"""


def test_determinism_off_does_not_touch_torch():
    # a fresh interpreter: the test process may have imported inductor already
    done = subprocess.run([sys.executable, "-c", OFF], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.split() == ["False", "True"], done.stdout + done.stderr[-2000:]


def test_deterministic_on_cuda_fixes_the_cublas_workspace(monkeypatch):
    from ilm.train.run import CUBLAS_WORKSPACE, cuda_determinism_env, determinism

    env: dict[str, str] = {}
    cuda_determinism_env("cpu", env)
    assert env == {}
    cuda_determinism_env("cuda", env)
    assert env == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"} and CUBLAS_WORKSPACE == ":4096:8"
    chosen = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    cuda_determinism_env("cuda", chosen)
    assert chosen == {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}  # the user's own choice stays
    # through the switch the trainers use: set before the run's first matmul, and determinism is on inside
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "placeholder")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    before = torch.are_deterministic_algorithms_enabled()
    with determinism(True, "cuda"):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before

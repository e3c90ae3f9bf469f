"""ilm: the InternLM2 training recipe in one hackable package."""

import os

# OpenMP threads that finish a parallel region early spin-wait for the others by default. On a CPU shared
# with other busy processes the thread they wait for is often descheduled, so every one of the thousands
# of small regions in a tiny model's step costs a scheduler time slice: the demo's task SFT fell from
# ~16,000 to ~270 tokens/s beside two CPU-burning neighbours (docs/benchmarks.md, "Under load"). Waiting
# passively (sleeping) avoids that; it must be set before torch loads OpenMP, i.e. before `import torch`,
# and an explicit OMP_WAIT_POLICY in the environment still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

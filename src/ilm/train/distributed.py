"""What is applied to a model from outside: compilation now; FSDP2 sharding and activation checkpointing join
here with the pretraining stage. The model file never knows about any of it."""

from __future__ import annotations

import torch

from ilm.model.internlm2 import InternLM2


def apply_compile(model: InternLM2, **compile_kwargs) -> InternLM2:
    """Compile each decoder layer on its own: every layer has the same graph, so one compilation is reused,
    and the embedding / loss stay eager (the fused loss has its own backward)."""
    for layer in model.model.layers:
        layer.compile(**compile_kwargs)
    return model

"""Model configuration and presets: the InternLM2 architecture numbers of docs/recipe.md, Model.

One dataclass describes every size; a preset is just a set of numbers. The released InternLM2 checkpoints
(1.8B / 7B / 20B) and two CPU-sized presets (`tiny` for tests, `small` for demos and benchmarks) share the
same code path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

ROPE_SCALING_TYPES = ("linear", "dynamic")


class ConfigError(ValueError):
    """A model configuration that cannot describe a working InternLM2 model."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 92_544
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    intermediate_size: int = 14_336
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32_768
    # HF InternLM2 form: {"type": "dynamic" | "linear", "factor": float} or None.
    rope_scaling: dict | None = None
    initializer_range: float = 0.02
    # InternLM's NormHead (the 1.8B release trains with it): logits = h @ normalize(W, dim=1)^T, every output
    # row L2-normalised in the forward. No extra parameters; the HF export writes the normalised rows, so the
    # exported checkpoint is a plain linear head (config.json has no such key, as in the released configs).
    norm_head: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 2
    # Stop ids for generation: `</s>` and `<|im_end|>` in the released vocabulary (docs/recipe.md, Tokenizer).
    stop_token_ids: tuple[int, ...] = field(default=(2, 92_542))

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise ConfigError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}: "
                "grouped-query attention needs every KV head to serve the same number of query heads"
            )
        if self.hidden_size % self.num_heads != 0:
            raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2 != 0:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotate-half RoPE")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind not in ROPE_SCALING_TYPES:
                raise ConfigError(
                    f"unknown rope_scaling type {kind!r} in {self.rope_scaling}; "
                    f"supported: {', '.join(ROPE_SCALING_TYPES)} (or rope_scaling = null)"
                )
            factor = self.rope_scaling.get("factor")
            if not isinstance(factor, (int, float)) or factor < 1.0:
                raise ConfigError(f"rope_scaling factor must be a number >= 1.0, got {factor!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def group_size(self) -> int:
        """Query heads per KV head (`g` of the packed `wqkv` layout)."""
        return self.num_heads // self.num_kv_heads

    @property
    def rope_scaling_type(self) -> str | None:
        if self.rope_scaling is None:
            return None
        return self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))

    @property
    def rope_scaling_factor(self) -> float:
        return float(self.rope_scaling["factor"]) if self.rope_scaling else 1.0

    @property
    def max_context(self) -> int:
        """Longest sequence the model is meant to take: scaled RoPE extrapolates by its factor."""
        return int(self.max_position_embeddings * self.rope_scaling_factor)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Exact parameter count, computed from the shapes (checked against the meta-device model)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * (self.num_heads + 2 * self.num_kv_heads) * d + self.num_heads * d * h
        ffn = 3 * h * self.intermediate_size
        layer = attn + ffn + 2 * h
        return 2 * self.vocab_size * h + self.num_layers * layer + h

    def flops_per_token(self, seq_len: int) -> dict[str, int]:
        """Training FLOPs per token (forward + backward = 3x forward), matmuls only.

        `dense` counts the weight matmuls (6N over non-embedding weights plus the output head);
        `attention` adds QK^T and AV under a causal mask (half of the full square on average).
        """
        n_matmul = self.num_params() - self.vocab_size * self.hidden_size - (2 * self.num_layers + 1) * self.hidden_size
        dense = 6 * n_matmul
        attention = 6 * self.num_layers * self.hidden_size * seq_len  # 2 matmuls x 2 flops x 3 passes / 2 causal
        return {"dense": dense, "attention": attention, "total": dense + attention}


PRESETS: dict[str, ModelConfig] = {
    "internlm2-1.8b": ModelConfig(  # norm_head: the 1.8B release's training config sets it (docs/recipe.md, Model)
        hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=8, intermediate_size=8192, norm_head=True
    ),
    "internlm2-7b": ModelConfig(
        hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, intermediate_size=14_336
    ),
    "internlm2-20b": ModelConfig(
        hidden_size=6144, num_layers=48, num_heads=48, num_kv_heads=8, intermediate_size=16_384
    ),
    # CPU presets: same architecture, sized for seconds (tiny: tests) and minutes (small: demo, benchmarks).
    "tiny": ModelConfig(
        vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=176,
        max_position_embeddings=256, stop_token_ids=(2,),
    ),
    "small": ModelConfig(
        vocab_size=8192, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=704,
        max_position_embeddings=2048, stop_token_ids=(2,),
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    try:
        config = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; choose from: {', '.join(PRESETS)}") from None
    return config.replace(**overrides) if overrides else config

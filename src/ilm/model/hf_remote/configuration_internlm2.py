"""InternLM2 configuration for transformers (shipped with ilm's exports; imports only transformers).

The keys are those of the released InternLM2 checkpoints' config.json: `rope_scaling` is the legacy
`{"type": "dynamic" | "linear", "factor": f}` dict and `bias` is false.
"""

from typing import ClassVar

from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    model_type = "internlm2"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values", "cache"]
    # a plain class attribute shadows the base class's `rope_scaling` property (newer transformers map it
    # onto `rope_parameters`), so the released key round-trips unchanged
    rope_scaling = None

    def __init__(
        self,
        vocab_size: int = 103168,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        bias: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        attn_implementation: str | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.bias = bias
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self._check_rope_scaling()
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        super().__init__(
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings, **kwargs,
        )

    def _check_rope_scaling(self) -> None:
        if self.rope_scaling is None:
            return
        if not isinstance(self.rope_scaling, dict):
            raise TypeError(f"rope_scaling must be a dict with 'type' and 'factor', got {self.rope_scaling!r}")
        kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
        factor = self.rope_scaling.get("factor")
        if kind not in ("linear", "dynamic"):
            raise ValueError(f"rope_scaling type must be 'linear' or 'dynamic', got {kind!r}")
        if not isinstance(factor, (int, float)) or factor < 1.0:
            raise ValueError(f"rope_scaling factor must be a number >= 1.0, got {factor!r}")

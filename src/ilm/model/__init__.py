"""The InternLM2 model: config presets, the decoder, attention backends, KV cache, generation, HF adapter.

    from ilm.model import get_preset, build_model
    model = build_model(get_preset("tiny"))
    logits = model(input_ids)                       # (B, T, V)

Heavy optional pieces (transformers, flash-attn) are imported only where used.
"""

from ilm.model.attention import AttnBatch, doc_ids_from_lens, packed_batch, positions_from_doc_ids
from ilm.model.cache import KVCache
from ilm.model.config import PRESETS, ConfigError, ModelConfig, get_preset
from ilm.model.internlm2 import InternLM2, build_model

__all__ = [
    "PRESETS",
    "AttnBatch",
    "ConfigError",
    "InternLM2",
    "KVCache",
    "ModelConfig",
    "build_model",
    "doc_ids_from_lens",
    "get_preset",
    "packed_batch",
    "positions_from_doc_ids",
]

"""InternLM2 for transformers, shipped with ilm's exports (`trust_remote_code=True`; imports only torch,
transformers and safetensors, which transformers depends on).

The same network as ilm's trainer computes, so logits agree with it to float rounding:
- the packed `wqkv` projection, rows grouped per KV head as [q_1 .. q_g, k, v] (grouped-query attention);
- rotate-half RoPE with the released InternLM2 scaling rules: `linear` divides positions by the factor;
  `dynamic` (NTK) keeps the base until a sequence is longer than `max_position_embeddings`, then uses
  base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2)), each row with its own length;
- RMSNorm computed in float32, untied output head `output`, no biases.

The KV cache is transformers' `Cache` (a `DynamicCache` unless the caller passes one). Under dynamic NTK
the base changes with every token once a row passes `max_position_embeddings`, which would re-rotate
every cached key; `generate` then re-runs the whole sequence at each step (a fresh cache), so cached
decoding gives exactly the logits of a full forward at every length.

`InternLM2ForRewardModel` is the reward model of an `ilm rm train` export: the backbone plus `v_head`,
read from `reward_head.safetensors`, scoring the last real token of each row (the reward token).
"""

import os
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from .configuration_internlm2 import InternLM2Config

# the output field (and forward argument) that carries the KV cache: `cache` in newer transformers
_CACHE = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"
HEAD_FILE = "reward_head.safetensors"


def _new_cache(config: InternLM2Config) -> Cache:
    try:
        return DynamicCache(config=config)
    except TypeError:  # older transformers
        return DynamicCache()


def _scaling(config: InternLM2Config) -> tuple[str | None, float]:
    scaling = config.rope_scaling or {}
    kind = scaling.get("type", scaling.get("rope_type"))
    return (None if kind == "default" else kind), float(scaling.get("factor", 1.0))


class InternLM2RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


class InternLM2RotaryEmbedding(nn.Module):
    """Cos/sin for arbitrary per-row positions, computed on the fly (no buffers, no per-sequence state)."""

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.dim = config.hidden_size // config.num_attention_heads
        self.base = float(config.rope_theta)
        self.kind, self.factor = _scaling(config)
        self.max_pos = config.max_position_embeddings

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) positions -> cos, sin of shape (B, 1, T, dim)."""
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=position_ids.device).float() / self.dim
        if self.kind == "dynamic":
            seq_len = position_ids.amax(dim=-1).double() + 1
            scale = (self.factor * seq_len / self.max_pos) - (self.factor - 1)
            base = torch.where(seq_len > self.max_pos, self.base * scale ** (self.dim / (self.dim - 2)), self.base)
            inv_freq = (1.0 / (base[:, None, None] ** exponents.double())).float()
        else:
            inv_freq = 1.0 / (self.base**exponents)
        pos = position_ids.float()
        if self.kind == "linear":
            pos = pos / self.factor
        freqs = pos[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class InternLM2Attention(nn.Module):
    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.n_heads
        self.group = self.n_heads // self.n_kv
        self.wqkv = nn.Linear(config.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=config.bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=config.bias)

    def forward(self, x, cos, sin, mask, cache):
        B, T, _ = x.shape
        qkv = self.wqkv(x).view(B, T, self.n_kv, self.group + 2, self.head_dim)
        q = qkv[:, :, :, : self.group].reshape(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, self.group].transpose(1, 2)
        v = qkv[:, :, :, self.group + 1].transpose(1, 2)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        gqa = self.group > 1
        if mask is None:  # plain causal over the row, or one new token seeing the whole cache
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class InternLM2MLP(nn.Module):
    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__()
        self.attention = InternLM2Attention(config, layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules: ClassVar[list[str]] = ["InternLM2DecoderLayer"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_cache_class = True


def _attention_mask(attention_mask: torch.Tensor | None, past: int, T: int, device) -> torch.Tensor | None:
    """Boolean (B, 1, T, past + T) mask: causal over slots and only real keys; None when plain causal works.

    A padding query may see itself, so no softmax row is empty (an all-masked row would give NaN, which
    masked weights of zero would still carry into the real rows through later layers)."""
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    padded = attention_mask is not None and not bool(attention_mask.bool().all())
    if not padded and (past == 0 or T == 1):
        return None
    S = past + T
    slots = torch.arange(S, device=device)
    query_slots = torch.arange(past, S, device=device)
    mask = slots[None, :] <= query_slots[:, None]
    if attention_mask is not None:
        mask = mask[None] & attention_mask[:, None, -S:].bool()
    else:
        mask = mask[None]
    mask = mask | (slots[None, None, :] == query_slots[None, :, None])
    return mask[:, None]


def _positions(attention_mask: torch.Tensor | None, past: int, B: int, T: int, device) -> torch.Tensor:
    """Positions count real tokens only (left padding), as `generate` numbers them."""
    if attention_mask is not None and attention_mask.dim() == 2:
        return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, -T:]
    return torch.arange(past, past + T, device=device).expand(B, T)


class InternLM2Model(InternLM2PreTrainedModel):
    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(InternLM2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = InternLM2RotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(f"the KV cache must be a transformers Cache (e.g. DynamicCache), got {type(cache).__name__}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = _new_cache(self.config)
        if not use_cache:
            cache = None
        h = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = h.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = _positions(attention_mask, past, B, T, h.device)
        position_ids = position_ids.expand(B, T)
        cos, sin = self.rotary_emb(position_ids, h.dtype)
        mask = _attention_mask(attention_mask, past, T, h.device)
        hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                hidden_states += (h,)
            h = layer(h, cos, sin, mask, cache)
        h = self.norm(h)
        if output_hidden_states:
            hidden_states += (h,)
        out = BaseModelOutputWithPast(last_hidden_state=h, hidden_states=hidden_states, **{_CACHE: cache})
        return out if return_dict is not False else out.to_tuple()


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    _tied_weights_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, value):
        self.output = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ):
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache if cache is not None else past_key_values, inputs_embeds=inputs_embeds,
            use_cache=use_cache, output_hidden_states=output_hidden_states, return_dict=True,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.output(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{_CACHE: getattr(out, _CACHE)}
        )
        return result if return_dict is not False else result.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """transformers' preparation, except under dynamic NTK past `max_position_embeddings`: there the
        whole sequence is run again on a fresh cache, since the RoPE base of every cached key has changed."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        if self.model.rotary_emb.kind != "dynamic":
            return inputs
        key = "cache" if "cache" in inputs else "past_key_values"
        cache = inputs.get(key)
        if not isinstance(cache, Cache) or cache.get_seq_length() == 0:
            return inputs
        mask = inputs.get("attention_mask")
        positions = kwargs.get("position_ids")
        if positions is None or positions.shape[-1] != input_ids.shape[1]:
            positions = _positions(mask if mask is not None and mask.dim() == 2 else None, 0,
                                   input_ids.shape[0], input_ids.shape[1], input_ids.device)
        if int(positions[:, -1].max()) + 1 <= self.config.max_position_embeddings:
            return inputs
        inputs["input_ids"] = input_ids.clone()
        inputs["position_ids"] = positions.clone()
        inputs[key] = _new_cache(self.config)
        if "cache_position" in inputs:
            inputs["cache_position"] = torch.arange(input_ids.shape[1], device=input_ids.device)
        return inputs


class InternLM2ForRewardModel(InternLM2PreTrainedModel):
    """Backbone + scalar `v_head` at the last real token of each row (the reward token of ilm's scored
    sequences). Loads the head from the export's `reward_head.safetensors`; the LM head is not used."""

    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^output\.weight$"]
    _keys_to_ignore_on_load_missing: ClassVar[list[str]] = [r"^v_head\.weight$"]

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.v_head = nn.Linear(config.hidden_size, 1, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        """-> logits (B, 1) in float32: the reward of each row, read at its last real token."""
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            inputs_embeds=inputs_embeds, use_cache=False, output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        h = out.last_hidden_state
        B, T = h.shape[:2]
        if attention_mask is not None and attention_mask.dim() == 2:
            last = (attention_mask.long() * torch.arange(T, device=h.device)).argmax(dim=-1)
        else:
            last = torch.full((B,), T - 1, dtype=torch.long, device=h.device)
        rewards = self.v_head(h[torch.arange(B, device=h.device), last]).float()
        result = SequenceClassifierOutputWithPast(logits=rewards, hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()

    @torch.no_grad()
    def get_score(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) rewards."""
        return self(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        source, subfolder = str(pretrained_model_name_or_path), kwargs.get("subfolder") or ""
        path = os.path.join(source, subfolder, HEAD_FILE)
        if not os.path.isfile(path):
            from transformers.utils import cached_file

            try:
                path = cached_file(
                    source, HEAD_FILE, subfolder=subfolder, revision=kwargs.get("revision"),
                    cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token"),
                )
            except OSError as err:
                raise OSError(f"{source}: no {HEAD_FILE}; only a reward model export has a reward head") from err
            if path is None:
                raise OSError(f"{source}: no {HEAD_FILE}; only a reward model export has a reward head")
        from safetensors.torch import load_file

        head = load_file(path).get("v_head.weight")
        if head is None or tuple(head.shape) != tuple(model.v_head.weight.shape):
            raise ValueError(f"{path}: no v_head.weight of shape {tuple(model.v_head.weight.shape)}")
        with torch.no_grad():
            model.v_head.weight.copy_(head.to(model.v_head.weight.device, model.v_head.weight.dtype))
        return loaded

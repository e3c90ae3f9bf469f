"""Hugging Face checkpoints in and out: the InternLM2 format (our native names) and the Llama format.

Adapter, not model: the model never knows about files. A checkpoint directory holds `config.json` and
either `model.safetensors` or shards `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`
once the weights pass `max_shard_bytes`. Writes are atomic: everything goes into a temporary sibling
directory that is renamed into place only when complete, so a crash never leaves a half checkpoint.

A model trained with `norm_head` is written with its output rows L2-normalised and no norm_head key in
config.json (as the released checkpoints are), so it loads back as a plain head with the same logits.

Llama layout: the packed `wqkv` (rows grouped per KV head as [q_1..q_g, k, v]) is un-interleaved into
`q_proj/k_proj/v_proj`; both families use rotate-half RoPE, so no row permutation is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ilm.model.config import ConfigError, ModelConfig
from ilm.model.internlm2 import InternLM2

FORMATS = ("internlm2", "llama")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

_LLAMA_NAMES = {  # InternLM2 suffix -> Llama suffix, per layer
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_LLAMA_TOP = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


# transformers has no InternLM2 class: like the released checkpoints, an InternLM2-layout export ships its
# modeling code (`ilm.model.hf_remote`, copied beside config.json) and names it here (trust_remote_code=True)
AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForSequenceClassification": "modeling_internlm2.InternLM2ForRewardModel",
}


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it claims to describe."""


# ----------------------------------------------------------------------------- configs


def config_to_hf(config: ModelConfig, fmt: str = "internlm2", dtype: torch.dtype = torch.float32) -> dict:
    common = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if fmt == "internlm2":
        if config.rope_scaling:
            common["rope_scaling"] = {"type": config.rope_scaling_type, "factor": config.rope_scaling_factor}
        return {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "auto_map": AUTO_MAP,
                "bias": False, **common}
    if fmt == "llama":
        if config.rope_scaling:
            kind = config.rope_scaling_type
            common["rope_scaling"] = {"type": kind, "rope_type": kind, "factor": config.rope_scaling_factor}
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
            "mlp_bias": False, "head_dim": config.head_dim, **common,
        }
    raise ValueError(f"unknown checkpoint format {fmt!r}; choose from {FORMATS}")


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    fmt = hf.get("model_type")
    if fmt not in FORMATS:
        raise CheckpointError(f"{source}: model_type {fmt!r} is not one of {FORMATS}")
    if hf.get("bias") or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise CheckpointError(f"{source}: biases are set, but InternLM2 has none")
    if hf.get("tie_word_embeddings"):
        raise CheckpointError(f"{source}: tie_word_embeddings=true, but InternLM2's output head is untied")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"} or None)
    if scaling and scaling.get("type", scaling.get("rope_type")) == "default":
        scaling = None
    if scaling:
        scaling = {"type": scaling.get("type", scaling.get("rope_type")), "factor": scaling.get("factor")}
    eos = hf.get("eos_token_id", 2)
    eos = eos[0] if isinstance(eos, list) else eos
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10_000.0))),
            max_position_embeddings=hf.get("max_position_embeddings", 32_768),
            rope_scaling=scaling,
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=eos,
            pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else eos,
        )
    except KeyError as err:
        raise CheckpointError(f"{source}: missing required field {err.args[0]!r}") from None
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None


# ----------------------------------------------------------------------------- state dicts


def to_llama(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    out = {_LLAMA_TOP[k]: v for k, v in state.items() if k in _LLAMA_TOP}
    kv, g, d, h = config.num_kv_heads, config.group_size, config.head_dim, config.hidden_size
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        wqkv = state[src + "attention.wqkv.weight"].view(kv, g + 2, d, h)
        out[dst + "self_attn.q_proj.weight"] = wqkv[:, :g].reshape(kv * g * d, h).clone()
        out[dst + "self_attn.k_proj.weight"] = wqkv[:, g].reshape(kv * d, h).clone()
        out[dst + "self_attn.v_proj.weight"] = wqkv[:, g + 1].reshape(kv * d, h).clone()
        for ours, theirs in _LLAMA_NAMES.items():
            out[dst + theirs] = state[src + ours]
    return out


def from_llama(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    expected = _expected_shapes(config, "llama")
    _check_names_and_shapes(state, expected, "Llama checkpoint")
    out = {k: state[v] for k, v in _LLAMA_TOP.items()}
    kv, g, d, h = config.num_kv_heads, config.group_size, config.head_dim, config.hidden_size
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        q = state[p + "self_attn.q_proj.weight"].view(kv, g, d, h)
        k = state[p + "self_attn.k_proj.weight"].view(kv, 1, d, h)
        v = state[p + "self_attn.v_proj.weight"].view(kv, 1, d, h)
        out[p + "attention.wqkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, h)
        for ours, theirs in _LLAMA_NAMES.items():
            out[p + ours] = state[p + theirs]
    return out


def _expected_shapes(config: ModelConfig, fmt: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in InternLM2(config).state_dict().items()}
    if fmt == "internlm2":
        return ours
    meta = {k: torch.empty(s, device="meta") for k, s in ours.items()}
    return {k: tuple(v.shape) for k, v in to_llama(meta, config).items()}


def _check_names_and_shapes(state: dict, expected: dict[str, tuple[int, ...]], what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint has shape {tuple(state[k].shape)}, model expects {expected[k]}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(
            f"unexpected tensors: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else "")
        )
    problems.extend(f"mis-shaped tensor {w}" for w in wrong)
    if problems:
        raise CheckpointError(f"{what} does not match its config:\n  " + "\n  ".join(problems))


def load_state_dict_checked(model: InternLM2, state: dict[str, torch.Tensor], what: str = "state dict") -> None:
    """`load_state_dict(strict=True)`, but naming every bad tensor with both shapes."""
    _check_names_and_shapes(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, what)
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- files


def save_checkpoint(
    model: InternLM2,
    path: str | os.PathLike,
    fmt: str = "internlm2",
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Write `model` as an HF checkpoint directory at `path`, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    dtype = dtype or next(iter(state.values())).dtype
    if model.config.norm_head:  # bake NormHead in: a plain linear head with the rows the forward used
        state["output.weight"] = torch.nn.functional.normalize(state["output.weight"].float(), dim=1)
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    if fmt == "llama":
        state = to_llama(state, model.config)
    elif fmt != "internlm2":
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose from {FORMATS}")
    shards = _split_shards(state, max_shard_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write_config_files(tmp, model.config, fmt, dtype, extra_files)
        if len(shards) == 1:
            save_file(shards[0], tmp / "model.safetensors", metadata={"format": "pt"})
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp / name, metadata={"format": "pt"})
                for k, v in shard.items():
                    weight_map[k] = name
                    total += v.numel() * v.element_size()
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        for name, content in (extra_files or {}).items():
            target = tmp / name
            target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def stop_token_ids(config: ModelConfig, files: dict[str, str | bytes] | None = None) -> list[int]:
    """The ids generation stops at, for `generation_config.json`: `</s>` and `<|im_end|>` as numbered by the
    tokenizer.json among `files` (the tokenizer saved with the checkpoint), then the config's own stop ids
    that fit the vocabulary. Without both, transformers' `generate` runs past the end of a chat turn."""
    from ilm.tokenizer.layout import EOS, IM_END

    ids: list[int] = []
    raw = (files or {}).get("tokenizer.json")
    if raw is not None:
        added = {t.get("content"): t.get("id") for t in json.loads(raw).get("added_tokens", [])}
        ids = [added[name] for name in (EOS, IM_END) if isinstance(added.get(name), int)]
    ids += [i for i in config.stop_token_ids if i not in ids and 0 <= i < config.vocab_size]
    return ids


def write_config_files(directory: Path, config: ModelConfig, fmt: str, dtype: torch.dtype,
                       files: dict[str, str | bytes] | None = None) -> None:
    """`config.json` and `generation_config.json` of a checkpoint directory (+ the modeling code that
    `auto_map` names, in the InternLM2 layout); `files`: the other files it will hold (the tokenizer's give
    the stop ids)."""
    (directory / "config.json").write_text(json.dumps(config_to_hf(config, fmt, dtype), indent=2) + "\n")
    if fmt == "internlm2":
        from ilm.model.hf_remote import remote_code_files

        for name, text in remote_code_files().items():
            (directory / name).write_text(text)
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": stop_token_ids(config, files),
                    "pad_token_id": config.pad_token_id}, indent=2) + "\n"
    )


def _split_shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    return shards


def _replace_dir(tmp: Path, path: Path) -> None:
    """Swap a finished temporary directory into place; the old checkpoint survives until the new one is whole."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).exists():
                raise CheckpointError(f"{index}: lists shard {shard}, which is not in {path}")
            state.update(load_file(path / shard))
        return state
    single = path / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    return load_file(single)


def read_config(path: str | os.PathLike) -> tuple[ModelConfig, str]:
    cfg_path = Path(path) / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{cfg_path}: not found; is {path} an HF checkpoint directory?")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path}:{err.lineno}: invalid JSON ({err.msg})") from None
    config = config_from_hf(raw, str(cfg_path))
    gen_path = Path(path) / "generation_config.json"
    if gen_path.exists():
        stop = json.loads(gen_path.read_text()).get("eos_token_id")
        if stop is not None:
            config = config.replace(stop_token_ids=tuple(stop if isinstance(stop, list) else [stop]))
    return config, raw["model_type"]


_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


class _Files:
    """The safetensors files of a checkpoint directory, opened lazily; tensors are read by row range, so a
    process reads only the rows it holds (the files are memory-mapped: nothing else is read)."""

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open

        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            for shard in sorted(set(weight_map.values())):
                if not (path / shard).exists():
                    raise CheckpointError(f"{index}: lists shard {shard}, which is not in {path}")
        elif (path / "model.safetensors").exists():
            with safe_open(path / "model.safetensors", framework="pt") as f:
                weight_map = dict.fromkeys(f.keys(), "model.safetensors")
        else:
            raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
        self.path, self.weight_map, self._open = path, weight_map, {}

    def _slice(self, name: str):
        from safetensors import safe_open

        file = self.weight_map[name]
        if file not in self._open:
            self._open[file] = safe_open(self.path / file, framework="pt")
        return self._open[file].get_slice(name)

    def shapes(self) -> dict[str, torch.Tensor]:
        """name -> a meta tensor of the stored shape (headers only)."""
        return {k: torch.empty(self._slice(k).get_shape(), device="meta") for k in self.weight_map}

    def dtype(self) -> torch.dtype:
        first = self._slice(next(iter(self.weight_map))).get_dtype()
        if first not in _DTYPES:
            raise CheckpointError(f"{self.path}: unsupported tensor dtype {first}")
        return _DTYPES[first]

    def rows(self, name: str, start: int, end: int) -> torch.Tensor:
        return self._slice(name)[start:end]


def _llama_rows(files: _Files, ours: str, start: int, end: int, config: ModelConfig) -> torch.Tensor:
    """Rows start..end of our tensor `ours`, read from a Llama-layout checkpoint."""
    if ours in _LLAMA_TOP:
        return files.rows(_LLAMA_TOP[ours], start, end)
    layer, suffix = re.fullmatch(r"(model\.layers\.\d+\.)(.+)", ours).groups()
    if suffix != "attention.wqkv.weight":
        return files.rows(layer + _LLAMA_NAMES[suffix], start, end)
    # wqkv rows are grouped per KV head as [q_1..q_g, k, v], head_dim rows each: read group by group
    g, d = config.group_size, config.head_dim
    group_rows = (g + 2) * d
    parts = []
    for head in range(start // group_rows, -(-end // group_rows)):
        group = torch.cat([
            files.rows(f"{layer}self_attn.q_proj.weight", head * g * d, (head + 1) * g * d),
            files.rows(f"{layer}self_attn.k_proj.weight", head * d, (head + 1) * d),
            files.rows(f"{layer}self_attn.v_proj.weight", head * d, (head + 1) * d),
        ])
        lo = head * group_rows
        parts.append(group[max(start, lo) - lo : min(end, lo + group_rows) - lo])
    return torch.cat(parts)


@torch.no_grad()
def load_weights(model: InternLM2, path: str | os.PathLike) -> InternLM2:
    """Fill an allocated model (whole, or sharded by FSDP2) from an HF checkpoint directory in place, each
    process reading only the rows of each tensor it holds; names and shapes are checked first, from the
    file headers."""
    from ilm.model.init import canonical_name, local_part

    fmt = read_config(path)[1]
    files = _Files(path)
    expected = _expected_shapes(model.config, fmt)
    _check_names_and_shapes(files.shapes(), expected, f"checkpoint {path}")
    for name, param in model.named_parameters():
        name = canonical_name(name)
        local, start = local_part(param)
        end = start + local.shape[0]
        if local.shape[0] == 0:
            continue
        if fmt == "llama":
            local.copy_(_llama_rows(files, name, start, end, model.config))
        else:
            local.copy_(files.rows(name, start, end))
    return model


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> InternLM2:
    """Load an HF InternLM2 or Llama checkpoint directory into our model (the checkpoint's dtype by default)."""
    config, _ = read_config(path)
    with torch.device("meta"):
        model = InternLM2(config)
    dtype = dtype or _Files(path).dtype()
    model = model.to(dtype).to_empty(device=device)
    return load_weights(model, path)


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Checkpoint format conversion; other files in `src` (tokenizer, chat template) are carried over."""
    model = load_checkpoint(src)
    return save_checkpoint(model, dst, fmt=to, max_shard_bytes=max_shard_bytes, extra_files=carried_files(src))


def carried_files(src: str | os.PathLike) -> dict[str, bytes]:
    """The files of checkpoint directory `src` that a copy in another format keeps as they are (tokenizer,
    chat template, reward head): all but the weights, the two config files and the shipped modeling code
    (written fresh for the target layout, none for Llama)."""
    from ilm.model.hf_remote import FILES as REMOTE_CODE

    skip = {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", *REMOTE_CODE}
    return {
        p.name: p.read_bytes()
        for p in Path(src).iterdir()
        if p.is_file() and p.name not in skip and not p.name.endswith(".safetensors")
    }

"""`ilm` as an lm-evaluation-harness model: `lm_eval ... --model ilm --model_args pretrained=DIR`.

lm-eval owns everything about a task (its YAML, few-shot sampling, filters, metrics, aggregation); this
class answers its three kinds of request with ilm's engine (`ilm.eval.lm.EvalModel`: prefix-shared,
length-sorted scoring batches, the KV-cache generator, any checkpoint layout `ilm.model.hf` reads).

lm-eval has no plugin entry point for models, so the name is registered when this module is imported:
`python -m ilm.eval.harness ARGS` (also `ilm eval lm-eval ARGS`) is `lm_eval ARGS` with `ilm` registered,
and in Python `import ilm.eval.harness` before `lm_eval.simple_evaluate(model="ilm", ...)`.

Model args: `pretrained` (checkpoint directory; `checkpoint` is an alias), `tokenizer` (default: the
checkpoint's own), `dtype` (float32 | bfloat16 | float16; default float32), `device`, `batch_size`,
`max_length` (scoring window; default `max_position_embeddings`, as lm-eval's hf), `max_gen_toks`
(default 256), `seed` (sampling, for `do_sample: true`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from ilm.eval.lm import EvalModel

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "auto": torch.float32}


def _int(value: Any, name: str, default: int | None) -> int | None:
    if value in (None, "", "auto"):
        return default
    try:
        return int(str(value).split(":")[0])  # lm-eval's "auto:4" batch sizes: the number is a hint only
    except ValueError:
        raise ValueError(f"--model_args {name}={value!r}: expected an integer") from None


@register_model("ilm")
class IlmLM(LM):
    """An ilm checkpoint behind lm-eval's `LM` interface (see the module docstring for the model args)."""

    def __init__(self, pretrained: str | None = None, checkpoint: str | None = None, tokenizer: str | None = None,
                 dtype: str = "float32", device: str | None = None, batch_size: int | str | None = 8,
                 max_length: int | str | None = None, max_gen_toks: int | str = 256, seed: int | str = 1234,
                 progress: bool | str = True, **_ignored: Any):
        super().__init__()
        path = pretrained or checkpoint
        if not path:
            raise ValueError("--model ilm needs --model_args pretrained=CHECKPOINT_DIR")
        if str(dtype) not in _DTYPES:
            raise ValueError(f"--model_args dtype={dtype!r}: expected one of {', '.join(_DTYPES)}")
        self.engine = EvalModel(path, device=device, dtype=_DTYPES[str(dtype)], batch_size=_int(batch_size, "batch_size", 8),
                                max_length=_int(max_length, "max_length", None), tokenizer=tokenizer,
                                progress=str(progress).lower() not in ("0", "false", "no"))
        self.max_gen_toks = _int(max_gen_toks, "max_gen_toks", 256)
        self.seed = _int(seed, "seed", 1234)
        self.checkpoint = str(path)
        self.rolling_tokens: dict[str, int] = {}  # text -> tokens scored (for ilm's token_perplexity)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> IlmLM:
        """`--model_args` win over lm-eval's own `--batch_size`/`--device` (it passes both: a clash otherwise)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            extra.pop("device")  # lm-eval's default device is cuda; without one, ilm's default (cpu) applies
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> IlmLM:
        from lm_eval import utils

        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    @property
    def tokenizer_name(self) -> str:
        return self.checkpoint

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        out = self.engine.loglikelihood(pairs)
        for pair, res in zip(pairs, out):
            self.cache_hook.add_partial("loglikelihood", pair, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [r.args[0] for r in requests]
        out = self.engine.loglikelihood_rolling(texts)
        for text, (ll, n) in zip(texts, out):
            self.rolling_tokens[text] = n
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), ll)
        return [ll for ll, _ in out]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests are grouped by their generation kwargs (lm-eval's normalisation: `until` plus EOS, the
        `max_gen_toks` aliases, `do_sample`/`temperature`), each group run through the KV-cache generator."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        eos = self.engine.tokenizer.decode([self.engine.eos], skip_special=False)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(requests)
        for rows in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[rows[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            if max_gen >= self.engine.max_length:
                raise ValueError(f"max_gen_toks {max_gen} must be less than the scoring window "
                                 f"{self.engine.max_length} (ilm eval run --max-length N; lm-eval: --model_args max_length=N)")
            sampling = None
            if kwargs.get("do_sample"):  # as HF's generate: temperature 1 unless given
                sampling = {"temperature": float(kwargs.get("temperature") or 1.0),
                            "top_p": float(kwargs.get("top_p") or 1.0), "top_k": int(kwargs.get("top_k") or 0),
                            "seed": self.seed}
            texts = self.engine.generate_until([requests[i].args[0] for i in rows], until, max_gen, sampling)
            for i, text in zip(rows, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def main(argv: list[str] | None = None) -> int:
    """lm-eval's own command line, with the `ilm` model registered (and code execution in ilm's jail)."""
    from lm_eval.__main__ import cli_evaluate

    from ilm.eval.code import install_code_eval

    install_code_eval()
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

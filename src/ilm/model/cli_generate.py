"""`ilm generate --checkpoint DIR (--prompt TEXT | --ids 1,2,3)`: text in and out when the checkpoint has a
tokenizer, token ids otherwise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="HF checkpoint directory (InternLM2 or Llama format)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs a tokenizer in the checkpoint directory)")
    src.add_argument("--ids", help="comma-separated prompt token ids, e.g. 1,2,3")
    parser.add_argument("--chat", action="store_true", help="wrap --prompt as a user turn in the ChatML format")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (default: sampling)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (recipe rollout default 0.9)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--prefill-chunk", type=int, default=2048, help="prompt tokens per prefill forward (long prompts)")
    parser.add_argument("--ntk", choices=("cached", "recompute"), default="cached",
                        help="dynamic NTK past max_position_embeddings: decode from the KV cache, each token with the "
                             "RoPE base of its own length (default, O(n) per token), or re-run the whole sequence "
                             "every token with the newest length's base (a full forward's rule, O(n^2) per token)")
    parser.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from ilm.model.generate import Sampling, generate_stream
    from ilm.model.hf import load_checkpoint

    model = load_checkpoint(args.checkpoint).eval()
    tokenizer = None
    stop_ids = None
    if args.prompt is not None:
        if not (Path(args.checkpoint) / "tokenizer.json").exists():
            print(f"error: {args.checkpoint} has no tokenizer.json; pass --ids instead of --prompt", file=sys.stderr)
            return 2
        from ilm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.checkpoint)
        stop_ids = tuple(tokenizer.stop_ids)
        if args.chat:
            ids = tokenizer.render([{"role": "user", "content": args.prompt}], add_generation_prompt=True).ids
        else:
            ids = tokenizer.encode(args.prompt, bos=True)
    else:
        try:
            ids = [int(t) for t in args.ids.split(",") if t.strip()]
        except ValueError:
            print(f"error: --ids must be comma-separated integers, got {args.ids!r}", file=sys.stderr)
            return 2
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop_ids=stop_ids, prefill_chunk=args.prefill_chunk,
        ntk=args.ntk,
    )
    try:
        stream = generate_stream(model, [ids], sampling)
        out: list[int] = []
        shown = ""
        for step in stream:
            token = step[0]
            if token is None:
                break
            out.append(token)
            if tokenizer is not None:  # decode the whole tail so multi-byte characters print whole
                text = tokenizer.decode(out, skip_special=True)
                if not text.endswith("\ufffd"):
                    sys.stdout.write(text[len(shown):])
                    sys.stdout.flush()
                    shown = text
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if tokenizer is not None:  # whatever was held back waiting for the rest of a character
        print(tokenizer.decode(out, skip_special=True)[len(shown):])
    else:
        print(",".join(map(str, out)))
    return 0

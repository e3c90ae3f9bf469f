"""`ilm model info | convert`."""

from __future__ import annotations

import argparse

from ilm.model.config import PRESETS


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(title="verbs", metavar="VERB")

    info = verbs.add_parser("info", help="parameters and training FLOPs per token of a preset")
    info.add_argument("--preset", required=True, choices=sorted(PRESETS))
    info.add_argument("--seq-len", type=int, default=4096, help="window for the attention FLOPs (default 4096)")
    info.set_defaults(func=_info)

    conv = verbs.add_parser("convert", help="convert an HF checkpoint between InternLM2 and Llama formats")
    conv.add_argument("src", help="HF checkpoint directory (InternLM2 or Llama)")
    conv.add_argument("dst", help="output directory (written atomically)")
    conv.add_argument("--to", required=True, choices=["internlm2", "llama"])
    conv.add_argument("--max-shard-gb", type=float, default=5.0, help="shard above this size (default 5 GB)")
    conv.add_argument("--overwrite", action="store_true", help="replace DST if it already exists (default: refuse)")
    conv.set_defaults(func=_convert)


def _info(args: argparse.Namespace) -> int:
    cfg = PRESETS[args.preset]
    flops = cfg.flops_per_token(args.seq_len)
    rows = [
        ("preset", args.preset),
        ("layers / hidden / heads / kv heads / ffn",
         f"{cfg.num_layers} / {cfg.hidden_size} / {cfg.num_heads} / {cfg.num_kv_heads} / {cfg.intermediate_size}"),
        ("vocab", f"{cfg.vocab_size:,}"),
        ("parameters", f"{cfg.num_params():,}"),
        ("non-embedding parameters", f"{cfg.num_params() - 2 * cfg.vocab_size * cfg.hidden_size:,}"),
        (f"training FLOPs/token @ {args.seq_len}", f"{flops['total']:,} (dense {flops['dense']:,} + attention {flops['attention']:,})"),
        ("rope", f"theta {cfg.rope_theta:,.0f}, max positions {cfg.max_position_embeddings:,}, scaling {cfg.rope_scaling}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ilm.model.hf import convert

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:  # a user's pretraining export was lost to a silent overwrite
        print(f"error: {dst} already exists; choose another directory or pass --overwrite", file=sys.stderr)
        return 2
    out = convert(args.src, args.dst, to=args.to, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"wrote {args.to} checkpoint to {out}")
    return 0

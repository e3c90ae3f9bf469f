"""`ilm chat --checkpoint DIR`: chat with a model in the terminal (one line per user turn, streamed replies).

Commands: `/reset` forgets the conversation, `/system TEXT` sets the system prompt (and resets), `/exit`
(or end of input) quits. With `--tools builtin` the model may call the calculator and the clock, with
`--interpreter` it may run Python in the sandbox (`ilm.agent.sandbox`); every call and its environment
result is printed between square brackets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "commands: /reset, /system TEXT, /exit"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory with tokenizer files")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--tools", choices=["builtin"], default=None, help="offer the builtin tools (calculator, clock)")
    parser.add_argument("--interpreter", action="store_true", help="let the model run Python in the sandbox")
    parser.add_argument("--allow-network", action="store_true", help="let the interpreter's code reach the network")
    parser.add_argument("--unconfined-interpreter", action="store_true",
                        help="run the interpreter without its jail where bubblewrap cannot build one (limits only)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-turns", type=int, default=6, help="model turns per user message (tool rounds)")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (default: sampling)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=None)
    parser.set_defaults(func=_chat)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _chat(args: argparse.Namespace) -> int:
    from ilm.agent.loop import Agent, Event, GenerateModel
    from ilm.model.generate import Sampling

    ckpt = Path(args.checkpoint)
    if not ckpt.is_dir():
        return _fail(f"{ckpt}: not a checkpoint directory")
    if not any((ckpt / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return _fail(f"{ckpt} has no tokenizer (tokenizer.json or tokenizer.model); ilm chat needs one")
    if not (ckpt / "config.json").is_file():
        return _fail(f"{ckpt} has no config.json; it is not a model checkpoint")
    sampling = Sampling(max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed)  # bad values: ValueError -> one line from ilm.cli

    from ilm.agent.sandbox import Sandbox
    from ilm.agent.tools import builtin_tools
    from ilm.model.hf import load_checkpoint
    from ilm.tokenizer import load_tokenizer

    tok = load_tokenizer(ckpt)
    model = load_checkpoint(ckpt).eval()
    sandbox = None
    if args.interpreter:
        sandbox = Sandbox(allow_network=args.allow_network, unconfined=args.unconfined_interpreter)
        why = sandbox.start()
        if why is not None:
            sandbox.close()
            return _fail(why)
    out = sys.stdout
    interactive = sys.stdin.isatty()

    def show(event: Event) -> None:
        if event.kind == "text":
            out.write(event.text)
        elif event.kind == "call":
            if event.data.get("type") == "interpreter":
                out.write(f"\n[interpreter]\n{event.text}\n")
            else:
                out.write(f"\n[tool call] {event.text}\n")
        elif event.kind == "result":
            out.write(f"[environment {event.data.get('name', 'plugin')}] {event.text}\n")
        elif event.kind in ("error", "max_turns"):
            out.write(f"\n[{event.kind.replace('_', ' ')}] {event.text}\n")
        elif event.kind == "final":
            out.write("\n")
        out.flush()

    agent = Agent(GenerateModel(model), tok, tools=builtin_tools() if args.tools == "builtin" else None,
                  sandbox=sandbox, sampling=sampling, max_turns=args.max_turns, on_event=show)
    system = args.system
    history: list[dict] = []

    def fresh() -> list[dict]:
        return [{"role": "system", "content": system}] if system else []

    history = fresh()
    if interactive:
        print(f"ilm chat: {ckpt} ({HELP})")
    try:
        while True:
            if interactive:
                out.write("> ")
                out.flush()
            line = sys.stdin.readline()
            if not line:
                break
            text = line.rstrip("\n")
            if not text.strip():
                continue
            if text.startswith("/"):
                command, _, rest = text.partition(" ")
                if command == "/exit":
                    break
                if command == "/reset":
                    history = fresh()
                    print("[conversation reset]")
                elif command == "/system":
                    system = rest.strip() or None
                    history = fresh()
                    print(f"[system prompt {'set' if system else 'cleared'}; conversation reset]")
                else:
                    print(f"[unknown command {command}; {HELP}]")
                continue
            history.append({"role": "user", "content": text})
            agent.run(history)
    except KeyboardInterrupt:
        print()
    finally:
        if sandbox is not None:
            sandbox.close()
    return 0

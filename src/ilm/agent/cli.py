"""`ilm chat --checkpoint DIR`: chat with a model in the terminal (one line per user turn, streamed replies).

Commands: `/reset` forgets the conversation, `/system TEXT` sets the system prompt (and resets), `/history`
shows the conversation as the model sees it, `/exit` (or Ctrl-D) quits. With `--tools builtin` the model may
call the calculator and the clock, with `--interpreter` it may run Python in the sandbox
(`ilm.agent.sandbox`); every call and its environment result is printed between square brackets.

On a terminal the input line has readline's editing and history (arrow keys; kept in `--history`,
~/.ilm_chat_history by default). Ctrl-C during a reply stops it and keeps the conversation (with the part
of the reply already shown); Ctrl-C at the prompt only clears the line. The conversation is kept within the
model's context: before each reply the oldest exchanges are dropped, with a notice, so that the prompt and
`--max-new-tokens` fit.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

HELP = "commands: /reset, /system TEXT, /history, /exit"
HISTORY = "~/.ilm_chat_history"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory with tokenizer files")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--tools", choices=["builtin"], default=None, help="offer the builtin tools (calculator, clock)")
    parser.add_argument("--interpreter", action="store_true", help="let the model run Python in the sandbox")
    parser.add_argument("--allow-network", action="store_true", help="let the interpreter's code reach the network")
    parser.add_argument("--unconfined-interpreter", action="store_true",
                        help="run the interpreter without its jail where bubblewrap cannot build one (limits only)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens per reply at most (default: half the model's context, at most 512)")
    parser.add_argument("--history", default=HISTORY, help="readline history file on a terminal (\"\" keeps none)")
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
    from ilm.agent.loop import Agent, GenerateModel
    from ilm.model.generate import Sampling

    ckpt = Path(args.checkpoint)
    if not ckpt.is_dir():
        return _fail(f"{ckpt}: not a checkpoint directory")
    if not any((ckpt / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return _fail(f"{ckpt} has no tokenizer (tokenizer.json or tokenizer.model); ilm chat needs one")
    if not (ckpt / "config.json").is_file():
        return _fail(f"{ckpt} has no config.json; it is not a model checkpoint")

    from ilm.agent.sandbox import Sandbox
    from ilm.agent.tools import builtin_tools
    from ilm.model.hf import load_checkpoint
    from ilm.tokenizer import load_tokenizer

    tok = load_tokenizer(ckpt)
    model = load_checkpoint(ckpt).eval()
    context = model.config.max_context
    max_new = args.max_new_tokens if args.max_new_tokens is not None else min(512, max(1, context // 2))
    if max_new >= context:
        return _fail(f"--max-new-tokens {max_new} leaves no room for the conversation in the model's context of "
                     f"{context} tokens; use at most {context // 2}")
    sampling = Sampling(max_new_tokens=max_new, greedy=args.greedy, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed)  # bad values: ValueError -> one line from ilm.cli
    sandbox = None
    if args.interpreter:
        sandbox = Sandbox(allow_network=args.allow_network, unconfined=args.unconfined_interpreter)
        why = sandbox.start()
        if why is not None:
            sandbox.close()
            return _fail(why)
    screen = Screen(sys.stdout)
    agent = Agent(GenerateModel(model), tok, tools=builtin_tools() if args.tools == "builtin" else None,
                  sandbox=sandbox, sampling=sampling, max_turns=args.max_turns, on_event=screen.show)
    chat = Conversation(agent, context - max_new, args.system, screen)
    interactive = sys.stdin.isatty()
    history_file = _readline(args.history) if interactive else None
    if interactive:
        print(f"ilm chat: {ckpt} ({context:,}-token context, replies up to {max_new:,} tokens; {HELP})")
    try:
        while True:
            text = _read(interactive)
            if text is None:
                break
            if not text.strip():
                continue
            if text.startswith("/"):
                if not chat.command(text):
                    break
                continue
            chat.say(text)
    finally:
        if sandbox is not None:
            sandbox.close()
        if history_file:
            _save_history(history_file)
    return 0


def _readline(path: str) -> str | None:
    """Line editing and history for `input` (arrow keys, Ctrl-R); the history file is read if present."""
    try:
        import readline
    except ImportError:  # a Python built without it: plain input still works
        return None
    if not path:
        return None
    path = os.path.expanduser(path)
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return path


def _save_history(path: str) -> None:
    import readline

    try:
        readline.write_history_file(path)
    except OSError as err:
        print(f"[history not saved: {path}: {err.strerror}]", file=sys.stderr)


def _read(interactive: bool) -> str | None:
    """The next user line, None at end of input; Ctrl-C at the prompt clears the line and asks again."""
    if not interactive:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    while True:
        try:
            return input("> ")
        except EOFError:
            print()
            return None
        except KeyboardInterrupt:
            print("\n[Ctrl-C clears the line; Ctrl-D or /exit quits]")


class Screen:
    """Shows the agent's events, and keeps the text of the model turn in progress (what Ctrl-C keeps)."""

    def __init__(self, out):
        self.out = out
        self.partial = ""

    def show(self, event) -> None:
        out = self.out
        if event.kind == "text":
            self.partial += event.text  # first: Ctrl-C right after the write must still find it kept
            out.write(event.text)
        elif event.kind == "call":
            self.partial = ""
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


class Conversation:
    """The history, the commands, and the context budget (prompt tokens that leave room for a reply)."""

    def __init__(self, agent, budget: int, system: str | None, screen: Screen):
        self.agent, self.budget, self.system, self.screen = agent, budget, system, screen
        self.messages = self.fresh()

    def fresh(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def command(self, text: str) -> bool:
        """Run a /command; False to quit."""
        command, _, rest = text.partition(" ")
        if command == "/exit":
            return False
        if command == "/reset":
            self.messages = self.fresh()
            print("[conversation reset]")
        elif command == "/system":
            self.system = rest.strip() or None
            self.messages = self.fresh()
            print(f"[system prompt {'set' if self.system else 'cleared'}; conversation reset]")
        elif command == "/history":
            tokens = len(self.agent.prompt_ids(self.messages))
            print(f"[{len(self.messages)} messages, {tokens:,} prompt tokens of {self.budget:,}]")
            for m in self.messages:
                print(f"[{m['role']}] {m.get('content') or ''}")
        else:
            print(f"[unknown command {command}; {HELP}]")
        return True

    def fit(self) -> bool:
        """Drop the oldest exchanges until the prompt fits the budget, saying so; False if the last message
        alone does not fit (it is then taken back)."""
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        dropped = 0
        while len(self.agent.prompt_ids(self.messages)) > self.budget:
            users = [i for i in range(first, len(self.messages)) if self.messages[i]["role"] == "user"]
            if len(users) < 2:
                n = len(self.agent.prompt_ids(self.messages))
                self.messages.pop()
                print(f"[your message does not fit: {n:,} prompt tokens, the context leaves {self.budget:,} "
                      "for the prompt; not sent]")
                return False
            del self.messages[users[0]:users[1]]
            dropped += 1
        if dropped:
            print(f"[context: the oldest {dropped} exchange{'s' if dropped > 1 else ''} dropped to keep the prompt "
                  f"within {self.budget:,} tokens]")
        return True

    def say(self, text: str) -> None:
        """One user turn: fit the context, answer; Ctrl-C stops the reply and keeps what was shown of it."""
        self.messages.append({"role": "user", "content": text})
        if not self.fit():
            return
        self.screen.partial = ""
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.agent.run(self.messages)
        except KeyboardInterrupt:
            kept = self.screen.partial
            if self.messages[-1]["role"] == "assistant" or not kept.strip():
                if self.messages[-1]["role"] == "user":
                    self.messages.pop()  # nothing of the reply: the turn is taken back
                print("\n[reply stopped; the conversation is kept without this turn]")
            else:
                self.messages.append({"role": "assistant", "content": kept})
                print("\n[reply stopped; the conversation is kept, with the reply so far]")
            return
        for w in caught:  # as one bracketed line, never Python's file:line warning
            print(f"[warning] {w.message}")

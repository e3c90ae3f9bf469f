"""`ilm <stage> <verb>`: a table of subcommands, nothing else.

Each stage's CLI module is imported only when that stage is asked for, so `ilm --help` stays fast and a
stage's heavy dependencies never load for another stage. A stage module exposes
`register(parser: argparse.ArgumentParser) -> None`, which adds its verbs and sets `func` on each.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# stage name -> (module with `register`, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "demo": ("ilm.demo", "run the whole recipe, as far as it exists, on the built-in corpus, on CPU"),
    "model": ("ilm.model.cli", "model presets, parameter/FLOP counts, checkpoint conversion"),
    "generate": ("ilm.model.cli_generate", "generate from a checkpoint (text or ids)"),
    "tokenizer": ("ilm.tokenizer.cli", "build, train, encode and render with the InternLM2 tokenizer"),
    "data": ("ilm.data.cli", "run the pretraining-data pipeline and report its funnel"),
    "pretrain": ("ilm.train.cli_pretrain", "tokenize into shards; multi-stage pretraining from a TOML recipe"),
    "sft": ("ilm.train.cli_sft", "supervised fine-tuning on ChatML conversations (loss on assistant tokens)"),
    "rm": ("ilm.train.cli_rm", "conditional reward model: train (focal ranking + log barrier), score"),
    "rlhf": ("ilm.train.rlhf.cli", "online RLHF: PPO steered by the conditional reward model"),
    "chat": ("ilm.agent.cli", "chat with a checkpoint in the terminal, with tools and a sandboxed code interpreter"),
    "serve": ("ilm.serve.cli", "an OpenAI-compatible HTTP server with continuous batching"),
    "eval": ("ilm.eval.cli", "evaluate a checkpoint: perplexity, tasks, Needle in a Haystack"),
    "report": ("ilm.report.cli", "one self-contained HTML page of a run's evidence"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<11} {text}" for name, (_, text) in STAGES.items())
    return argparse.ArgumentParser(
        prog="ilm",
        description="ilm: the InternLM2 training recipe.\n\nstages:\n" + lines,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="ilm <stage> [<verb>] [options]",
        epilog="A mistake (a missing file, a directory where a file is expected, a bad recipe value) prints one\n"
               "line `error: ...` and exits 2; set ILM_DEBUG=1 to see the Python traceback as well.",
    )


def user_error(err: BaseException) -> str | None:
    """The one-line message for a user's mistake, or None for anything else (a bug keeps its traceback).

    Mistakes are what the project raises for bad input (ValueError and its subclasses: RecipeError,
    CheckpointError, ResumeError, ShardError, ...), files that are missing or of the wrong kind (OSError),
    and the data pipeline's own input / per-shard errors."""
    user = [OSError, ValueError]
    for module, name in (("ilm.data.executor", "PipelineError"), ("ilm.data.io", "InputError")):
        if module in sys.modules:
            user.append(getattr(sys.modules[module], name))
    if not isinstance(err, tuple(user)):
        return None
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        kind = {IsADirectoryError: "is a directory, not a file", NotADirectoryError: "is not a directory",
                FileNotFoundError: "not found"}
        text = kind.get(type(err), err.strerror)
        if isinstance(err, FileExistsError) and os.path.isfile(err.filename):
            text = "is a file, where a directory is expected"
        return f"{err.filename}: {text}" + (f" ({err.filename2})" if err.filename2 else "")
    return str(err) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from ilm import __version__

        print(__version__)
        return 0
    stage = argv[0]
    if stage not in STAGES:
        _top_parser().error(f"unknown stage {stage!r}; choose from: {', '.join(STAGES)}")
    module_name, text = STAGES[stage]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"ilm {stage}: this stage is not built yet ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"ilm {stage}", description=text)
    module.register(parser)
    args = parser.parse_args(argv[1:])
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `ilm ... | head -1`: the reader has what it wanted; no error, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return 141  # 128 + SIGPIPE, as a command killed by the broken pipe exits
    except KeyboardInterrupt:
        if os.environ.get("ILM_DEBUG"):
            raise
        print(f"ilm {stage}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = user_error(err)
        if message is None or os.environ.get("ILM_DEBUG"):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())

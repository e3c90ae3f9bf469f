"""The agent loop: model -> tool call -> execute -> environment message -> model, until a final answer.

The model side is a callable `(prompt_ids, sampling) -> iterable of token ids` (`TokenModel`), so tests
drive the loop with a scripted stand-in; `GenerateModel` is the real one over `generate_stream`. The
model's output is parsed from ids (`tokenizer.parse`), never from text, so a user who types
`<|action_start|>` gets ordinary characters that no parse can take for a call. Every failure (a
malformed action, arguments that are not JSON or do not fit the schema, an unknown tool, an exception,
a timeout, a missing interpreter) becomes an environment message the model reads on its next turn.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ilm.agent.sandbox import Sandbox
from ilm.agent.tools import ToolRegistry, environment_message
from ilm.model.generate import Sampling
from ilm.tokenizer.layout import ACTION_START

INTERPRETER_PROMPT = (
    "You can run Python code in a sandboxed Jupyter-like interpreter: variables persist between calls, "
    "there is no network, and only the current directory is writable. Put the code in a fenced python "
    "block after <|action_start|><|interpreter|>."
)


class TokenModel(Protocol):
    def __call__(self, prompt_ids: list[int], sampling: Sampling) -> Iterable[int]: ...


class GenerateModel:
    """An ilm model as a `TokenModel`: KV-cached decoding of one prompt, token by token."""

    def __init__(self, model: Any):
        self.model = model

    def __call__(self, prompt_ids: list[int], sampling: Sampling) -> Iterator[int]:
        from ilm.model.generate import generate_stream

        for step in generate_stream(self.model, [prompt_ids], sampling):
            if step[0] is None:
                return
            yield step[0]


@dataclass
class Event:
    """What the loop did, for a caller to show: text deltas, calls, results, errors, the end."""

    kind: str  # "text" | "call" | "result" | "error" | "final" | "max_turns"
    text: str = ""
    data: dict = field(default_factory=dict)


class Agent:
    """Runs turns of one conversation; `messages` is the history (OpenAI-style dicts), extended in place."""

    def __init__(self, model: TokenModel, tokenizer: Any, tools: ToolRegistry | None = None,
                 sandbox: Sandbox | None = None, sampling: Sampling | None = None, max_turns: int = 6,
                 on_event: Callable[[Event], None] | None = None):
        self.model, self.tok = model, tokenizer
        self.tools, self.sandbox = tools, sandbox
        sampling = sampling or Sampling()
        if sampling.stop_ids is None:
            sampling = dataclasses.replace(sampling, stop_ids=tuple(tokenizer.stop_ids))
        self.sampling = sampling
        self.max_turns = max_turns
        self.on_event = on_event or (lambda e: None)

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """The conversation with the tools and the interpreter declared, ending in the assistant header."""
        messages = list(messages)
        if self.sandbox is not None:
            at = 1 if messages and messages[0].get("role") == "system" and not messages[0].get("name") else 0
            messages.insert(at, {"role": "system", "name": "interpreter", "content": INTERPRETER_PROMPT})
        tools = self.tools.openai_tools() if self.tools else None
        return self.tok.render(messages, tools=tools, add_generation_prompt=True).ids

    def _generate(self, ids: list[int]) -> list[int]:
        """The model's reply ids, streaming the plain text before any action as "text" events."""
        out: list[int] = []
        shown, streaming = "", True
        action = self.tok.control_ids[ACTION_START]
        for token in self.model(ids, self.sampling):
            out.append(token)
            if token == action and streaming:  # the call is shown parsed, not as text; flush what was held
                streaming = False
                text = self.tok.decode(out[:-1], skip_special=True)
                if len(text) > len(shown):
                    self.on_event(Event("text", text[len(shown):]))
            if streaming:  # decode the tail whole so multi-byte characters come out whole
                text = self.tok.decode(out, skip_special=True)
                if not text.endswith("\ufffd") and len(text) > len(shown):
                    self.on_event(Event("text", text[len(shown):]))
                    shown = text
            if token in self.sampling.stop_ids:
                break
        if streaming:  # what was held back waiting for the rest of a character that never came
            text = self.tok.decode(out, skip_special=True)
            if len(text) > len(shown):
                self.on_event(Event("text", text[len(shown):]))
        return out

    def run(self, messages: list[dict]) -> list[dict]:
        """Answer the conversation's last turn; append (and return) the assistant/environment messages."""
        new: list[dict] = []
        for _ in range(self.max_turns):
            try:
                out = self._generate(self.prompt_ids(messages))
            except ValueError as err:  # e.g. the conversation no longer fits the context
                self.on_event(Event("error", f"the model could not answer: {err}"))
                return new
            reply = self.tok.parse(out)
            message = reply.to_message()
            messages.append(message)
            new.append(message)
            results = self._act(reply)
            if not results:
                self.on_event(Event("final", reply.content, {"message": message}))
                return new
            messages.extend(results)
            new.extend(results)
        self.on_event(Event("max_turns", f"stopped after {self.max_turns} model turns without a final answer"))
        return new

    def _act(self, reply: Any) -> list[dict]:
        """Environment messages for everything the reply asked for (or got wrong)."""
        results = []
        for error in reply.errors:
            results.append(environment_message(f"error: {error}"))
            self.on_event(Event("error", error))
        for call in reply.tool_calls:
            self.on_event(Event("call", f"{call['name']}({_short(call['parameters'])})", dict(call)))
            if self.tools is None:
                msg = environment_message(f"error: no tools are available; {call['name']!r} was not run")
            else:
                msg = self.tools.call(call["name"], call["parameters"])
            results.append(msg)
            self.on_event(Event("result", msg["content"], {"name": "plugin"}))
        if reply.code is not None:
            self.on_event(Event("call", reply.code, {"type": "interpreter", "code": reply.code}))
            if self.sandbox is None:
                text = "error: no code interpreter is available; the code was not run"
            else:
                text = self.sandbox.run(reply.code).text
            results.append(environment_message(text, name="interpreter"))
            self.on_event(Event("result", text, {"name": "interpreter"}))
        return results


def _short(params: Any, limit: int = 200) -> str:
    text = params if isinstance(params, str) else json.dumps(params, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."

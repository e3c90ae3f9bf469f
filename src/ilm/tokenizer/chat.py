"""InternLM2 chat format (ChatML + environment role, docs/recipe.md, Chat format): render, loss mask, parse.

Messages are OpenAI-style dicts:

    {"role": "system" | "user" | "assistant" | "environment" | "tool",
     "content": str | None | dict | list,      # dict/list (tool results) are written as JSON
     "name": str,                              # optional; "plugin"/"interpreter" -> the control tokens
     "tool_calls": [                           # assistant only
        {"type": "function", "function": {"name": ..., "arguments": dict | JSON string}},
        {"name": ..., "parameters": dict},     # the InternLM2 spelling is accepted too
        {"type": "interpreter", "code": "print(1)"}]}

rendered as (one line per piece; `\\n` are real newlines):

    <s><|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>system name=<|plugin|>\\n[{tool schemas as JSON}]<|im_end|>\\n     (from `tools=`)
    <|im_start|>user\\n{text}<|im_end|>\\n
    <|im_start|>assistant\\n{text}<|action_start|><|plugin|>\\n{"name": ..., "parameters": {...}}<|action_end|><|im_end|>\\n
    <|im_start|>environment name=<|plugin|>\\n{result}<|im_end|>\\n                 ("tool" role -> this)
    <|im_start|>assistant\\n{text}<|action_start|><|interpreter|>\\n```python\\n{code}\\n```<|action_end|><|im_end|>\\n
    <|im_start|>assistant\\n                                                       (add_generation_prompt)

The tool declaration goes right after a leading (unnamed) system message, else first. An
`environment` message without a name gets `name=<|plugin|>`. Plain conversations render byte for byte
as the released InternLM2 template (`RELEASED_TEMPLATE`); `CHAT_TEMPLATE` is the Jinja twin of
`render_text` that `save()` puts in tokenizer_config.json for `apply_chat_template`.

Only the renderer emits control tokens: every piece of content (text, names, tool JSON, code) is
encoded as ordinary text, so `<|im_start|>` typed by a user is ordinary characters. The loss mask is 1
on assistant tokens (text, tool call, the closing <|im_end|>) and 0 elsewhere (headers, the newline
after <|im_end|>, every other role). A token that straddles a masked/unmasked boundary (text runs
between control tokens are encoded whole, as `AutoTokenizer` does) is trained if any of its
characters is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ilm.tokenizer.layout import ACTION_END, ACTION_START, BOS, EOS, IM_END, IM_START, INTERPRETER, PLUGIN

ROLES = ("system", "user", "assistant", "environment", "tool")
_NAMES = {"plugin": PLUGIN, PLUGIN: PLUGIN, "interpreter": INTERPRETER, INTERPRETER: INTERPRETER}

RELEASED_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DECLARE = (
    "{%- set ns.fns = [] -%}{%- for t in tools -%}"
    "{%- set ns.fns = ns.fns + [t.function if t.function is defined else t] -%}{%- endfor -%}"
    "{{- '<|im_start|>system name=<|plugin|>\n' + (ns.fns | tojson) + '<|im_end|>\n' -}}"
    "{%- set ns.declared = true -%}"
)
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(declared=false, fns=[]) -%}"
    "{%- for message in messages -%}"
    "{%- set plain_system = message.role == 'system' and not message.name -%}"
    "{%- if tools and not ns.declared and not (loop.first and plain_system) -%}" + _DECLARE + "{%- endif -%}"
    "{%- set role = message.role -%}"
    "{%- set name = message.name if message.name else '' -%}"
    "{%- if role == 'tool' -%}{%- set role = 'environment' -%}{%- set name = '<|plugin|>' -%}{%- endif -%}"
    "{%- if role == 'environment' and not name -%}{%- set name = '<|plugin|>' -%}{%- endif -%}"
    "{%- if name == 'plugin' -%}{%- set name = '<|plugin|>' -%}"
    "{%- elif name == 'interpreter' -%}{%- set name = '<|interpreter|>' -%}{%- endif -%}"
    "{{- '<|im_start|>' + role + (' name=' + name if name else '') + '\n' -}}"
    "{%- if message.content is not defined or message.content is none -%}"
    "{%- elif message.content is string -%}{{- message.content -}}"
    "{%- else -%}{{- message.content | tojson -}}{%- endif -%}"
    "{%- if message.tool_calls -%}{%- for call in message.tool_calls -%}"
    "{%- if call.type is defined and call.type == 'interpreter' -%}"
    "{{- '<|action_start|><|interpreter|>\n```python\n' + call.code + '\n```<|action_end|>' -}}"
    "{%- else -%}"
    "{%- set f = call.function if call.function is defined else call -%}"
    "{%- if f.arguments is defined -%}{%- set args = f.arguments -%}"
    "{%- elif f.parameters is defined -%}{%- set args = f.parameters -%}"
    "{%- else -%}{%- set args = {} -%}{%- endif -%}"
    "{{- '<|action_start|><|plugin|>\n{\"name\": ' + (f.name | tojson) + ', \"parameters\": ' + "
    "(args if args is string else (args | tojson)) + '}<|action_end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if tools and not ns.declared -%}" + _DECLARE + "{%- endif -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class Piece:
    """One piece of a rendered conversation: a control token or ordinary text, trained or not."""

    text: str
    control: bool = False
    train: bool = False


@dataclass
class Rendered:
    """A rendered conversation: the text, its ids and the SFT loss mask (1 = trained)."""

    text: str
    ids: list[int]
    mask: list[int]

    def table(self, tok: Any) -> str:
        """One line per token: index, id, mask, token text (the `ilm tokenizer render` view)."""
        lines = []
        for n, (i, m) in enumerate(zip(self.ids, self.mask)):
            lines.append(f"{n:5d} {i:7d} {m} {tok.decode([i])!r}")
        return "\n".join(lines)


@dataclass
class Reply:
    """A model's output split into text, tool calls (name + parameters) and interpreter code."""

    content: str
    tool_calls: list[dict] = field(default_factory=list)
    code: str | None = None
    errors: list[str] = field(default_factory=list)

    def to_message(self) -> dict:
        """The assistant message that renders back to this reply."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        calls: list[dict] = [{"name": c["name"], "parameters": c["parameters"]} for c in self.tool_calls]
        if self.code is not None:
            calls.append({"type": "interpreter", "code": self.code})
        if calls:
            msg["tool_calls"] = calls
        return msg


def _json(x: Any) -> str:
    return json.dumps(x, ensure_ascii=False)  # what transformers' `tojson` filter writes


def _content(message: dict, index: int) -> str:
    c = message.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, (dict, list, int, float, bool)):
        return _json(c)
    raise ValueError(f"message {index}: content must be a string, None or JSON data, not {type(c).__name__}")


def _call_pieces(call: dict, index: int) -> list[Piece]:
    if call.get("type") == "interpreter":
        code = call.get("code")
        if not isinstance(code, str):
            raise ValueError(f"message {index}: an interpreter call needs a string 'code'")
        return [Piece(ACTION_START, True, True), Piece(INTERPRETER, True, True),
                Piece("\n```python\n" + code + "\n```", False, True), Piece(ACTION_END, True, True)]
    f = call.get("function", call)
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise ValueError(f"message {index}: a tool call needs a function name")  # noqa: TRY004 (bad data)
    args = f["arguments"] if "arguments" in f else f.get("parameters", {})
    body = '{"name": ' + _json(f["name"]) + ', "parameters": ' + (args if isinstance(args, str) else _json(args)) + "}"
    return [Piece(ACTION_START, True, True), Piece(PLUGIN, True, True), Piece("\n" + body, False, True),
            Piece(ACTION_END, True, True)]


def _declaration(tools: list) -> list[Piece]:
    fns = [t["function"] if isinstance(t, dict) and "function" in t else t for t in tools]
    return [Piece(IM_START, True), Piece("system name="), Piece(PLUGIN, True), Piece("\n" + _json(fns)),
            Piece(IM_END, True), Piece("\n")]


def conversation_pieces(
    messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False, bos: bool = True
) -> list[Piece]:
    """The conversation as control/text pieces with their loss-mask flags (see module docstring)."""
    pieces: list[Piece] = [Piece(BOS, True)] if bos else []
    declared = not tools
    for index, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {index}: role must be one of {ROLES}, got {m!r:.80}")
        role, name = m["role"], m.get("name") or ""
        if not declared and not (index == 0 and role == "system" and not name):
            pieces += _declaration(tools)
            declared = True
        if role == "tool":
            role, name = "environment", PLUGIN
        if role == "environment" and not name:
            name = PLUGIN
        if not isinstance(name, str):
            raise ValueError(f"message {index}: name must be a string")  # noqa: TRY004 (bad data)
        train = role == "assistant"
        pieces += [Piece(IM_START, True), Piece(role + (" name=" if name else ""))]
        if name in _NAMES:
            pieces.append(Piece(_NAMES[name], True))
        elif name:
            pieces.append(Piece(name))
        pieces += [Piece("\n"), Piece(_content(m, index), False, train)]
        calls = m.get("tool_calls") or []
        if calls and role != "assistant":
            raise ValueError(f"message {index}: only assistant messages carry tool_calls")
        for call in calls:
            pieces += _call_pieces(call, index)
        pieces += [Piece(IM_END, True, train), Piece("\n")]
    if not declared:
        pieces += _declaration(tools)
    if add_generation_prompt:
        pieces += [Piece(IM_START, True), Piece("assistant\n")]
    return [p for p in pieces if p.text]


def render_text(
    messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False, bos: bool = True
) -> str:
    """The rendered conversation as text (no tokenizer needed)."""
    return "".join(p.text for p in conversation_pieces(messages, tools, add_generation_prompt, bos))


def render(
    tok: Any, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False, bos: bool = True
) -> Rendered:
    """Text, ids and loss mask of a conversation; `tok` is an HFTokenizer or SentencePieceTokenizer."""
    pieces = conversation_pieces(messages, tools, add_generation_prompt, bos)
    ids: list[int] = []
    mask: list[int] = []
    run: list[Piece] = []

    def flush() -> None:
        if not run:
            return
        text = "".join(p.text for p in run)
        trained = bytearray()
        for p in run:
            trained += (b"\x01" if p.train else b"\x00") * len(p.text)
        run_ids, offsets = tok.encode_with_offsets(text)
        for i, (s, e) in zip(run_ids, offsets):
            ids.append(i)
            span = trained[s:e] if e > s else trained[min(s, len(text) - 1) : min(s, len(text) - 1) + 1]
            mask.append(1 if any(span) else 0)
        run.clear()

    for p in pieces:
        if p.control:
            flush()
            ids.append(tok.control_ids[p.text])
            mask.append(1 if p.train else 0)
        else:
            run.append(p)
    flush()
    return Rendered("".join(p.text for p in pieces), ids, mask)


def call_header_ids(tok: Any, name: str) -> list[int]:
    """The ids that start a call of tool `name` exactly as `render` writes one, up to its arguments:
    `<|action_start|><|plugin|>` then the text `\\n{"name": NAME, "parameters":`, cut where the tokenisation
    of the whole call no longer depends on the arguments (a server that forces a named call writes these
    and lets the model write the rest; a header that ended in a lone space token would be one that SFT data
    never shows, since the space merges into the token after it)."""
    text = '\n{"name": ' + _json(name) + ', "parameters":'
    runs = [tok.encode_with_offsets(text + tail)[0] for tail in (' {}}', ' {"a": 1}}', ' {"city": "x"}}', " 1}")]
    common: list[int] = []
    for ids in zip(*runs):
        if len(set(ids)) > 1:
            break
        common.append(ids[0])
    while common and len(tok.decode(common)) > len(text):  # never past the fixed text
        common.pop()
    return [tok.control_ids[ACTION_START], tok.control_ids[PLUGIN], *common]


_CONTROL_RE = re.compile("|".join(re.escape(t) for t in (IM_START, IM_END, ACTION_START, ACTION_END, PLUGIN,
                                                         INTERPRETER, EOS)))
_FENCE = re.compile(r"\A\s*```[\w+.-]*[ \t]*\n(.*?)\n?```\s*\Z", re.DOTALL)


def _segments(tok: Any, output: str | list[int]) -> list[tuple[bool, str]]:
    """(is_control, text) pieces of raw model output given as text or ids."""
    out: list[tuple[bool, str]] = []
    if isinstance(output, str):
        pos = 0
        for m in _CONTROL_RE.finditer(output):
            out += [(False, output[pos : m.start()]), (True, m.group())]
            pos = m.end()
        out.append((False, output[pos:]))
        return [s for s in out if s[1]]
    if tok is None:
        raise ValueError("parsing ids needs the tokenizer")
    names = {i: n for n, i in tok.control_ids.items()}
    run: list[int] = []
    for i in output:
        if i in names:
            if run:
                out.append((False, tok.decode(run)))
                run = []
            out.append((True, names[i]))
        else:
            run.append(i)
    if run:
        out.append((False, tok.decode(run)))
    return out


def parse_reply(output: str | list[int], tok: Any = None) -> Reply:
    """Split a model's raw output (text with control tokens, or ids) into text + tool calls / code.

    Stops at <|im_end|> or </s>. Malformed actions are reported in `errors`, never raised: this runs on
    sampled text.
    """
    reply = Reply(content="")
    segs = _segments(tok, output)
    text: list[str] = []
    i = 0
    while i < len(segs):
        control, s = segs[i]
        i += 1
        if control and s in (IM_END, EOS):
            break
        if not control:
            text.append(s)
            continue
        if s != ACTION_START:
            continue  # a stray control token carries no text
        kind = segs[i][1] if i < len(segs) and segs[i][0] else None
        if kind not in (PLUGIN, INTERPRETER):
            reply.errors.append("<|action_start|> not followed by <|plugin|> or <|interpreter|>")
            continue
        i += 1
        body: list[str] = []
        while i < len(segs) and not (segs[i][0] and segs[i][1] in (ACTION_END, IM_END, EOS)):
            body.append(segs[i][1])
            i += 1
        if i < len(segs) and segs[i][1] == ACTION_END:
            i += 1
        else:
            reply.errors.append("action not closed by <|action_end|>")
        raw = "".join(body)
        raw = raw.removeprefix("\n")
        if kind == INTERPRETER:
            m = _FENCE.match(raw)
            code = m.group(1) if m else raw
            reply.code = code if reply.code is None else reply.code + "\n" + code
            continue
        try:
            call = json.loads(raw)
        except json.JSONDecodeError as err:
            reply.errors.append(f"tool call is not JSON: {err}")
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            reply.errors.append("tool call JSON lacks a string 'name'")
            continue
        params = call.get("parameters", call.get("arguments", {}))
        reply.tool_calls.append({"name": call["name"], "parameters": params})
    reply.content = "".join(text)
    return reply


class ChatMixin:
    """Chat methods shared by the tokenizer backends (they provide control_ids, encode_with_offsets, decode)."""

    control_ids: dict[str, int]

    def render(
        self, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False, bos: bool = True
    ) -> Rendered:
        return render(self, messages, tools, add_generation_prompt, bos)

    def render_text(
        self, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False, bos: bool = True
    ) -> str:
        return render_text(messages, tools, add_generation_prompt, bos)

    def parse(self, output: str | list[int]) -> Reply:
        return parse_reply(output, self)

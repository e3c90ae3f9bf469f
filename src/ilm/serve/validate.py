"""Request checks at the HTTP edge: every value a client sends is checked here, before the engine sees it.

Bodies are validated by hand rather than by a model class so every mistake gets an OpenAI-shaped error
(`{"error": {"message", "type", "param", "code"}}`) that names the field. Hostile but well-typed values are
refused here too: NaN / Infinity (Python's `json` accepts both literals, and 1e999 reads as inf), numbers
outside what the engine can take (a seed torch cannot hold), strings that are not valid Unicode (a lone
surrogate such as "\\ud800" is legal JSON but cannot be encoded as UTF-8, so no tokenizer takes it), and
bodies past the size limit.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
from starlette.responses import JSONResponse

from ilm.serve.request import MIN_TEMPERATURE, SEED_RANGE

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
         "environment": "environment"}
MAX_STOP_CHARS = 256

_TOOL_SCHEMA = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                "description": {"type": "string"},
                "parameters": {"type": "object"},
                "strict": {"type": ["boolean", "null"]},
            },
        },
    },
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.kind, self.headers)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


# ----------------------------------------------------------------------------- the body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (numbers must be finite)")


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"the number {text} is out of range (numbers must be finite)")
    return x


def strict_json(data: bytes | str) -> Any:
    """`json.loads` that refuses NaN, Infinity and numbers that overflow to inf (ApiError 400)."""
    try:
        return json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an int past Python's digit limit
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None


def bad_text(obj: Any) -> str | None:
    """The path of the first string (or key) in `obj` that is not valid Unicode (a lone surrogate), else None."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        x, path = stack.pop()
        if isinstance(x, str):
            if not x.isascii():
                try:
                    x.encode("utf-8")
                except UnicodeEncodeError:
                    return path or "body"
        elif isinstance(x, dict):
            for k, v in x.items():
                stack += [(k, path or "body"), (v, f"{path}.{k}" if path else str(k))]
        elif isinstance(x, list):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(x)]
    return None


def check_text(obj: Any, where: str = "") -> None:
    path = bad_text(obj)
    if path is not None:
        param = f"{where}.{path}" if where and path != "body" else (where or path)
        raise ApiError(400, f"{param} is not valid Unicode (a lone surrogate?); send UTF-8 text", param)


# ----------------------------------------------------------------------------- fields


def get(body: dict, name: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ApiError(400, f"'{name}' must be {_names(types)}, got a boolean", name)
    if not isinstance(value, types):
        raise ApiError(400, f"'{name}' must be {_names(types)}, got {type(value).__name__}", name)
    return value


def number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] ((lo, hi] with `lo_open`) as a float (huge ints are refused, not overflowed)."""
    value = get(body, name, (int, float), default)
    bound = f"{'(' if lo_open else '['}{lo}, {hi}]"
    if not (lo < value <= hi if lo_open else lo <= value <= hi):
        shown = value if isinstance(value, float) or abs(value) < 10**30 else f"an integer of {len(str(value))} digits"
        raise ApiError(400, f"'{name}' must be in {bound}, got {shown}", name)
    return float(value)


def temperature(body: dict) -> float:
    """In [0, 2]; below MIN_TEMPERATURE it is greedy (0): dividing logits by 1e-45 overflows to NaN."""
    t = number(body, "temperature", 1.0, 0, 2)
    return 0.0 if t < MIN_TEMPERATURE else t


def seed(body: dict) -> int | None:
    s = get(body, "seed", int, None)
    if s is not None and not SEED_RANGE[0] <= s <= SEED_RANGE[1]:
        shown = s if abs(s) < 10**30 else f"an integer of {len(str(s))} digits"
        raise ApiError(400, f"'seed' must be in [-2**63, 2**64 - 1], got {shown}", "seed")
    return s


def _names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
                        "list": "an array", "dict": "an object"}.get(t.__name__, t.__name__) for t in types)


def stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or len(value) > 4:
        raise ApiError(400, "'stop' must be a string or an array of up to 4 strings", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in value):
        raise ApiError(400, f"each stop string may have at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(s for s in value if s)


def options(body: dict, name: str) -> dict:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"'{name}' must be an object", name)
    return value


# ----------------------------------------------------------------------------- messages and tools


def _text(content: Any, where: str) -> str | None:
    """OpenAI content: a string, null, or a list of {"type": "text", "text": ...} parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}.content[{i}]: only text parts are supported", f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where}.content must be a string, null or a list of text parts", f"{where}.content")


def messages(body: dict) -> list[dict]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty array of messages", "messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(400, f"{where}.role {role!r:.40} is not one of {sorted(ROLES)}", f"{where}.role")
        msg: dict[str, Any] = {"role": ROLES[role], "content": _text(m.get("content"), where)}
        if role in ("system", "developer", "user") and msg["content"] is None:
            raise ApiError(400, f"{where}.content is required for role {role!r}", f"{where}.content")
        if isinstance(m.get("name"), str) and role in ("user", "environment"):
            msg["name"] = m["name"]
        calls = m.get("tool_calls")
        if calls:
            if role != "assistant" or not isinstance(calls, list):
                raise ApiError(400, f"{where}.tool_calls: only assistant messages carry a list of tool calls",
                               f"{where}.tool_calls")
            msg["tool_calls"] = [_call_in(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
        out.append(msg)
    return out


def _call_in(call: Any, where: str) -> dict:
    f = call.get("function") if isinstance(call, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise ApiError(400, f"{where} needs function.name", where)
    args = f.get("arguments", "{}")
    if isinstance(args, str):  # a JSON string inside the JSON body: checked as strictly as the body
        try:
            args = strict_json(args or "{}")
        except ApiError as err:
            raise ApiError(400, f"{where}.function.arguments: {err.message}", f"{where}.function.arguments") from None
        check_text(args, f"{where}.function.arguments")
    return {"type": "function", "function": {"name": f["name"], "arguments": args}}


def tools(value: Any) -> list[dict]:
    """Each tool has OpenAI's shape and its `parameters` is a valid JSON schema, else 400."""
    if not isinstance(value, list):
        raise ApiError(400, "'tools' must be an array", "tools")
    for i, tool in enumerate(value):
        try:
            jsonschema.validate(tool, _TOOL_SCHEMA)
        except jsonschema.ValidationError as err:
            raise ApiError(400, f"tools[{i}] is not a function tool: {err.message}", f"tools[{i}]") from None
        schema = tool["function"].get("parameters")
        if schema is not None:
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as err:
                raise ApiError(400, f"tools[{i}].function.parameters is not a valid JSON schema: {err.message}",
                               f"tools[{i}].function.parameters") from None
    names = [t["function"]["name"] for t in value]
    if len(set(names)) != len(names):
        raise ApiError(400, "tool names must be unique", "tools")
    return value


def tool_choice(body: dict, declared: list[dict] | None) -> str | None:
    """'none' | 'auto' -> None; a named function -> its name (it must be among the tools)."""
    choice = body.get("tool_choice", "auto" if declared else "none")
    if isinstance(choice, dict):
        f = choice.get("function") if choice.get("type") == "function" else None
        name = f.get("name") if isinstance(f, dict) else None
        if not isinstance(name, str):
            raise ApiError(400, "tool_choice must be 'none', 'auto' or {'type': 'function', 'function': "
                                "{'name': ...}}", "tool_choice")
        if not declared or name not in [t["function"]["name"] for t in declared]:
            raise ApiError(400, f"tool_choice names {name!r:.80}, which is not among the tools", "tool_choice")
        return name
    if choice == "required":
        raise ApiError(400, "tool_choice 'required' is not supported; name the tool instead", "tool_choice")
    if choice not in ("none", "auto"):
        raise ApiError(400, f"tool_choice {choice!r:.80} is not one of 'none', 'auto' or a named function",
                       "tool_choice")
    return None

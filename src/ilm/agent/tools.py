"""Tools: a typed, documented Python function becomes a tool the model can call.

    registry = ToolRegistry()

    @registry.tool
    def weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        \"\"\"Current weather of a city.

        Args:
            city: the city's name, e.g. "Paris".
            unit: temperature unit.
        \"\"\"

The JSON schema comes from the type hints (str, int, float, bool, None, list[...], dict[str, ...],
Literal, Optional / `X | None`, unions; a parameter without a default is required) and the docstring
(its first paragraph describes the tool, an `Args:` section the parameters). `openai_tools()` is the
OpenAI `tools` list that `ilm.tokenizer.chat.render(..., tools=)` declares to the model. `call(name,
arguments)` validates the arguments with `jsonschema` and runs the function; whatever goes wrong
(unknown tool, arguments that are not JSON or do not fit the schema, an exception, a timeout) comes back
as an environment message saying so, never as an exception: the model reads it and tries again.
"""

from __future__ import annotations

import ast
import concurrent.futures
import inspect
import json
import math
import operator
import re
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    fn: Callable[..., Any]

    def openai(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def environment_message(content: Any, name: str = "plugin") -> dict:
    """A tool's or the interpreter's result as the chat format's environment turn."""
    if not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False, default=str)
    return {"role": "environment", "name": name, "content": content}


# ----------------------------------------------------------------------------- schema from hints


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def type_schema(hint: Any) -> dict:
    """JSON schema of one type hint; TypeError for a hint JSON cannot carry."""
    if hint is inspect.Parameter.empty or hint is Any:
        return {}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (list, tuple) or origin in (list, tuple, set, frozenset):
        item = args[0] if args else Any
        return {"type": "array", **({"items": type_schema(item)} if item is not Any else {})}
    if hint is dict or origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"dict keys must be str in a tool's hints, got {hint}")
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", **({"additionalProperties": type_schema(value)} if value is not Any else {})}
    if origin is Literal:
        kinds = {_SIMPLE.get(type(a)) for a in args}
        if None in kinds:
            raise TypeError(f"Literal values must be str, int, float, bool or None, got {hint}")
        return {"enum": list(args), **({"type": kinds.pop()} if len(kinds) == 1 else {})}
    if origin in (typing.Union, types.UnionType):
        parts = [type_schema(a) for a in args]
        simple = [p["type"] for p in parts if set(p) == {"type"} and isinstance(p["type"], str)]
        if len(simple) == len(parts):
            return {"type": simple}
        return {"anyOf": parts}
    raise TypeError(f"tool parameters need JSON types (str, int, float, bool, list, dict, Literal, Optional), got {hint}")


_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring."""
    doc = inspect.cleandoc(doc or "")
    lines = doc.splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].strip() and lines[i].strip() not in ("Args:", "Arguments:", "Parameters:"):
        summary.append(lines[i].strip())
        i += 1
    section = None
    current = None
    params_indent = 0
    for line in lines[i:]:
        stripped = line.strip()
        if re.fullmatch(r"[A-Z]\w*( \w+)?:", stripped):  # a section header: Args:, Returns:, Raises: ...
            section = stripped[:-1].lower()
            current = None
            continue
        if section not in ("args", "arguments", "parameters") or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        m = _ARG_LINE.match(line)
        if m and (current is None or indent <= params_indent):
            current, params_indent = m.group(1).lstrip("*"), indent
            params[current] = m.group(3).strip()
        elif current is not None:
            params[current] = (params[current] + " " + stripped).strip()
    return " ".join(summary), params


def function_schema(fn: Callable[..., Any]) -> tuple[str, dict]:
    """(description, parameters schema) of a function from its hints and docstring."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    description, docs = parse_docstring(fn.__doc__)
    properties: dict[str, dict] = {}
    required: list[str] = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"tool {fn.__name__}: parameter {p.name!r} must be a plain named parameter")
        schema = type_schema(hints.get(p.name, inspect.Parameter.empty))
        if p.name in docs:
            schema["description"] = docs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        else:
            try:
                json.dumps(p.default)
                schema["default"] = p.default
            except TypeError:
                pass
        properties[p.name] = schema
    params = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    jsonschema.Draft202012Validator.check_schema(params)
    return description, params


# ----------------------------------------------------------------------------- the registry


class ToolRegistry:
    """Named tools: declare them to the model (`openai_tools`) and run the model's calls (`call`)."""

    def __init__(self, timeout: float = 30.0):
        self.tools: dict[str, Tool] = {}
        self.timeout = timeout  # seconds a tool may run before the model is told it timed out

    def tool(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
             description: str | None = None) -> Any:
        """Register `fn` (usable bare, `@registry.tool`, or with options, `@registry.tool(name=...)`)."""
        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            self.add(f, name=name, description=description)
            return f
        return add(fn) if fn is not None else add

    def add(self, fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> Tool:
        name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z_][\w.-]{0,63}", name):
            raise ValueError(f"tool name {name!r} must be letters, digits, _ . - (at most 64)")
        doc, params = function_schema(fn)
        tool = Tool(name, description or doc, params, fn)
        self.tools[name] = tool
        return tool

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def openai_tools(self) -> list[dict]:
        """The OpenAI `tools` list (type "function"), as `chat.render(..., tools=)` takes it."""
        return [t.openai() for t in self.tools.values()]

    def call(self, name: str, arguments: dict | str | None) -> dict:
        """Run one call; the result (or what went wrong) as an environment message. Never raises."""
        ok, content = self.execute(name, arguments)
        return environment_message(content if ok else f"error: {content}")

    def execute(self, name: str, arguments: dict | str | None) -> tuple[bool, Any]:
        """(True, result) or (False, a sentence on what went wrong)."""
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return False, f"unknown tool {name!r}; the tools are: {known}"
        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as err:
                return False, f"the arguments of {name} are not valid JSON ({err.msg} at char {err.pos})"
        if not isinstance(arguments, dict):
            return False, f"the arguments of {name} must be a JSON object, got {type(arguments).__name__}"
        problems = sorted(jsonschema.Draft202012Validator(tool.parameters).iter_errors(arguments), key=str)
        if problems:
            said = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or 'arguments'}: {e.message}" for e in problems[:5])
            return False, f"the arguments do not fit {name}'s schema: {said}"
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tool-{name}")
        try:
            result = pool.submit(tool.fn, **arguments).result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            return False, f"{name} timed out after {self.timeout:g} s"
        except Exception as err:  # noqa: BLE001 (the model reads what went wrong)
            return False, f"{name} raised {type(err).__name__}: {err}"
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return True, result


def openai_tool_calls(calls: list[dict]) -> list[dict]:
    """Parsed calls ({"name", "parameters"}, as in `Reply.tool_calls`) as OpenAI `tool_calls` entries."""
    out = []
    for c in calls:
        params = c.get("parameters", {})
        args = params if isinstance(params, str) else json.dumps(params, ensure_ascii=False)
        out.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": c["name"], "arguments": args}})
    return out


# ----------------------------------------------------------------------------- builtin tools


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "abs": abs, "round": round, "min": min, "max": max, "floor": math.floor, "ceil": math.ceil,
    "factorial": math.factorial,
}
_CONSTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 1000 or abs(left) > 1e6 and abs(right) > 100):
            raise ValueError("exponent too large")
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int) \
                and left.bit_length() + right.bit_length() > 10000:
            raise ValueError("result too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        args = [_evaluate(a) for a in node.args]
        if node.func.id == "factorial" and args and args[0] > 1000:
            raise ValueError("factorial argument too large")
        return _FUNCS[node.func.id](*args)
    raise ValueError(f"unsupported expression: {ast.unparse(node)!r}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly as written.

    Args:
        expression: numbers with + - * / // % ** and parentheses; the functions sqrt, exp, log, log10,
            log2, sin, cos, tan, asin, acos, atan, abs, round, min, max, floor, ceil, factorial and the
            constants pi, e, tau. Example: "2 * (3 + 4) ** 2".
    """
    if len(expression) > 500:
        raise ValueError("expression longer than 500 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {err.msg}") from None
    return repr(_evaluate(tree))


def clock(timezone: str = "UTC") -> str:
    """The current date and time.

    Args:
        timezone: an IANA time zone name such as "UTC", "Europe/Paris" or "Asia/Shanghai".
    """
    from datetime import datetime
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    return datetime.now(zone).isoformat(timespec="seconds")


def builtin_tools() -> ToolRegistry:
    """The tools `ilm chat --tools builtin` offers: calculator and clock."""
    registry = ToolRegistry()
    registry.add(calculator)
    registry.add(clock)
    return registry

"""Tool schemas from hints and docstrings; every bad call becomes an environment message."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from ilm.agent.tools import ToolRegistry, builtin_tools, calculator, function_schema, openai_tool_calls


def search(query: str, limit: int = 5, tags: list[str] | None = None, exact: bool = False,
           sort: Literal["date", "score"] = "score", weights: dict[str, float] | None = None,
           threshold: float = 0.5) -> list[str]:
    """Search the notes.

    Longer text that is not part of the description.

    Args:
        query: words to look for.
        limit: at most this many results,
            counted after filtering.
        tags (list[str]): only notes with these tags.

    Returns:
        The matching notes.
    """
    return [query] * limit


def test_schema_from_hints_and_docstring():
    description, params = function_schema(search)
    assert description == "Search the notes."
    assert params["required"] == ["query"]
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "words to look for."}
    assert props["limit"] == {"type": "integer", "default": 5,
                              "description": "at most this many results, counted after filtering."}
    assert props["tags"] == {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                             "default": None, "description": "only notes with these tags."}
    assert props["exact"] == {"type": "boolean", "default": False}
    assert props["sort"] == {"enum": ["date", "score"], "type": "string", "default": "score"}
    assert props["weights"]["anyOf"][0] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["threshold"] == {"type": "number", "default": 0.5}
    assert params["additionalProperties"] is False


def test_unsupported_hints_are_refused_at_registration():
    def bad(x: set[bytes]) -> None:
        """Bad."""

    def star(*args: int) -> None:
        """Star."""

    with pytest.raises(TypeError):
        ToolRegistry().add(bad)
    with pytest.raises(TypeError):
        ToolRegistry().add(star)


def test_openai_tools_and_calls():
    registry = ToolRegistry()
    registry.add(search)
    [decl] = registry.openai_tools()
    assert decl["type"] == "function" and decl["function"]["name"] == "search"
    assert decl["function"]["description"] == "Search the notes."
    ok = registry.call("search", '{"query": "fox", "limit": 2}')
    assert ok == {"role": "environment", "name": "plugin", "content": '["fox", "fox"]'}
    assert registry.call("search", {"query": "fox", "limit": 1})["content"] == '["fox"]'
    [call] = openai_tool_calls([{"name": "search", "parameters": {"query": "fox"}}])
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {"query": "fox"}


@pytest.mark.parametrize("name, arguments, expected", [
    ("search", '{"query": "fox", "limit": ', "are not valid JSON"),
    ("search", "[1, 2]", "must be a JSON object"),
    ("search", {"limit": 3}, "'query' is a required property"),
    ("search", {"query": "fox", "limit": "three"}, "limit: 'three' is not of type 'integer'"),
    ("search", {"query": "fox", "sort": "random"}, "sort: 'random' is not one of"),
    ("search", {"query": "fox", "colour": "red"}, "Additional properties are not allowed"),
    ("lookup", {"query": "fox"}, "unknown tool 'lookup'; the tools are: search"),
])
def test_bad_calls_become_environment_messages(name, arguments, expected):
    registry = ToolRegistry()
    registry.add(search)
    message = registry.call(name, arguments)
    assert message["role"] == "environment" and message["name"] == "plugin"
    assert message["content"].startswith("error: ") and expected in message["content"], message["content"]


def test_a_tool_that_raises_or_hangs():
    import threading

    registry = ToolRegistry(timeout=0.2)
    release = threading.Event()

    @registry.tool
    def explode(n: int) -> int:
        """Divide by zero."""
        return n // 0

    @registry.tool(name="hang")
    def _hang() -> None:
        """Never return (until the test lets go)."""
        release.wait(5)

    assert registry.call("explode", {"n": 1})["content"] == "error: explode raised ZeroDivisionError: integer division or modulo by zero"
    assert registry.call("hang", {})["content"] == "error: hang timed out after 0.2 s"
    release.set()


def test_builtin_calculator_is_safe_arithmetic():
    assert calculator("2 * (3 + 4) ** 2") == "98"
    assert calculator("sqrt(16) + pi - pi") == "4.0"
    tools = builtin_tools()
    assert set(tools.tools) == {"calculator", "clock"}
    for bad in ("__import__('os').system('true')", "open('/etc/passwd')", "9 ** 9 ** 9", "(1).__class__"):
        content = tools.call("calculator", {"expression": bad})["content"]
        assert content.startswith("error: calculator raised ValueError"), content
    assert tools.call("clock", {"timezone": "UTC"})["content"].endswith("+00:00")
    assert "unknown time zone" in tools.call("clock", {"timezone": "Mars/Olympus"})["content"]

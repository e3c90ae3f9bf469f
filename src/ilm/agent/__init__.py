"""Tool use: a tool registry, a sandboxed code interpreter, the agent loop and `ilm chat`.

Imports the model and the tokenizer, never the trainers.
"""

from ilm.agent.loop import Agent, Event, GenerateModel, TokenModel
from ilm.agent.sandbox import CellResult, Limits, Sandbox
from ilm.agent.tools import Tool, ToolRegistry, builtin_tools, environment_message, openai_tool_calls

__all__ = ["Agent", "CellResult", "Event", "GenerateModel", "Limits", "Sandbox", "TokenModel", "Tool",
           "ToolRegistry", "builtin_tools", "environment_message", "openai_tool_calls"]

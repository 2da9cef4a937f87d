"""Agents: versioned specs, a prompt library, tools with permissions, MCP tools,
the JSON-protocol agent loop, runs as step trees (fork, search, replay), bundles.

Importing this package is cheap: ``mcp`` loads only when an MCP server is used.
"""

from importlib import import_module
from typing import Any

# Loaded on first use, so that opening a workspace (which imports this package's
# schema module) does not import every submodule.
_EXPORTS = {
    "AgentSpec": "spec",
    "AgentStore": "spec",
    "Approver": "loop",
    "BundleError": "bundle",
    "ChatClient": "loop",
    "Divergence": "replay",
    "ImportReport": "bundle",
    "Limits": "spec",
    "McpServerConfig": "spec",
    "ModelCallError": "loop",
    "OpenAIChatClient": "loop",
    "Prompt": "prompts",
    "PromptStore": "prompts",
    "ReplayReport": "replay",
    "Run": "runs",
    "RunResult": "loop",
    "RunStore": "runs",
    "Step": "runs",
    "Tool": "tools",
    "ToolCall": "tools",
    "ToolError": "tools",
    "ToolGrant": "spec",
    "ToolRegistry": "tools",
    "agent_tools": "loop",
    "export_agent": "bundle",
    "export_prompt": "bundle",
    "export_run": "bundle",
    "fork_run": "loop",
    "import_bundle": "bundle",
    "parse_reply": "loop",
    "render": "prompts",
    "replay_run": "replay",
    "run_agent": "loop",
    "wrap_untrusted": "tools",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)

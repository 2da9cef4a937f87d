"""Agents: versioned specs, a prompt library, tools with permissions, MCP tools,
the JSON-protocol agent loop, runs as step trees (fork, search, replay), bundles.

Importing this package is cheap: ``mcp`` loads only when an MCP server is used.
"""

from app.core.agents.bundle import (
    BundleError,
    ImportReport,
    export_agent,
    export_prompt,
    export_run,
    import_bundle,
)
from app.core.agents.loop import (
    Approver,
    ChatClient,
    ModelCallError,
    OpenAIChatClient,
    RunResult,
    agent_tools,
    fork_run,
    parse_reply,
    run_agent,
)
from app.core.agents.prompts import Prompt, PromptStore, render
from app.core.agents.replay import Divergence, ReplayReport, replay_run
from app.core.agents.runs import Run, RunStore, Step
from app.core.agents.spec import AgentSpec, AgentStore, Limits, McpServerConfig, ToolGrant
from app.core.agents.tools import Tool, ToolCall, ToolError, ToolRegistry, wrap_untrusted

__all__ = [
    "AgentSpec",
    "AgentStore",
    "Approver",
    "BundleError",
    "ChatClient",
    "Divergence",
    "ImportReport",
    "Limits",
    "McpServerConfig",
    "ModelCallError",
    "OpenAIChatClient",
    "Prompt",
    "PromptStore",
    "ReplayReport",
    "Run",
    "RunResult",
    "RunStore",
    "Step",
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolGrant",
    "ToolRegistry",
    "agent_tools",
    "export_agent",
    "export_prompt",
    "export_run",
    "fork_run",
    "import_bundle",
    "parse_reply",
    "render",
    "replay_run",
    "run_agent",
    "wrap_untrusted",
]

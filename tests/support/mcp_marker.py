"""A real MCP server (stdio) that proves it was started: it writes ``argv[1]`` first.

The security tests give it a marker path; the marker's absence shows the server
never ran.
"""

from __future__ import annotations

import textwrap

MCP_SERVER = textwrap.dedent(
    """
    import pathlib, sys
    pathlib.Path(sys.argv[1]).write_text("started")
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    app = MCPServer("fetcher")

    @app.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def shout(text: str) -> str:
        "Upper-case a text."
        return text.upper() + "!"

    app.run()
    """
)

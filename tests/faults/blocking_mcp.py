"""An agent group's own MCP server (``mcp.json``) with one tool, ``hold``, that blocks until the test lets it go:
it announces "<pid> <fifo>" on ``$FAULT_ANNOUNCE`` and waits for a line on its private fifo (``faultkit.Handshake``).
"""

from __future__ import annotations

import os
import tempfile

from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("slow")


def hold() -> str:
    """Wait until released."""
    fifo = tempfile.mktemp(prefix="held.", dir=os.environ["FAULT_DIR"])
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # held open for reading first, so the test's write never waits for us
    with open(os.environ["FAULT_ANNOUNCE"], "w") as announce:
        announce.write(f"{os.getpid()} {fifo}\n")
    os.read(fd, 16)
    os.close(fd)
    os.unlink(fifo)
    return "released"


server.add_tool(hold, description="Wait until released.", structured_output=False)

if __name__ == "__main__":
    server.run("stdio")

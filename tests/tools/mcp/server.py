"""A stateful MCP server (the official Python SDK, Streamable HTTP) as one
replica of a Deployment: its sessions live in this process's memory only.

    python3 server.py NAME IP

Binds IP on a free port and prints `{"event": "ready", "addr": "IP:PORT"}`,
then one JSON line per request of the MCP endpoint as it arrives
(`{"event": "request", "method": "GET", "session": V}`; V is the
Mcp-Session-Id the app received, null without one). The tool `visit` counts
its calls per session and answers `{"replica", "counter", "session"}`, so a
caller sees which replica served it and that the session's state carried
over. Exits when stdin closes.
"""

import json
import socket
import sys
import threading
import os

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

NAME, IP = sys.argv[1], sys.argv[2]

mcp = MCPServer(NAME)
# Per-session state, in memory: the number of `visit` calls of each session.
counters: dict[str, int] = {}


def emit(**fields):
    print(json.dumps(fields), flush=True)


@mcp.tool()
def visit(ctx: Context) -> str:
    """Counts this session's calls; names the replica that served the call."""
    # The session's id as this app received it on the request.
    session = {k.lower(): v for k, v in (ctx.headers or {}).items()}["mcp-session-id"]
    counters[session] = counters.get(session, 0) + 1
    return json.dumps({"replica": NAME, "counter": counters[session], "session": session})


def logged(app):
    """Prints a line for each request to the MCP endpoint before serving it."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            session = headers.get(b"mcp-session-id")
            emit(event="request", method=scope["method"], session=session and session.decode())
        await app(scope, receive, send)

    return wrapped


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((IP, 0))
    sock.listen(128)
    app = mcp.streamable_http_app(
        # Stateful (the default): a session per initialize, its id in
        # Mcp-Session-Id. Tool results come as SSE streams (the default).
        stateless_http=False,
        # The Host header names the Service, not this loopback address.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=IP,
    )
    config = uvicorn.Config(logged(app), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    def stop_when_stdin_closes():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
    emit(event="ready", addr="%s:%d" % sock.getsockname())
    anyio.run(lambda: server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()

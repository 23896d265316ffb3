"""MCP sessions with the official Python SDK's client, over Streamable HTTP.

    python3 client.py URL SESSIONS CALLS [PAUSE_AFTER]

Opens SESSIONS sessions, calls the tool `visit` CALLS times on each (round
by round, every session once a round), then closes each one, the last opened first (the SDK's
close sends the DELETE). One JSON line per step on stdout, as the TypeScript
client (client.mjs) prints them:

    {"event": "open", "session": I, "ok": true, "id": MCP_SESSION_ID}
    {"event": "call", "session": I, "call": K, "ok": true, "replica": R, "counter": N, "app_session": V}
    {"event": "paused"}      after PAUSE_AFTER rounds; goes on at a line on stdin
    {"event": "close", "session": I, "ok": true, "status": 200}
    {"event": "done"}

A step that fails says `"ok": false, "error": ...`; a session that did not
open makes no calls.
"""

import json
import sys
from contextlib import AsyncExitStack

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL = sys.argv[1]
SESSIONS, CALLS = int(sys.argv[2]), int(sys.argv[3])
PAUSE_AFTER = int(sys.argv[4]) if len(sys.argv) > 4 else None


def emit(**fields):
    print(json.dumps(fields), flush=True)


class Session:
    """One MCP session on an HTTP client of its own, which records the
    Mcp-Session-Id it is given and the status of the DELETE that ends it."""

    def __init__(self, index):
        self.index = index
        self.id = None
        self.delete_status = None
        self.stack = AsyncExitStack()
        self.client = None

    async def seen(self, response):
        if response.request.method == "DELETE":
            self.delete_status = response.status_code
        elif "mcp-session-id" in response.headers and self.id is None:
            self.id = response.headers["mcp-session-id"]

    async def open(self):
        http = await self.stack.enter_async_context(
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(20, read=300),
                event_hooks={"response": [self.seen]},
            )
        )
        # The initialize handshake: the protocol era whose sessions the
        # server holds in memory, named by Mcp-Session-Id.
        transport = streamable_http_client(URL, http_client=http)
        self.client = await self.stack.enter_async_context(Client(transport, mode="legacy", read_timeout_seconds=20))

    async def call(self):
        result = await self.client.call_tool("visit", {})
        if result.is_error:
            raise RuntimeError(f"tool error: {result.content}")
        return json.loads(result.content[0].text)

    async def close(self):
        await self.stack.aclose()


def describe(e):
    """An exception, its groups unwrapped down to what was raised."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


async def step(what, fields, run):
    """Runs `run`, then prints `fields` with its outcome; True if it worked.
    (Its time is bounded by the HTTP client's timeouts and the session's read
    timeout: a cancel scope here would cut across the task group a session
    opens.)"""
    try:
        extra = await run()
        emit(**fields, ok=True, **(extra or {}))
        return True
    except BaseException as e:  # noqa: BLE001 (an exception group, a timeout: each is an outcome)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        emit(**fields, ok=False, error=f"{what}: {describe(e)}")
        return False


async def main():
    sessions = []
    for i in range(SESSIONS):
        s = Session(i)

        async def opened(s=s):
            await s.open()
            return {"id": s.id}

        if await step("open", {"event": "open", "session": i}, opened):
            sessions.append(s)
        else:
            await s.stack.aclose()
    for k in range(1, CALLS + 1):
        for s in sessions:

            async def called(s=s):
                got = await s.call()
                return {"replica": got["replica"], "counter": got["counter"], "app_session": got["session"]}

            await step("call", {"event": "call", "session": s.index, "call": k}, called)
        if k == PAUSE_AFTER:
            emit(event="paused")
            await anyio.to_thread.run_sync(sys.stdin.readline)
    # Last opened, first closed: each session's task group is nested in the
    # ones opened before it.
    for s in reversed(sessions):

        async def closed(s=s):
            await s.close()
            if s.delete_status not in (200, 204):
                raise RuntimeError(f"the DELETE was answered {s.delete_status}")
            return {"status": s.delete_status}

        await step("close", {"event": "close", "session": s.index}, closed)
    emit(event="done")


anyio.run(main)

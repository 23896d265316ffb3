// MCP sessions with the official TypeScript SDK's client, over Streamable
// HTTP, on Node's own fetch (which keeps connections alive and never keeps
// cookies).
//
//     node client.mjs URL SESSIONS CALLS [PAUSE_AFTER]
//
// Opens SESSIONS sessions (each opens its standalone GET SSE stream once
// initialized), calls the tool `visit` CALLS times on each, round by round,
// then closes each one: terminateSession() sends the DELETE, close() ends
// the transport. One JSON line per step on stdout, as client.py prints them:
//
//     {"event":"open","session":I,"ok":true,"id":MCP_SESSION_ID}
//     {"event":"call","session":I,"call":K,"ok":true,"replica":R,"counter":N,"app_session":V}
//     {"event":"paused"}     after PAUSE_AFTER rounds; goes on at a line on stdin
//     {"event":"close","session":I,"ok":true}
//     {"event":"done"}
//
// A step that fails says "ok":false,"error":...; a session that did not open
// makes no calls. What the transport reports on its own (the GET stream's
// failures) comes as {"event":"transport_error","session":I,"error":...}.
import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, sessionsArg, callsArg, pauseArg] = process.argv.slice(2);
const SESSIONS = Number(sessionsArg);
const CALLS = Number(callsArg);
const PAUSE_AFTER = pauseArg === undefined ? undefined : Number(pauseArg);
// A bound on every request: a call that gets no answer fails, never hangs.
const TIMEOUT_MS = 20000;

const emit = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");

async function step(what, fields, run) {
  try {
    const extra = await run();
    emit({ ...fields, ok: true, ...(extra ?? {}) });
    return true;
  } catch (e) {
    emit({ ...fields, ok: false, error: `${what}: ${e?.message ?? e}` });
    return false;
  }
}

const stdin = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once("line", resolve));

const sessions = [];
for (let i = 0; i < SESSIONS; i++) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    // One try at reopening the GET stream, soon: it is reopened only when it
    // broke, which the transport_error lines show.
    reconnectionOptions: {
      initialReconnectionDelay: 100,
      maxReconnectionDelay: 1000,
      reconnectionDelayGrowFactor: 1,
      maxRetries: 1,
    },
  });
  let closing = false;
  const client = new Client({ name: "stickyd-test", version: "1.0.0" });
  const opened = await step("open", { event: "open", session: i }, async () => {
    await client.connect(transport, { timeout: TIMEOUT_MS });
    return { id: transport.sessionId };
  });
  // Set after connect, which installs a handler of its own.
  const own = client.onerror;
  client.onerror = (e) => {
    if (!closing) emit({ event: "transport_error", session: i, error: String(e?.message ?? e) });
    own?.(e);
  };
  if (opened) {
    sessions.push({ i, client, transport, stop: () => (closing = true) });
  } else {
    await client.close().catch(() => {});
  }
}

for (let k = 1; k <= CALLS; k++) {
  for (const s of sessions) {
    await step("call", { event: "call", session: s.i, call: k }, async () => {
      const result = await s.client.callTool({ name: "visit", arguments: {} }, undefined, { timeout: TIMEOUT_MS });
      if (result.isError) throw new Error(`tool error: ${JSON.stringify(result.content)}`);
      const got = JSON.parse(result.content[0].text);
      return { replica: got.replica, counter: got.counter, app_session: got.session };
    });
  }
  if (k === PAUSE_AFTER) {
    emit({ event: "paused" });
    await nextLine();
  }
}

for (const s of sessions) {
  await step("close", { event: "close", session: s.i }, async () => {
    s.stop();
    await s.transport.terminateSession();
    await s.client.close();
  });
}
emit({ event: "done" });
stdin.close();
process.exit(0);

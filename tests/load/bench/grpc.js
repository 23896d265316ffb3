// gRPC calls at a fixed rate through one target, with k6's gRPC client
// (k6/net/grpc): each VU keeps one h2c connection, as a gRPC channel does,
// and sends COOKIE as metadata on every call. KIND=unary calls
// bench.Echo/Unary; KIND=stream calls bench.Echo/Stream for COUNT messages.
// A call counts as failed unless its status is OK (and, for a stream, all
// COUNT messages came). Writes a JSON summary to OUT.
import { arrival, RATE } from './arrival.js';
import grpc from 'k6/net/grpc';
import { Counter, Trend } from 'k6/metrics';

const KIND = __ENV.KIND || 'unary';
const COUNT = Number(__ENV.COUNT || 10);

export const options = { ...arrival };

const client = new grpc.Client();
client.load([__ENV.PROTO_DIR || '.'], 'echo.proto');
const failed = new Counter('calls_failed');
const calls = new Counter('calls');
const streamDuration = new Trend('stream_duration', true);
const params = { metadata: __ENV.COOKIE ? { cookie: __ENV.COOKIE } : {} };
let connected = false;

export default function () {
  calls.add(1);
  if (!connected) {
    try {
      client.connect(__ENV.TARGET, { plaintext: true, reflect: false });
    } catch (e) {
      failed.add(1);
      return;
    }
    connected = true;
  }
  if (KIND === 'unary') {
    const r = client.invoke('bench.Echo/Unary', { payload: 'aGVsbG8=' }, params);
    if (!r || r.status !== grpc.StatusOK) failed.add(1);
    return;
  }
  const t0 = Date.now();
  let got = 0;
  const s = new grpc.Stream(client, 'bench.Echo/Stream', params);
  s.on('data', () => { got += 1; });
  s.on('error', () => { failed.add(1); });
  s.on('end', () => {
    if (got !== COUNT) failed.add(1);
    streamDuration.add(Date.now() - t0);
  });
  s.write({ payload: 'aGVsbG8=', count: COUNT, interval_ms: 0 });
  s.end();
}

export function handleSummary(data) {
  const m = data.metrics;
  const v = (name, key) => (m[name] && m[name].values[key] !== undefined ? m[name].values[key] : 0);
  const dur = KIND === 'unary' ? 'grpc_req_duration' : 'stream_duration';
  const out = {
    kind: KIND,
    rate: RATE,
    calls: v('calls', 'count'),
    per_s: v('calls', 'rate'),
    p50_ms: v(dur, 'med'),
    p90_ms: v(dur, 'p(90)'),
    p99_ms: v(dur, 'p(99)'),
    max_ms: v(dur, 'max'),
    failed: v('calls_failed', 'count'),
  };
  return { [__ENV.OUT || 'grpc-summary.json']: JSON.stringify(out) + '\n' };
}

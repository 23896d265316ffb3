// Fixed-rate latency for one target: constant-arrival-rate, one request per
// iteration (k6 empties the cookie jar between iterations, so the only cookie
// sent is the COOKIE given here). Writes a JSON summary to OUT.
import { arrival, RATE } from './arrival.js';
import http from 'k6/http';

export const options = { ...arrival, discardResponseBodies: true };

const params = __ENV.COOKIE ? { headers: { Cookie: __ENV.COOKIE } } : {};

export default function () {
  http.get(__ENV.URL, params);
}

export function handleSummary(data) {
  const m = data.metrics;
  const v = (name, key) => (m[name] && m[name].values[key] !== undefined ? m[name].values[key] : 0);
  const out = {
    rate: RATE,
    reqs: v('http_reqs', 'count'),
    rps: v('http_reqs', 'rate'),
    p50_ms: v('http_req_duration', 'med'),
    p90_ms: v('http_req_duration', 'p(90)'),
    p99_ms: v('http_req_duration', 'p(99)'),
    max_ms: v('http_req_duration', 'max'),
    failed_rate: v('http_req_failed', 'rate'),
    dropped: v('dropped_iterations', 'count'),
  };
  return { [__ENV.OUT]: JSON.stringify(out) + '\n' };
}

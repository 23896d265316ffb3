// Browsers for the pod network tests (tests/podnet/main.rs): k6 runs inside the
// ingress network namespace and talks to the ingress (HAProxy) on its
// loopback.
//
// Each iteration is one browser session (k6 empties the cookie jar between
// iterations) of REQUESTS requests to BASE_URL/api, SLEEP seconds apart. Per
// session it follows the pod of each response, whether the demo app's
// counter goes 1, 2, 3, ... (the app keeps sessions in memory: a session that
// moved to another pod starts again at 1), the failed requests, and the moves.
//
// Output:
// - one line per finished session on the console, `podnet-session {json}`,
//   with every request: [start ms, end ms, status, pod, count, mark, error]
//   (ms since the epoch; pod, count and mark from the app's JSON, or null);
//   run with `--log-format raw --log-output file=PATH` to collect them;
// - at the end (handleSummary) a JSON summary written to SUMMARY: requests,
//   failed requests (and the first and last time one failed), sessions,
//   sessions that moved and how many times, counter errors, the responses'
//   `stickyd_session` marks, and per pod (PODS names them) its requests, the
//   time of its last request and of its last `new` mark, and its marks.
//
// Environment: BASE_URL (http://127.0.0.1:8000), VUS (9), REQUESTS (20),
// SLEEP (0.1), DURATION (10s) or ITERATIONS (total sessions, instead of
// DURATION), PODS (comma-separated pod names), SUMMARY
// (podnet-summary.json), TIMEOUT (per request, 30s), JITTER (1: the first
// session of each VU starts after a random delay of up to one session's
// length, so that sessions do not all start and end together).
//
// The run never fails on thresholds (they only make k6 keep per-pod figures);
// the Rust harness judges the records.

import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
const VUS = parseInt(__ENV.VUS || '9', 10);
const REQUESTS = parseInt(__ENV.REQUESTS || '20', 10);
const SLEEP = parseFloat(__ENV.SLEEP || '0.1');
const DURATION = __ENV.DURATION || '10s';
const ITERATIONS = __ENV.ITERATIONS ? parseInt(__ENV.ITERATIONS, 10) : 0;
const PODS = (__ENV.PODS || '').split(',').filter((p) => p !== '');
const SUMMARY = __ENV.SUMMARY || 'podnet-summary.json';
const TIMEOUT = __ENV.TIMEOUT || '30s';
const JITTER = __ENV.JITTER === '1';
const MARKS = ['new', 'pinned', 'repinned', 'unsynced', 'none'];

const requests = new Counter('podnet_requests');
const failed = new Counter('podnet_failed');
const failedAt = new Trend('podnet_failed_at_ms');
const sessions = new Counter('podnet_sessions');
const sessionsMoved = new Counter('podnet_sessions_moved');
const sessionsMovedTwice = new Counter('podnet_sessions_moved_twice');
const moves = new Counter('podnet_moves');
const movesPerSession = new Trend('podnet_moves_per_session');
const counterErrors = new Counter('podnet_counter_errors');
const marks = new Counter('podnet_marks');
const podRequests = new Counter('podnet_pod_requests');
const podLast = new Trend('podnet_pod_last_ms');
const podLastNew = new Trend('podnet_pod_last_new_ms');

// k6 keeps figures per tag value only for sub-metrics named in thresholds.
const thresholds = {};
for (const mark of MARKS) thresholds[`podnet_marks{mark:${mark}}`] = ['count>=0'];
for (const pod of PODS) {
  thresholds[`podnet_pod_requests{pod:${pod}}`] = ['count>=0'];
  thresholds[`podnet_pod_last_ms{pod:${pod}}`] = ['max>=0'];
  thresholds[`podnet_pod_last_new_ms{pod:${pod}}`] = ['max>=0'];
  for (const mark of MARKS) thresholds[`podnet_marks{pod:${pod},mark:${mark}}`] = ['count>=0'];
}

// Sessions in progress when the duration ends may finish: long enough for a
// session whose requests stall until the ingress gives up on them.
const sessionsScenario = ITERATIONS > 0
  ? { executor: 'shared-iterations', vus: VUS, iterations: ITERATIONS, maxDuration: '3m' }
  : { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '60s' };

export const options = {
  scenarios: { sessions: sessionsScenario },
  thresholds,
  summaryTrendStats: ['min', 'max', 'count'],
};

const PARAMS = { headers: { Accept: 'application/json' }, timeout: TIMEOUT, tags: { name: 'api' } };

export default function () {
  if (JITTER && exec.vu.iterationInScenario === 0) sleep(Math.random() * REQUESTS * SLEEP);
  const log = [];
  let pinned = null; // the pod the session is on
  let expected = 1; // the app's counter on `pinned`
  let moved = 0;
  for (let i = 0; i < REQUESTS; i++) {
    const start = Date.now();
    const res = http.get(`${BASE_URL}/api`, PARAMS);
    const end = Date.now();
    let body = null;
    try {
      body = res.json();
    } catch (e) {
      body = null;
    }
    requests.add(1);
    const ok = res.status === 200 && body !== null && typeof body.pod === 'string';
    if (!ok) {
      failed.add(1);
      failedAt.add(start);
      const error = res.error || (res.body ? String(res.body).split('\n')[0].slice(0, 120) : '');
      log.push([start, end, res.status, null, null, null, error]);
    } else {
      const mark = body.stickyd_session || 'none';
      log.push([start, end, res.status, body.pod, body.count, mark, null]);
      marks.add(1, { mark, pod: body.pod });
      podRequests.add(1, { pod: body.pod });
      podLast.add(end, { pod: body.pod });
      if (mark === 'new') podLastNew.add(end, { pod: body.pod });
      if (pinned !== null && body.pod !== pinned) {
        moved++;
        moves.add(1);
        expected = 1; // the new pod has never seen this session
      }
      pinned = body.pod;
      if (body.count !== expected) {
        counterErrors.add(1);
        expected = body.count; // judge the next ones from here
      }
      expected++;
    }
    if (SLEEP > 0 && i + 1 < REQUESTS) sleep(SLEEP);
  }
  sessions.add(1);
  movesPerSession.add(moved);
  if (moved > 0) sessionsMoved.add(1);
  if (moved > 1) sessionsMovedTwice.add(1);
  console.log(`podnet-session ${JSON.stringify({ vu: exec.vu.idInTest, iteration: exec.vu.iterationInScenario, requests: log })}`);
}

function value(data, name, stat) {
  const m = data.metrics[name];
  if (!m || !m.values) return null;
  const v = m.values[stat];
  return typeof v === 'number' && isFinite(v) ? v : null;
}

export function handleSummary(data) {
  const count = (name) => value(data, name, 'count') || 0;
  const markCounts = (suffix) => {
    const out = {};
    for (const mark of MARKS) out[mark] = count(`podnet_marks{${suffix}mark:${mark}}`);
    return out;
  };
  const pods = {};
  for (const pod of PODS) {
    pods[pod] = {
      requests: count(`podnet_pod_requests{pod:${pod}}`),
      last_request_ms: count(`podnet_pod_requests{pod:${pod}}`) > 0 ? value(data, `podnet_pod_last_ms{pod:${pod}}`, 'max') : null,
      last_new_ms: count(`podnet_marks{pod:${pod},mark:new}`) > 0 ? value(data, `podnet_pod_last_new_ms{pod:${pod}}`, 'max') : null,
      marks: markCounts(`pod:${pod},`),
    };
  }
  const out = {
    requests: count('podnet_requests'),
    failed: count('podnet_failed'),
    first_failure_ms: value(data, 'podnet_failed_at_ms', 'min'),
    last_failure_ms: value(data, 'podnet_failed_at_ms', 'max'),
    sessions: count('podnet_sessions'),
    sessions_moved: count('podnet_sessions_moved'),
    sessions_moved_twice_or_more: count('podnet_sessions_moved_twice'),
    moves: count('podnet_moves'),
    most_moves_in_a_session: value(data, 'podnet_moves_per_session', 'max'),
    counter_errors: count('podnet_counter_errors'),
    marks: markCounts(''),
    pods,
  };
  const line = `podnet k6: ${out.requests} requests, ${out.failed} failed, ${out.sessions} sessions, ${out.sessions_moved} moved\n`;
  return { [SUMMARY]: JSON.stringify(out, null, 1), stdout: line };
}

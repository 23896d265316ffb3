// Session stickiness through a random load balancer, one browser session per
// iteration (k6 empties the cookie jar between iterations).
//
// Each session makes REQUESTS requests to BASE_URL/api and checks that the
// pod that serves it never changes and that the app's per-session counter
// goes 1, 2, ..., REQUESTS. Thresholds fail the run on any broken session or
// failed request.
//
// CHURN=1: CHURN_AT seconds into the run, one pod is killed and another added
// through the demo load balancer's control endpoints (/_demo/kill,
// /_demo/add; `stickyd demo` serves them). Sessions pinned elsewhere must not
// move; sessions of the killed pod move exactly once, to a live pod, where
// the app starts them again at 1 (it never saw them).
//
// Environment: BASE_URL (http://127.0.0.1:8000), VUS (10), REQUESTS (10),
// DURATION (10s) or ITERATIONS (total sessions, instead of DURATION),
// SLEEP (seconds between requests, 0.05), CHURN (0), CHURN_AT (3),
// KILL (the pod to kill; default: the first one listed).
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 tests/k6/stickiness.js
//   k6 run -e CHURN=1 -e DURATION=12s tests/k6/stickiness.js
//
// The stickiness ratio (share of session requests that reached the session's
// first pod) is the `sticky_requests` rate; without stickyd it is about 1/N
// for N pods, and the thresholds fail (use --no-thresholds to just measure).

import http from 'k6/http';
import { check, sleep, fail } from 'k6';
import { Counter, Rate } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
const VUS = parseInt(__ENV.VUS || '10', 10);
const REQUESTS = parseInt(__ENV.REQUESTS || '10', 10);
const DURATION = __ENV.DURATION || '10s';
const ITERATIONS = __ENV.ITERATIONS ? parseInt(__ENV.ITERATIONS, 10) : 0;
const SLEEP = parseFloat(__ENV.SLEEP || '0.05');
const CHURN = __ENV.CHURN === '1' || __ENV.CHURN === 'true';
const CHURN_AT = parseFloat(__ENV.CHURN_AT || '3');

// Per request: did it reach the pod that started its session?
const stickyRequests = new Rate('sticky_requests');
// Per session: did it behave as the contract says (no unexpected move, the
// counter right, no failed request)?
const sessionsIntact = new Rate('sessions_intact');
const brokenSessions = new Counter('broken_sessions');
// A session pinned to a live pod that moved anyway.
const unexpectedMoves = new Counter('unexpected_moves');
// Sessions of the killed pod that moved to a live pod (once each).
const killedPodRepins = new Counter('killed_pod_repins');
// A session that moved a second time after its repin.
const extraRepins = new Counter('extra_repins');
// The app's counter did not go 1, 2, 3, ... on the serving pod.
const counterErrors = new Counter('counter_errors');
const churnDone = new Counter('churn_actions');

const sessionsScenario = ITERATIONS > 0
  ? { executor: 'shared-iterations', vus: VUS, iterations: ITERATIONS, maxDuration: '5m', exec: 'session' }
  : { executor: 'constant-vus', vus: VUS, duration: DURATION, exec: 'session' };

const scenarios = { sessions: sessionsScenario };
const thresholds = {
  http_req_failed: ['rate==0'],
  checks: ['rate==1'],
  sessions_intact: ['rate==1'],
  broken_sessions: ['count==0'],
  unexpected_moves: ['count==0'],
  extra_repins: ['count==0'],
  counter_errors: ['count==0'],
};
if (CHURN) {
  scenarios.churn = {
    executor: 'shared-iterations', vus: 1, iterations: 1, startTime: `${CHURN_AT}s`, maxDuration: '60s', exec: 'churn',
  };
  // The churn must have happened, and hit some sessions.
  thresholds.churn_actions = ['count==2'];
  thresholds.killed_pod_repins = ['count>0'];
} else {
  thresholds.sticky_requests = ['rate==1'];
}

export const options = {
  scenarios,
  thresholds,
  // A session's requests go one at a time; a broken one shows in the metrics.
  noConnectionReuse: false,
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

const JSON_HEADERS = { headers: { Accept: 'application/json' } };

function killedPods() {
  const r = http.get(`${BASE_URL}/_demo/pods`, { tags: { name: 'control' } });
  if (r.status !== 200) return [];
  try {
    return r.json().killed || [];
  } catch (e) {
    return [];
  }
}

export function session() {
  let first = null; // the pod that started the session
  let pinned = null; // the pod the session is on now
  let expected = 1; // the app's counter on `pinned`
  let moved = false;
  let ok = true;
  for (let i = 1; i <= REQUESTS; i++) {
    const res = http.get(`${BASE_URL}/api`, Object.assign({ tags: { name: 'api' } }, JSON_HEADERS));
    let body = null;
    try {
      body = res.json();
    } catch (e) {
      body = null;
    }
    const answered = check(res, {
      'status 200': (r) => r.status === 200,
      'json from a pod': () => body !== null && typeof body.pod === 'string',
    });
    if (!answered) {
      ok = false;
      continue;
    }
    if (first === null) {
      first = body.pod;
      pinned = body.pod;
    } else {
      stickyRequests.add(body.pod === first);
    }
    if (body.pod !== pinned) {
      // Allowed only once, only away from a pod that was killed.
      const killed = CHURN ? killedPods() : [];
      if (moved) {
        extraRepins.add(1);
        ok = false;
      } else if (killed.indexOf(pinned) >= 0 && killed.indexOf(body.pod) < 0) {
        killedPodRepins.add(1);
        moved = true;
        check(body, { 'a repin says repinned': (b) => b.stickyd_session === 'repinned' });
      } else {
        unexpectedMoves.add(1);
        ok = false;
      }
      pinned = body.pod;
      expected = 1; // the new pod has never seen this session
    }
    if (body.count !== expected) {
      counterErrors.add(1);
      ok = false;
      expected = body.count; // judge the next ones from here
    }
    expected++;
    if (SLEEP > 0) sleep(SLEEP);
  }
  sessionsIntact.add(ok);
  if (!ok) brokenSessions.add(1);
}

export function churn() {
  const pods = http.get(`${BASE_URL}/_demo/pods`, { tags: { name: 'control' } });
  if (pods.status !== 200) fail(`GET /_demo/pods: ${pods.status} ${pods.body}`);
  const list = pods.json().pods.map((p) => p.name);
  const victim = __ENV.KILL || list[0];
  const k = http.post(`${BASE_URL}/_demo/kill?pod=${encodeURIComponent(victim)}`, null, { tags: { name: 'control' } });
  if (check(k, { 'kill 200': (r) => r.status === 200 })) churnDone.add(1);
  const a = http.post(`${BASE_URL}/_demo/add`, null, { tags: { name: 'control' } });
  if (check(a, { 'add 200': (r) => r.status === 200 })) churnDone.add(1);
  console.log(`churn: killed ${victim}, added ${a.status === 200 ? a.json().added : '(failed)'}`);
}

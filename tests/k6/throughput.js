// Latency at a fixed request rate (constant-arrival-rate), reported as p50,
// p90 and p99.
//
// Environment:
//   BASE_URL  target (http://127.0.0.1:8000)
//   PATH_     request path (/api)
//   RATE      requests per second (500)
//   DURATION  how long (10s)
//   VUS       pre-allocated VUs (50); MAX_VUS (200)
//   COOKIE    a Cookie header to send on every request, to pin all of them
//             to one pod (e.g. "stickyd=…"); "auto" takes the cookies of one
//             first request in setup(). Unset: every request is a new session
//             (k6 empties the cookie jar between iterations).
//   P99_MS    optional threshold on p99 latency in ms
//
//   k6 run -e RATE=2000 -e DURATION=30s -e COOKIE=auto tests/k6/throughput.js
//
// Thresholds: no failed request, no dropped iteration (the rate was held).

import http from 'k6/http';
import { check, fail } from 'k6';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
const PATH = __ENV.PATH_ || '/api';
const RATE = parseInt(__ENV.RATE || '500', 10);
const DURATION = __ENV.DURATION || '10s';
const VUS = parseInt(__ENV.VUS || '50', 10);
const MAX_VUS = parseInt(__ENV.MAX_VUS || '200', 10);

const thresholds = {
  http_req_failed: ['rate==0'],
  dropped_iterations: ['count==0'],
};
if (__ENV.P99_MS) thresholds.http_req_duration = [`p(99)<${parseFloat(__ENV.P99_MS)}`];

export const options = {
  scenarios: {
    fixed_rate: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: MAX_VUS,
    },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(50)', 'p(90)', 'p(99)', 'max'],
  discardResponseBodies: true,
};

export function setup() {
  if (__ENV.COOKIE !== 'auto') return { cookie: __ENV.COOKIE || '' };
  const r = http.get(`${BASE_URL}${PATH}`, { headers: { Accept: 'application/json' } });
  if (r.status !== 200) fail(`setup: ${r.status}`);
  const parts = [];
  for (const name in r.cookies) {
    if (r.cookies[name].length > 0) parts.push(`${name}=${r.cookies[name][0].value}`);
  }
  if (parts.length === 0) fail('setup: the first response set no cookie');
  console.log(`pinned with: ${parts.join('; ')}`);
  return { cookie: parts.join('; ') };
}

export default function (data) {
  const headers = { Accept: 'application/json' };
  if (data.cookie) headers.Cookie = data.cookie;
  const params = { headers, tags: { name: PATH } };
  if (data.cookie) params.jar = new http.CookieJar(); // never let a Set-Cookie change the pin
  const res = http.get(`${BASE_URL}${PATH}`, params);
  check(res, { 'status 200': (r) => r.status === 200 });
}

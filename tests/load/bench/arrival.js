// The fixed-rate scenario of rate.js and grpc.js: RATE iterations a second
// (k6's constant-arrival-rate) for DURATION, and the latency figures their
// summaries report.
export const RATE = Number(__ENV.RATE || 2000);

export const arrival = {
  summaryTrendStats: ['med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    rate: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '10s',
      preAllocatedVUs: 64,
      maxVUs: 512,
    },
  },
};

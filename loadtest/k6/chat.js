// k6 version of the loadtest scenario: PAIRS mentor/student pairs, each side
// sending RATE messages/s for DURATION seconds; latency is measured at the peer.
//
//   k6 run -e TARGET=127.0.0.1:8080 -e PAIRS=100 -e RATE=1 -e DURATION=30 loadtest/k6/chat.js
//
// Same token scheme as the Rust generator (run target/release/django-standin as
// Django): pair i is mentor 1000+i (token bench-m-<id>, lesson 1000+i) and
// student 1000000+i (token bench-s-<id>). One VU is one connection (k6/ws is
// blocking per VU), so VUs = 2 × PAIRS. k6 is optional; scripts/bench.sh uses
// the Rust generator, which holds far more connections per core.
import ws from 'k6/ws';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const TARGET = __ENV.TARGET || '127.0.0.1:8080';
const PAIRS = parseInt(__ENV.PAIRS || '10', 10);
const FIRST_PAIR = parseInt(__ENV.FIRST_PAIR || '0', 10);
const RATE = parseFloat(__ENV.RATE || '1'); // messages per second per connection
const DURATION = parseFloat(__ENV.DURATION || '30'); // seconds
const TEXT_BYTES = parseInt(__ENV.MESSAGE_BYTES || '64', 10);

if (!/^127\.|^localhost:|^\[::1\]:/.test(TARGET) && __ENV.ALLOW_REMOTE !== '1') {
  throw new Error(`refusing target ${TARGET} outside 127.0.0.0/8 (set ALLOW_REMOTE=1)`);
}

const sent = new Counter('chat_messages_sent');
const delivered = new Counter('chat_messages_delivered');
const acked = new Counter('chat_messages_acked');
const errors = new Counter('chat_error_events');
const latency = new Trend('chat_latency_ms', true);

export const options = {
  scenarios: {
    pairs: {
      executor: 'per-vu-iterations',
      vus: 2 * PAIRS,
      iterations: 1,
      maxDuration: `${Math.ceil(DURATION) + 60}s`,
    },
  },
  thresholds: {
    checks: ['rate==1'],
    chat_latency_ms: ['p(99)<5', 'p(99.9)<20'],
    chat_error_events: ['count==0'],
  },
};

export default function () {
  const vu = __VU - 1;
  const pair = FIRST_PAIR + Math.floor(vu / 2);
  const isMentor = vu % 2 === 0;
  const mentor = 1000 + pair;
  const student = 1000000 + pair;
  const me = isMentor ? mentor : student;
  const query = isMentor
    ? `token=bench-m-${mentor}&user_id=${mentor}&lesson_id=${mentor}&student_id=${student}`
    : `token=bench-s-${student}&user_id=${student}&lesson_id=${mentor}`;
  let seq = 0;

  const res = ws.connect(`ws://${TARGET}/ws?${query}`, {}, (socket) => {
    socket.on('open', () => {
      socket.setInterval(() => {
        // The text starts with the send time (ms since the epoch × 1e6, i.e. nanoseconds).
        const stamp = `${Date.now()}000000 `;
        const text = stamp + 'x'.repeat(Math.max(0, TEXT_BYTES - stamp.length));
        socket.send(JSON.stringify({ type: 'message', text, client_id: `k6-${__VU}-${seq++}` }));
        sent.add(1);
      }, 1000 / RATE);
      socket.setTimeout(() => socket.close(1000), DURATION * 1000);
    });
    socket.on('message', (data) => {
      const event = JSON.parse(data);
      if (event.type === 'message' && event.sender_id !== me) {
        delivered.add(1);
        const stamp = parseInt(String(event.text).split(' ')[0], 10);
        if (stamp > 0) latency.add(Date.now() - stamp / 1e6);
      } else if (event.type === 'ack') {
        acked.add(1);
      } else if (event.type === 'error') {
        errors.add(1, { code: event.code });
      }
    });
  });
  check(res, { 'upgraded (101)': (r) => r && r.status === 101 });
}

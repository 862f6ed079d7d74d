#!/usr/bin/env node
// Idle STOMP sessions opened the way real JavaScript clients open them, for
// `stompgate bench connections --client ...` and the idle-memory regression test.
//
//   node tests/browser/idle-sessions.mjs PROFILE --url URL --count N [options]
//
// Profiles (each uses the real npm client library, unmodified):
//   stompjs7              @stomp/stompjs 7 with its defaults over the `ws` package: subprotocols
//                         v12.stomp,v11.stomp,v10.stomp offered, heart-beats 10000,10000
//   stompjs2              the Web-STOMP tutorial's way: stomp.js 2.3.3 `Stomp.over(new WebSocket(url))`
//                         (no subprotocol), heart-beats off
//   sockjs-websocket      stomp.js 2.3.3 over sockjs-client 1.6.1, transport websocket (URL: http://H:P/stomp)
//   sockjs-xhr-streaming  the same, transport xhr-streaming
//
// Every session CONNECTs (guest/guest, host /) and SUBSCRIBEs once (no receipt, as pages do).
// When every session is up or failed, prints ONE JSON line:
//   {"event":"up","sessions":N,"failed":F,"connect_s":S,"connect_us":[each session's connect time],"errors":{..}}
// then holds the sessions until its standard input closes (or SIGTERM), closes them, prints
//   {"event":"closed","dropped":D,"drop_errors":{..}}
// and exits 0. Progress goes to stderr.
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const PROFILES = ['stompjs7', 'stompjs2', 'sockjs-websocket', 'sockjs-xhr-streaming'];

const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string' },
    count: { type: 'string', default: '100' },
    concurrency: { type: 'string', default: '100' },
    destination: { type: 'string', default: '/exchange/amq.topic/bench.idle' },
    login: { type: 'string', default: 'guest' },
    passcode: { type: 'string', default: 'guest' },
    vhost: { type: 'string', default: '/' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});
const profile = positionals[0];
if (!PROFILES.includes(profile) || !opt.url) {
  console.error(`usage: node idle-sessions.mjs ${PROFILES.join('|')} --url URL --count N ` +
    '[--concurrency C] [--destination D] [--login L --passcode P --vhost V] [--timeout-ms T]');
  process.exit(2);
}
const count = Number(opt.count);
const concurrency = Math.max(1, Number(opt.concurrency));
const timeoutMs = Number(opt['timeout-ms']);

/** Opens one session; resolves with a handle {close(), onDrop} once CONNECTED arrived and SUBSCRIBE was sent. */
function openStompjs7() {
  const { Client } = require('@stomp/stompjs');
  const WebSocket = require('ws');
  return () => new Promise((resolve, reject) => {
    const client = new Client({
      // The library's own default factory is `new WebSocket(brokerURL, protocols)`; Node 20
      // has no global WebSocket, so hand it the `ws` class with the same arguments.
      webSocketFactory: () => new WebSocket(opt.url, client.stompVersions.protocolVersions()),
      connectHeaders: { login: opt.login, passcode: opt.passcode, host: opt.vhost },
      reconnectDelay: 0,
      debug: () => {},
    });
    const handle = { dropped: null, close: () => client.deactivate() };
    let up = false;
    client.onConnect = () => {
      client.subscribe(opt.destination, () => {});
      up = true;
      resolve(handle);
    };
    const fail = (why) => {
      if (!up) reject(new Error(why));
      else if (handle.dropped === null && client.active) handle.dropped = why;
    };
    client.onStompError = (f) => fail(`ERROR: ${f.headers.message}`);
    client.onWebSocketError = () => fail('websocket error');
    client.onWebSocketClose = (e) => fail(`closed ${e.code}`);
    client.activate();
  });
}

/** stomp.js 2.3.3 over a socket the caller made (the tutorial's `Stomp.over(ws)`). */
function stompjs2Over(makeSocket) {
  require('stompjs'); // its Node entry installs Stomp.setInterval/clearInterval
  const { Stomp } = require('stompjs/lib/stomp.js');
  return () => new Promise((resolve, reject) => {
    const client = Stomp.over(makeSocket());
    client.debug = null;
    client.heartbeat.incoming = 0;
    client.heartbeat.outgoing = 0;
    const handle = { dropped: null, closing: false, close: () => { handle.closing = true; client.disconnect(); } };
    let up = false;
    client.connect(opt.login, opt.passcode, () => {
      client.subscribe(opt.destination, () => {});
      up = true;
      resolve(handle);
    }, (error) => {
      const why = typeof error === 'string' ? error : `ERROR: ${error.headers?.message}`;
      if (!up) reject(new Error(why));
      else if (!handle.closing && handle.dropped === null) handle.dropped = why;
    }, opt.vhost);
  });
}

function openStompjs2() {
  const WebSocket = require('ws');
  return stompjs2Over(() => new WebSocket(opt.url));
}

function openSockJs(transport) {
  const SockJS = require('sockjs-client');
  return stompjs2Over(() => new SockJS(opt.url, null, { transports: [transport] }));
}

const open = {
  stompjs7: openStompjs7,
  stompjs2: openStompjs2,
  'sockjs-websocket': () => openSockJs('websocket'),
  'sockjs-xhr-streaming': () => openSockJs('xhr-streaming'),
}[profile]();

function withTimeout(promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timeout')), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const countKind = (map, e) => {
  const kind = String(e?.message ?? e).slice(0, 80);
  map[kind] = (map[kind] ?? 0) + 1;
};

const handles = [];
const times = [];
const errors = {};
let failed = 0;
let next = 0;
const t0 = performance.now();
async function worker() {
  while (next < count) {
    next += 1;
    const started = performance.now();
    try {
      handles.push(await withTimeout(open()));
      times.push(performance.now() - started);
    } catch (e) {
      failed += 1;
      countKind(errors, e);
    }
    const done = handles.length + failed;
    if (done % 1000 === 0) console.error(`[idle-sessions] ${handles.length}/${count} up, ${failed} failed`);
  }
}
await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
const connectS = (performance.now() - t0) / 1000;
console.log(JSON.stringify({
  event: 'up', profile, sessions: handles.length, failed, connect_s: Math.round(connectS * 1000) / 1000,
  connect_us: times.map((ms) => Math.round(ms * 1000)), errors,
}));

let closing = false;
function closeAll() {
  if (closing) return;
  closing = true;
  const dropErrors = {};
  let dropped = 0;
  for (const h of handles) {
    if (h.dropped !== null) {
      dropped += 1;
      countKind(dropErrors, h.dropped);
    }
  }
  for (const h of handles) {
    try { h.close(); } catch { /* already gone */ }
  }
  console.log(JSON.stringify({ event: 'closed', dropped, drop_errors: dropErrors }));
  // Give the close frames a moment to leave, then exit even if a library keeps a timer.
  setTimeout(() => process.exit(0), 500).unref();
  setTimeout(() => process.exit(0), 3000);
}
process.stdin.on('end', closeAll);
process.stdin.on('error', closeAll);
process.stdin.resume();
process.on('SIGTERM', closeAll);

#!/usr/bin/env node
// Browser scenarios for stompgate: the founding Web-STOMP page in headless Chromium.
//
//   node tests/browser/run.mjs seed     [--page-url URL | --serve-dir DIR] [options]
//   node tests/browser/run.mjs stompjs7 [--page-url URL | --serve-dir DIR] [options]
//
// Opens the page, runs tests/python/publisher.py (pika) publishing a unique body every 200 ms
// to exchange `rabbitmq` / routing key `zjj`, waits until the page's <span id="message"> shows it.
// Prints ONE JSON line on stdout: {"ok":true,"scenario":...,"timeToUpdateMs":...} and exits 0,
// or {"ok":false,...,"reason":...} and exits 1 (reason also on stderr). See README.md.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, createReadStream } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const T0 = Date.now();

const USAGE = `usage: node run.mjs seed|stompjs7 [options]
       node run.mjs receipt --broker-url ws://HOST:PORT/ws [--destination D]
  receipt                   @stomp/stompjs's receipt specs (a receipted SEND nobody is subscribed to, then a
                            receipted SUBSCRIBE) on tests/browser/receipt.html, served from another origin
  --page-url URL            page to open (e.g. http://127.0.0.1:15674/demo/); default: serve --serve-dir
  --serve-dir DIR           serve DIR at http://127.0.0.1:<random>/demo/ (default examples/demo)
  --no-websocket            delete window.WebSocket before page scripts run (page takes the SockJS branch)
  --sockjs-transport T      restrict sockjs-client to transport T (xhr-streaming|xhr-polling|eventsource|...);
                            implies --no-websocket
  --ws-override URL         rewrite every WebSocket URL the page opens to URL (e.g. ws://127.0.0.1:15676/ws)
  --sockjs-override URL     rewrite the SockJS URL (default: derived from --ws-override: http://H:P/stomp)
  --trust-spki B64          accept exactly the server certificate whose SubjectPublicKeyInfo has this base64
                            SHA-256 (Chromium's --ignore-certificate-errors-spki-list), for wss:// to a test
                            certificate; any other certificate still fails
  --amqp-url URL            publisher's broker (default amqp://guest:guest@127.0.0.1:5672/%2f)
  --exchange X --routing-key K   (default rabbitmq / zjj)
  --publish-interval-ms N   (default 200)
  --publisher pika|tutorial pika: tests/python/publisher.py, one process publishing every interval (default);
                            tutorial: tests/python/tutorial_send.py, the tutorial's send.py as written (it
                            declares exchange 'rabbitmq' non-durable, routing key 'zjj'), run once per message
  --timeout-ms N            wait for the page to show the body (default 20000)
  --overall-timeout-ms N    hard limit for the whole run (default timeout-ms + 30000)
  --python PATH             interpreter for publisher.py (default $STOMPGATE_PYTHON or python3)
  --chromium PATH           browser (default $CHROMIUM or /usr/bin/chromium)
  --screenshot FILE         save a PNG of the page at the end (success or failure)
  --verbose, -v             log the page's console, requests and WebSocket frames to stderr`;

// ---------------------------------------------------------------- state + cleanup
const state = {
  scenario: process.argv[2],
  result: null,
  server: null,
  publisher: null,
  publisherExit: null,
  publisherStderr: '',
  published: new Map(), // body -> epoch ms
  publishedCount: 0,
  context: null,
  profileDir: null,
  consoleErrors: [],
  pageErrors: [],
  failedRequests: [],
  httpErrors: [],
  webSockets: [],
  pageTimeOrigin: null,
};
let finished = false;

function pidsUsingProfile(dir) {
  // Our own Chromium processes, identified by the unique --user-data-dir we created.
  const pids = [];
  if (!dir) return pids;
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.includes(dir)) pids.push(Number(p));
    } catch { /* gone */ }
  }
  return pids;
}

function killSync() {
  // Last-resort, synchronous: used on 'exit' and after a failed graceful close.
  if (state.publisher && state.publisherExit === null) {
    try { state.publisher.kill('SIGKILL'); } catch { /* ignore */ }
  }
  for (const pid of pidsUsingProfile(state.profileDir)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* ignore */ }
  }
  if (state.profileDir) {
    try { rmSync(state.profileDir, { recursive: true, force: true, maxRetries: 3 }); } catch { /* ignore */ }
  }
}

// Profiles left by runs that were SIGKILLed: older than 10 minutes and used by no process.
function removeStaleProfiles() {
  try {
    for (const name of readdirSync(tmpdir())) {
      if (!name.startsWith('stompgate-chromium-')) continue;
      const dir = join(tmpdir(), name);
      try {
        if (Date.now() - statSync(dir).mtimeMs < 600000 || pidsUsingProfile(dir).length) continue;
        rmSync(dir, { recursive: true, force: true });
      } catch { /* raced with another runner */ }
    }
  } catch { /* ignore */ }
}

const withTimeout = (p, ms) => Promise.race([p, new Promise((r) => setTimeout(() => r('timeout'), ms))]);

async function cleanup() {
  if (state.publisher && state.publisherExit === null) {
    state.publisher.kill('SIGTERM');
    const r = await withTimeout(new Promise((res) => state.publisher.once('exit', res)), 2000);
    if (r === 'timeout') { try { state.publisher.kill('SIGKILL'); } catch { /* ignore */ } }
  }
  if (state.context) {
    const r = await withTimeout(state.context.close().catch(() => {}), 5000);
    if (r === 'timeout') process.stderr.write('run.mjs: browser did not close in 5 s; killing it\n');
    state.context = null;
  }
  if (state.server) {
    state.server.closeAllConnections?.();
    await withTimeout(new Promise((res) => state.server.close(res)), 1000);
    state.server = null;
  }
  killSync();
  state.profileDir = null;
}

async function finish(result) {
  if (finished) return;
  finished = true;
  clearTimeout(overallTimer);
  try { await cleanup(); } catch (e) { process.stderr.write(`run.mjs: cleanup error: ${e}\n`); }
  result.elapsedMs = Date.now() - T0;
  process.stdout.write(JSON.stringify(result) + '\n');
  if (!result.ok) process.stderr.write(`run.mjs: ${result.scenario}: FAILED: ${result.reason}\n`);
  process.exit(result.ok ? 0 : 1);
}

// GET <sockjs-url>/info from Node: the browser hides the status of a failed cross-origin request.
async function probeSockjsInfo(base) {
  const url = base.replace(/\/+$/, '') + '/info';
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
    const body = (await r.text()).slice(0, 200).replace(/\s+/g, ' ').trim();
    return `GET ${url} -> ${r.status}${body ? ' ' + JSON.stringify(body) : ''}`;
  } catch (e) {
    return `GET ${url} failed: ${e.cause?.code || e.name || e}`;
  }
}

function diagnostics() {
  const tail = (s, n = 1500) => (s.length > n ? '...' + s.slice(-n) : s);
  return {
    consoleErrors: state.consoleErrors.slice(0, 20),
    pageErrors: state.pageErrors.slice(0, 10),
    failedRequests: state.failedRequests.slice(0, 20),
    httpErrors: state.httpErrors.slice(0, 20),
    webSockets: state.webSockets.slice(0, 10),
    publisher: { published: state.publishedCount, exit: state.publisherExit, stderr: tail(state.publisherStderr) },
  };
}

// reason: one line; withHints: append what the browser saw (HTTP errors, console, WebSockets).
async function fail(reason, extra = {}, withHints = false) {
  if (!finished && state.transport?.startsWith('sockjs') && state.sockjsUrl && !extra.sockjsInfo) {
    extra.sockjsInfo = await probeSockjsInfo(state.sockjsUrl);
    reason += ` [SockJS probe: ${extra.sockjsInfo}]`;
  }
  if (withHints) reason += explain();
  return finish({ ok: false, scenario: state.scenario, transport: state.transport, pageUrl: state.pageUrl,
    reason, ...extra, ...diagnostics() });
}

process.on('exit', killSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => fail(`interrupted by ${sig}`));
}
process.on('uncaughtException', (e) => fail(`runner error: ${e && e.stack || e}`));
process.on('unhandledRejection', (e) => fail(`runner error: ${e && e.stack || e}`));
let overallTimer = null;

// ---------------------------------------------------------------- arguments
let opts;
try {
  const { values, positionals } = parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: {
      'page-url': { type: 'string' },
      'serve-dir': { type: 'string' },
      'no-websocket': { type: 'boolean', default: false },
      'sockjs-transport': { type: 'string' },
      'ws-override': { type: 'string' },
      'sockjs-override': { type: 'string' },
      'trust-spki': { type: 'string' },
      'amqp-url': { type: 'string', default: 'amqp://guest:guest@127.0.0.1:5672/%2f' },
      exchange: { type: 'string', default: 'rabbitmq' },
      'routing-key': { type: 'string', default: 'zjj' },
      'publish-interval-ms': { type: 'string', default: '200' },
      publisher: { type: 'string', default: 'pika' },
      'broker-url': { type: 'string' },
      destination: { type: 'string', default: '/topic/chat.general' },
      'timeout-ms': { type: 'string', default: '20000' },
      'overall-timeout-ms': { type: 'string' },
      python: { type: 'string', default: process.env.STOMPGATE_PYTHON || 'python3' },
      chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
      screenshot: { type: 'string' },
      verbose: { type: 'boolean', short: 'v', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) { process.stdout.write(USAGE + '\n'); process.exit(0); }
  if (positionals.length !== 1 || !['seed', 'stompjs7', 'receipt'].includes(positionals[0])) {
    throw new Error(`expected one subcommand, seed, stompjs7 or receipt; got ${JSON.stringify(positionals)}`);
  }
  if (positionals[0] === 'receipt' && !values['broker-url']) throw new Error('receipt needs --broker-url');
  if (values['page-url'] && values['serve-dir']) throw new Error('give --page-url or --serve-dir, not both');
  if (!['pika', 'tutorial'].includes(values.publisher)) throw new Error('--publisher must be pika or tutorial');
  if (values.publisher === 'tutorial' && (values.exchange !== 'rabbitmq' || values['routing-key'] !== 'zjj')) {
    throw new Error('--publisher tutorial publishes to exchange rabbitmq, routing key zjj only');
  }
  for (const k of ['publish-interval-ms', 'timeout-ms', 'overall-timeout-ms']) {
    if (values[k] !== undefined && !(Number(values[k]) > 0)) throw new Error(`--${k} must be a positive number`);
  }
  opts = values;
  state.scenario = positionals[0];
} catch (e) {
  process.stderr.write(USAGE + '\n');
  await finish({ ok: false, scenario: state.scenario ?? null, reason: `bad arguments: ${e.message}` });
}

const timeoutMs = Number(opts['timeout-ms']);
const overallMs = Number(opts['overall-timeout-ms'] ?? timeoutMs + 30000);
overallTimer = setTimeout(() => fail(`overall timeout: run took more than ${overallMs} ms`), overallMs);
const noWebSocket = opts['no-websocket'] || Boolean(opts['sockjs-transport']);
state.transport = noWebSocket ? (opts['sockjs-transport'] ? `sockjs:${opts['sockjs-transport']}` : 'sockjs') : 'websocket';
let sockjsOverride = opts['sockjs-override'] ?? null;
if (!sockjsOverride && opts['ws-override']) {
  const u = new URL(opts['ws-override']);
  sockjsOverride = `${u.protocol === 'wss:' ? 'https:' : 'http:'}//${u.host}/stomp`;
}

// ---------------------------------------------------------------- static server
const MIME = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.map': 'application/json',
  '.md': 'text/markdown; charset=utf-8', '.txt': 'text/plain; charset=utf-8', '.css': 'text/css', '.png': 'image/png' };

function serveDir(root) {
  return new Promise((res, rej) => {
    const srv = createServer((req, resp) => {
      const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
      if (path === '/favicon.ico') { resp.writeHead(204); return resp.end(); }
      if (path === '/' || path === '/demo') { resp.writeHead(302, { location: '/demo/' }); return resp.end(); }
      // The receipt scenario's page, with the npm package's own bundle.
      const extra = { '/receipt/': join(HERE, 'receipt.html'),
        '/receipt/stomp.umd.min.js': join(HERE, 'node_modules', '@stomp', 'stompjs', 'bundles', 'stomp.umd.min.js') }[path];
      if (extra) {
        resp.writeHead(200, { 'content-type': MIME[extname(extra)], 'cache-control': 'no-store' });
        return createReadStream(extra).pipe(resp);
      }
      if (!path.startsWith('/demo/')) { resp.writeHead(404); return resp.end('not found\n'); }
      let file = normalize(join(root, path.slice('/demo/'.length)));
      if (file !== root && !file.startsWith(root + sep)) { resp.writeHead(403); return resp.end(); }
      try { if (statSync(file).isDirectory()) file = join(file, 'index.html'); } catch { /* 404 below */ }
      if (!existsSync(file)) { resp.writeHead(404); return resp.end('not found\n'); }
      resp.writeHead(200, { 'content-type': MIME[extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' });
      createReadStream(file).pipe(resp);
    });
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => res(srv));
  });
}

// ---------------------------------------------------------------- publisher
function startPublisher(bodyTemplate) {
  const script = join(REPO, 'tests', 'python', 'publisher.py');
  const args = [script, '--amqp-url', opts['amqp-url'], '--exchange', opts.exchange, '--routing-key', opts['routing-key'],
    '--body', bodyTemplate, '--interval', String(Number(opts['publish-interval-ms']) / 1000), '--exit-with-parent'];
  const child = spawn(opts.python, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONUNBUFFERED: '1' } });
  state.publisher = child;
  let buf = '';
  let firstResolve;
  const first = new Promise((r) => { firstResolve = r; });
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 1);
      try {
        const ev = JSON.parse(line);
        if (ev.event === 'published') {
          state.published.set(ev.body, ev.t);
          state.publishedCount = ev.n;
          firstResolve('published');
        }
      } catch { /* not ours */ }
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { state.publisherStderr = (state.publisherStderr + d).slice(-8000); });
  child.on('error', (e) => { state.publisherExit = `spawn error: ${e.message}`; firstResolve('exit'); });
  child.on('exit', (code, sig) => { state.publisherExit = sig ? `signal ${sig}` : code; firstResolve('exit'); });
  return first;
}

// The tutorial's send.py, one process per message (as the tutorial's backend runs it), until
// the run finishes. A run that fails (e.g. PRECONDITION_FAILED on its declare) ends the loop.
function startTutorialPublisher(bodyTemplate) {
  const script = join(REPO, 'tests', 'python', 'tutorial_send.py');
  const interval = Number(opts['publish-interval-ms']);
  let firstResolve;
  const first = new Promise((r) => { firstResolve = r; });
  (async () => {
    for (let n = 1; !finished; n++) {
      const body = bodyTemplate.replace('{n}', String(n));
      const t = Date.now();
      const child = spawn(opts.python, [script, body], {
        stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, AMQP_URL: opts['amqp-url'], PYTHONUNBUFFERED: '1' },
      });
      state.publisher = child;
      let stderr = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-8000); });
      const exit = await new Promise((res) => {
        child.on('error', (e) => res(`spawn error: ${e.message}`));
        child.on('exit', (code, sig) => res(sig ? `signal ${sig}` : code));
      });
      if (state.publisher === child) state.publisher = null;
      if (exit !== 0) {
        if (finished) return;
        state.publisherStderr = stderr;
        state.publisherExit = `tutorial_send.py #${n}: ${exit}`;
        firstResolve('exit');
        return;
      }
      state.published.set(body, t);
      state.publishedCount = n;
      firstResolve('published');
      await new Promise((r) => setTimeout(r, interval));
    }
  })();
  return first;
}

// ---------------------------------------------------------------- page instrumentation (init script)
function initScript(cfg) {
  return `(() => {
  const cfg = ${JSON.stringify(cfg)};
  const log = (m) => { try { console.info('[stompgate-test] ' + m); } catch (e) {} };
  // 1. Record every change of the message span and the error element, with epoch-ms timestamps.
  const sg = window.__stompgateTest = { updates: [], errors: [] };
  let lastM = null, lastE = '';
  const watch = () => {
    const t = performance.timeOrigin + performance.now();
    const m = document.getElementById(cfg.messageId), e = document.getElementById(cfg.errorId);
    if (m && m.textContent !== lastM) { lastM = m.textContent; sg.updates.push({ text: lastM, t }); }
    if (e && e.textContent !== lastE) { lastE = e.textContent; if (lastE.trim()) sg.errors.push({ text: lastE, t }); }
  };
  new MutationObserver(watch).observe(document, { subtree: true, childList: true, characterData: true });
  // STOMP milestones, page-side (same clock as the updates): first CONNECTED received, first SUBSCRIBE
  // sent; seen on the WebSocket, in SockJS xhr_send bodies and in stomp.js 2.x debug lines.
  const now = () => performance.timeOrigin + performance.now();
  const sawOut = (data) => {
    if (sg.subscribedAt != null || typeof data !== 'string') return;
    if (data.startsWith('SUBSCRIBE') || data.includes('["SUBSCRIBE') || data.includes(',"SUBSCRIBE')) sg.subscribedAt = now();
  };
  const sawIn = (data) => { if (sg.connectedAt == null && typeof data === 'string' && data.startsWith('CONNECTED')) sg.connectedAt = now(); };
  const origLog = console.log;
  console.log = function (...a) {
    if (typeof a[0] === 'string') { if (a[0].startsWith('<<< CONNECTED')) sawIn('CONNECTED'); if (a[0].startsWith('>>> SUBSCRIBE')) sawOut('SUBSCRIBE'); }
    return origLog.apply(this, a);
  };
  const origXhrSend = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (body) { sawOut(body); return origXhrSend.apply(this, arguments); };
  // 2. No WebSocket: the page's typeof check sends it down the SockJS branch.
  if (cfg.noWebSocket) {
    delete window.WebSocket; delete window.MozWebSocket;
    if (typeof window.WebSocket !== 'undefined') { window.WebSocket = undefined; }
    log('window.WebSocket removed');
  } else {
    // 3. Observe (and with --ws-override, redirect) every WebSocket the page opens.
    const Orig = window.WebSocket;
    class WebSocket extends Orig {
      constructor(url, protocols) {
        const u = cfg.wsOverride || url;
        if (cfg.wsOverride) log('WebSocket ' + url + ' -> ' + u);
        if (protocols === undefined) super(u); else super(u, protocols);
        this.addEventListener('message', (ev) => sawIn(ev.data));
      }
      send(data) { sawOut(data); return super.send(data); }
    }
    window.WebSocket = WebSocket;
  }
  // 4. Wrap the SockJS constructor as soon as sockjs.min.js defines it: force the transport list
  //    and/or the URL. The page itself stays unmodified.
  if (cfg.sockjsTransport || cfg.sockjsOverride) {
    let current;
    Object.defineProperty(window, 'SockJS', {
      configurable: true, enumerable: true,
      get() { return current; },
      set(Orig) {
        if (typeof Orig !== 'function') { current = Orig; return; }
        const Wrapped = function SockJS(url, reserved, options) {
          const o = Object.assign({}, options || {});
          if (cfg.sockjsTransport) o.transports = [cfg.sockjsTransport];
          const u = cfg.sockjsOverride || url;
          log('SockJS ' + url + ' -> ' + u + ' transports=' + JSON.stringify(o.transports || 'all'));
          return new Orig(u, reserved, o);
        };
        Object.assign(Wrapped, Orig);
        Wrapped.prototype = Orig.prototype;
        current = Wrapped;
      },
    });
  }
})();`;
}

// Chromium with a fresh profile, `init` run in every frame before the page's scripts, and the
// page's console, errors, requests and WebSockets recorded for the diagnostics.
async function openBrowser(chromium, init) {
  removeStaleProfiles();
  state.profileDir = mkdtempSync(join(tmpdir(), 'stompgate-chromium-'));
  state.context = await chromium.launchPersistentContext(state.profileDir, {
    executablePath: opts.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(opts['trust-spki'] ? [`--ignore-certificate-errors-spki-list=${opts['trust-spki']}`] : [])],
    handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false,
    timeout: 30000,
  });
  const ctx = state.context;
  if (init) await ctx.addInitScript({ content: init });
  const page = ctx.pages()[0] ?? await ctx.newPage();

  if (opts.verbose) {
    const v = (m) => process.stderr.write(`[${((Date.now() - T0) / 1000).toFixed(3)}] ${m}\n`);
    page.on('console', (m) => v(`console.${m.type()}: ${m.text()}`));
    page.on('request', (r) => v(`request ${r.method()} ${r.url()}${r.postData() ? ' ' + JSON.stringify(r.postData().slice(0, 200)) : ''}`));
    page.on('response', (r) => v(`response ${r.status()} ${r.url()}`));
    page.on('websocket', (ws) => {
      v(`websocket ${ws.url()}`);
      ws.on('framesent', (f) => v(`ws> ${JSON.stringify(String(f.payload).slice(0, 200))}`));
      ws.on('framereceived', (f) => v(`ws< ${JSON.stringify(String(f.payload).slice(0, 200))}`));
      ws.on('close', () => v('ws closed'));
    });
  }
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const where = m.location()?.url;
    state.consoleErrors.push((m.text() + (where ? ` (${where})` : '')).slice(0, 500));
  });
  page.on('pageerror', (e) => state.pageErrors.push(String(e && e.message || e).slice(0, 500)));
  page.on('requestfailed', (r) => state.failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) state.httpErrors.push(`${r.request().method()} ${r.url()} -> ${r.status()}`); });
  page.on('crash', () => fail('page crashed'));
  page.on('websocket', (ws) => {
    const info = { url: ws.url(), closed: false, error: null };
    state.webSockets.push(info);
    ws.on('socketerror', (e) => { info.error = String(e); });
    ws.on('close', () => { info.closed = true; });
  });
  return page;
}

// @stomp/stompjs's receipt specs against --broker-url, from a page of the runner's origin.
async function receiptScenario(chromium) {
  state.transport = 'websocket';
  state.server = await serveDir(resolve(REPO, 'examples', 'demo'));
  const query = new URLSearchParams({ broker: opts['broker-url'], destination: opts.destination });
  state.pageUrl = `http://127.0.0.1:${state.server.address().port}/receipt/?${query}`;
  const page = await openBrowser(chromium, null);
  const resp = await page.goto(state.pageUrl, { waitUntil: 'domcontentloaded', timeout: timeoutMs }).catch((e) => e);
  if (resp instanceof Error) return fail(`cannot open ${state.pageUrl}: ${resp.message.split('\n')[0]}`);
  if (resp && resp.status() >= 400) return fail(`GET ${state.pageUrl} -> HTTP ${resp.status()}`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await page.evaluate(() => window.__receipts || null);
    if (r && r.error) return fail(`ERROR frame: ${r.error}`, { receipts: r.receipts }, true);
    if (r && r.closed) return fail(`connection closed (${r.closed}) after receipts ${JSON.stringify(r.receipts)}`, {}, true);
    if (state.pageErrors.length) return fail(`uncaught page error(s): ${state.pageErrors.join(' | ')}`);
    if (r && r.done) {
      return finish({ ok: true, scenario: state.scenario, transport: state.transport, pageUrl: state.pageUrl,
        receipts: r.receipts, message: r.message, consoleErrors: state.consoleErrors.slice(0, 20) });
    }
    if (Date.now() > deadline) {
      return fail(`timeout after ${timeoutMs} ms: receipts so far ${JSON.stringify(r && r.receipts)}`, {}, true);
    }
    await new Promise((res) => setTimeout(res, 25));
  }
}

// ---------------------------------------------------------------- main
async function main() {
  const { chromium } = await import('playwright-core');
  if (!existsSync(opts.chromium)) {
    return fail(`Chromium not found at ${opts.chromium}; run scripts/ensure-chromium.sh (or pass --chromium)`);
  }
  if (state.scenario === 'receipt') return receiptScenario(chromium);

  // Page URL: given, or our own static server on a random port.
  if (opts['page-url']) {
    state.pageUrl = opts['page-url'];
  } else {
    let dir = opts['serve-dir'] ?? 'examples/demo';
    if (!existsSync(resolve(dir)) && existsSync(resolve(REPO, dir))) dir = resolve(REPO, dir);
    dir = resolve(dir);
    if (!existsSync(dir)) return fail(`--serve-dir ${dir} does not exist`);
    state.server = await serveDir(dir);
    const base = `http://127.0.0.1:${state.server.address().port}/demo/`;
    state.pageUrl = state.scenario === 'stompjs7' ? base + 'stompjs7.html' : base;
  }
  state.sockjsUrl = sockjsOverride || `http://${new URL(state.pageUrl).host}/stomp`;

  // Publisher first: it declares the exchange, which RabbitMQ requires before the page's SUBSCRIBE.
  const tag = randomBytes(6).toString('hex');
  const prefix = `stompgate-${state.scenario}-${tag} #`;
  const publish = opts.publisher === 'tutorial' ? startTutorialPublisher : startPublisher;
  const first = await withTimeout(publish(prefix + '{n}'), 15000);
  if (first !== 'published') {
    return fail(first === 'timeout' ? 'publisher printed nothing within 15 s'
      : `publisher exited before publishing (exit ${state.publisherExit}): ${state.publisherStderr.trim()}`);
  }

  const page = await openBrowser(chromium, initScript({ messageId: 'message', errorId: 'error', noWebSocket,
    wsOverride: opts['ws-override'] ?? null, sockjsTransport: opts['sockjs-transport'] ?? null,
    sockjsOverride: noWebSocket ? sockjsOverride : null }));

  const resp = await page.goto(state.pageUrl, { waitUntil: 'domcontentloaded', timeout: timeoutMs }).catch((e) => e);
  if (resp instanceof Error) return fail(`cannot open ${state.pageUrl}: ${resp.message.split('\n')[0]}`);
  if (resp && resp.status() >= 400) return fail(`GET ${state.pageUrl} -> HTTP ${resp.status()}`);
  state.pageTimeOrigin = await page.evaluate(() => performance.timeOrigin);
  if (!(await page.evaluate(() => Boolean(window.__stompgateTest)))) {
    return fail('the runner\'s init script did not run in the page (syntax error in it?)', {}, true);
  }

  const deadline = Date.now() + timeoutMs;
  let snap = { updates: [], errors: [] };
  for (;;) {
    try {
      snap = await page.evaluate(() => window.__stompgateTest || { updates: [], errors: [] });
    } catch (e) {
      if (!/Execution context was destroyed|navigat/i.test(String(e))) throw e;
    }
    if (snap.errors.length) {
      return fail(`page showed an error: ${snap.errors.map((e) => e.text.trim()).join(' | ')}`, {}, true);
    }
    const hit = snap.updates.find((u) => u.text.startsWith(prefix));
    if (hit) {
      await new Promise((r) => setTimeout(r, 100)); // let a late error surface
      const after = await page.evaluate(() => window.__stompgateTest);
      if (after.errors.length) return fail(`page showed an error after the update: ${after.errors.map((e) => e.text.trim()).join(' | ')}`);
      if (state.pageErrors.length) return fail(`uncaught page error(s): ${state.pageErrors.join(' | ')}`);
      const pub = state.published.get(hit.text);
      const ua = await page.evaluate(() => navigator.userAgent);
      if (opts.screenshot) await page.screenshot({ path: opts.screenshot }).catch(() => {});
      const rel = (t) => (t == null ? null : Math.round(t - state.pageTimeOrigin));
      return finish({
        ok: true, scenario: state.scenario, transport: state.transport, pageUrl: state.pageUrl,
        timeToUpdateMs: rel(hit.t),
        latencyMs: pub != null ? Math.round((hit.t - pub) * 10) / 10 : null,
        connectedMs: rel(after.connectedAt), subscribedMs: rel(after.subscribedAt),
        body: hit.text, publishedCount: state.publishedCount,
        browser: (ua.match(/(?:Headless)?Chrome\/[\d.]+/) || [ua])[0],
        consoleErrors: state.consoleErrors.slice(0, 20),
      });
    }
    if (state.publisherExit !== null) {
      return fail(`publisher exited (exit ${state.publisherExit}) before the page showed a message: ${state.publisherStderr.trim()}`);
    }
    if (Date.now() > deadline) {
      const last = snap.updates.length ? snap.updates[snap.updates.length - 1].text : null;
      if (opts.screenshot) await page.screenshot({ path: opts.screenshot }).catch(() => {});
      return fail(`timeout after ${timeoutMs} ms: the page still shows ${JSON.stringify(last)}, ` +
        `not a body starting ${JSON.stringify(prefix)} (${state.publishedCount} published)`, {}, true);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

// One-line hint from what the browser saw (HTTP errors, failed requests, WebSocket trouble, console).
function explain() {
  const parts = [];
  if (state.httpErrors.length) parts.push(`HTTP errors: ${state.httpErrors.slice(0, 3).join(', ')}`);
  if (state.failedRequests.length) parts.push(`failed requests: ${state.failedRequests.slice(0, 3).join(', ')}`);
  const badWs = state.webSockets.filter((w) => w.error || w.closed);
  if (badWs.length) parts.push(`WebSockets: ${badWs.map((w) => `${w.url}${w.error ? ' error ' + w.error : ''}${w.closed ? ' closed' : ''}`).join(', ')}`);
  if (state.consoleErrors.length) parts.push(`console errors: ${state.consoleErrors.slice(0, 3).join(' | ')}`);
  return parts.length ? ` [${parts.join('; ')}]` : '';
}

await main().catch((e) => fail(`runner error: ${e && e.stack || e}`));

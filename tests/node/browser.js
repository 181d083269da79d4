#!/usr/bin/env node
// The sharing flow as a person does it, in a real browser: headless Chromium (Debian's
// package), driven through playwright-core. Opens the owner's invitation link, types the
// recipient's instance address, logs in on the recipient's instance, presses Accept and waits
// for the final page.
//
// Env:
//   INVITATION_URL  the invitation link, http://alice.localhost:PORT/sharings/<id>/discovery?state=...
//   RECIPIENT_URL   the recipient's instance, e.g. http://bob.localhost:PORT
//   PASSPHRASE      the recipient owner's passphrase
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
//   SCREENSHOT_DIR  where to save a screenshot of the page on failure (none when unset)
//   TIMEOUT_MS      overall limit (default 60000)
//
// Stdout: one JSON line, {"ok":true,"final_text":...,...} or {"ok":false,"error":...,...}.
// Diagnostics on stderr. Exit code 0 only on success.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const started = Date.now();
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 60000);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const steps = []; // what happened, in order, for the summary and the diagnostics
const consoleLines = [];

function log(msg) {
  process.stderr.write(`[browser +${Date.now() - started}ms] ${msg}\n`);
}

function step(name, extra) {
  const s = { step: name, ms: Date.now() - started, ...extra };
  steps.push(s);
  log(`${name}${extra ? ' ' + JSON.stringify(extra) : ''}`);
}

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

// Hard stop: whatever hangs (the browser, a close), the process ends a little after the limit.
const hardStop = setTimeout(() => {
  emit({ ok: false, error: `hard timeout after ${TIMEOUT_MS + 15000} ms`, steps });
  process.exit(1);
}, TIMEOUT_MS + 15000);
hardStop.unref();

let emitted = false;
function emit(summary) {
  if (emitted) return;
  emitted = true;
  process.stdout.write(JSON.stringify(summary) + '\n');
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function sameOrigin(a, b) {
  return new URL(a).origin === new URL(b).origin;
}

async function run(page, env) {
  const remaining = () => Math.max(1000, started + TIMEOUT_MS - Date.now());
  page.setDefaultTimeout(Math.min(30000, TIMEOUT_MS));
  page.setDefaultNavigationTimeout(Math.min(30000, TIMEOUT_MS));

  // 1. The invitation link, on the owner's instance.
  const first = await page.goto(env.invitation, { waitUntil: 'load' });
  step('invitation', { status: first && first.status() });
  if (!first || first.status() !== 200) {
    throw new Error(`the invitation page answered ${first && first.status()}`);
  }
  await page.waitForSelector('#url', { state: 'visible' });

  // 2. Type the recipient's address and continue: the owner's instance sends the request to
  // the recipient and redirects there, to the acceptance page, which sends us to log in.
  await page.fill('#url', env.recipient);
  await Promise.all([
    page.waitForURL((u) => sameOrigin(u.href, env.recipient) && u.pathname === '/auth/login', {
      timeout: remaining(),
    }),
    page.click('#discover'),
  ]);
  step('login page', { url: page.url() });

  // 3. Log in on the recipient's instance; it sends us back to the acceptance page. A wrong
  // passphrase shows the login form again with an error: fail at once with its text.
  await page.fill('#passphrase', env.passphrase);
  await page.click('#login');
  const after = await Promise.race([
    page
      .waitForURL((u) => sameOrigin(u.href, env.recipient) && u.pathname === '/auth/authorize/sharing', {
        timeout: remaining(),
      })
      .then(() => 'authorize'),
    page.waitForSelector('.error', { timeout: remaining() }).then(() => 'error'),
  ]);
  if (after === 'error') {
    const text = (await page.textContent('.error')) || '';
    throw new Error(`login refused: ${text.trim()}`);
  }
  step('authorize page', { url: page.url() });

  // 4. The acceptance page: what is shared, Accept and Refuse.
  await page.waitForSelector('#accept', { state: 'visible' });
  const description = ((await page.textContent('#description')) || '').trim();
  const [finalResponse] = await Promise.all([
    page.waitForResponse(
      (r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/auth/authorize/sharing',
      { timeout: remaining() },
    ),
    page.click('#accept'),
  ]);
  await page.waitForLoadState('load');
  await page.waitForSelector('#message', { timeout: remaining() });
  const finalText = ((await page.textContent('#message')) || '').trim();
  step('final page', { status: finalResponse.status(), url: page.url() });
  if (finalResponse.status() !== 200) {
    throw new Error(`accepting answered ${finalResponse.status()}: ${finalText}`);
  }
  return { description, finalText, finalUrl: page.url() };
}

async function screenshot(page) {
  const dir = process.env.SCREENSHOT_DIR;
  if (!dir || !page) return null;
  try {
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `browser-failure-${process.pid}-${Date.now()}.png`);
    await page.screenshot({ path: file, fullPage: true, timeout: 3000 });
    return file;
  } catch (e) {
    log(`screenshot failed: ${e.message}`);
    return null;
  }
}

async function main() {
  let env;
  try {
    env = {
      invitation: required('INVITATION_URL'),
      recipient: required('RECIPIENT_URL').replace(/\/+$/, ''),
      passphrase: required('PASSPHRASE'),
    };
    if (!fs.existsSync(executablePath)) {
      throw new Error(`no browser at ${executablePath}: install Debian's chromium or set CHROMIUM`);
    }
  } catch (e) {
    emit({ ok: false, error: e.message, steps });
    return 1;
  }

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hearth-chromium-'));
  let context = null;
  let page = null;
  let cdp = null;
  let code = 1;
  try {
    // A persistent context is how playwright takes a user data dir of our choosing (it refuses
    // --user-data-dir in args); the directory is new and removed at the end.
    context = await withTimeout(
      chromium.launchPersistentContext(userDataDir, {
        executablePath,
        headless: true,
        timeout: 30000,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
          // Containers often have a small /dev/shm; Debian's wrapper tries to detect that but
          // its check can break, so ask for it directly.
          '--disable-dev-shm-usage',
          // Never go through a proxy from the environment.
          '--no-proxy-server',
          // *.localhost names reach the test server.
          '--host-resolver-rules=MAP *.localhost 127.0.0.1',
        ],
      }),
      35000,
      'launching chromium',
    );
    const version = context.browser() ? context.browser().version() : null;
    step('launched', { version });
    page = context.pages()[0] || (await context.newPage());
    cdp = await context.newCDPSession(page);
    page.on('console', (m) => {
      if (m.type() !== 'verbose' && m.type() !== 'debug') consoleLines.push(`${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
    page.on('requestfailed', (r) =>
      consoleLines.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure() && r.failure().errorText}`),
    );
    page.on('response', (r) => {
      if (r.request().isNavigationRequest()) {
        steps.push({ nav: `${r.request().method()} ${r.url()}`, status: r.status(), ms: Date.now() - started });
      }
    });

    const result = await withTimeout(run(page, env), Math.max(1000, started + TIMEOUT_MS - Date.now()), 'the flow');
    emit({
      ok: true,
      final_text: result.finalText,
      final_url: result.finalUrl,
      description: result.description,
      chromium: version,
      ms: Date.now() - started,
      steps,
    });
    code = 0;
  } catch (e) {
    log(`FAILED: ${e && e.stack ? e.stack : e}`);
    let url = null;
    let html = null;
    if (page) {
      url = page.url();
      // A navigation still pending (a server that doesn't answer) blocks the screenshot:
      // stop it, so we see the page the browser shows.
      if (cdp) await withTimeout(cdp.send('Page.stopLoading'), 2000, 'stop loading').catch(() => {});
      html = await withTimeout(page.content(), 3000, 'page content').catch(() => null);
    }
    const shot = await screenshot(page);
    if (url) log(`page url: ${url}`);
    if (html) log(`page html (first 3000 chars):\n${html.slice(0, 3000)}`);
    for (const l of consoleLines) log(`console ${l}`);
    emit({
      ok: false,
      error: String(e && e.message ? e.message : e),
      url,
      screenshot: shot,
      ms: Date.now() - started,
      steps,
      console: consoleLines.slice(0, 20),
    });
    code = 1;
  } finally {
    if (context) {
      await withTimeout(context.close(), 10000, 'closing chromium').catch((e) => log(e.message));
    }
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  return code;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    emit({ ok: false, error: `unexpected: ${e && e.stack ? e.stack : e}`, steps });
    process.exit(1);
  },
);

#!/usr/bin/env node
// The owner's web app (GET /) in a real browser: headless Chromium through playwright-core.
// Bob logs in (keyboard only) and keeps his home open; a guest opens alice's invitation for
// bob and gives bob's address; the request appears on bob's page without a reload; bob
// accepts it with the keyboard only; alice's page shows bob ready and the first sync done;
// alice switches bob read-only and back (bob's page follows); adding bob again says he is a
// member already; alice creates an invitation
// link, which a second browser context opens; alice revokes bob, and bob's page shows the
// sharing ended; alice makes a folder, uploads a file (progress bar) and downloads it back,
// shares the folder with an email (its invitation copied and opened elsewhere) and by a link
// with a password (which asks for it; the Links list names the folder), then renames, moves and trashes the file. No console error and no CSP violation anywhere. Screenshots of the
// pages at 375 px and 1280 px go to SCREENSHOT_DIR.
//
// Env: ALICE_URL, BOB_URL, PASSPHRASE, INVITATION_URL (alice's link for bob), SHARING_ID,
// CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR, TIMEOUT_MS (default 90000).
// Stdout: one JSON line {"ok":true,...} or {"ok":false,"error":...}. Exit code 0 on success.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const started = Date.now();
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 90000);
const steps = [];
const problems = []; // console errors, page errors, CSP violations: each fails the run
const consoleLines = [];

function log(msg) {
  process.stderr.write(`[home +${Date.now() - started}ms] ${msg}\n`);
}
function step(name, extra) {
  steps.push({ step: name, ms: Date.now() - started, ...extra });
  log(`${name}${extra ? ' ' + JSON.stringify(extra) : ''}`);
}
function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}
let emitted = false;
function emit(summary) {
  if (emitted) return;
  emitted = true;
  process.stdout.write(JSON.stringify(summary) + '\n');
}
const hardStop = setTimeout(() => {
  emit({ ok: false, error: `hard timeout after ${TIMEOUT_MS + 15000} ms`, steps });
  process.exit(1);
}, TIMEOUT_MS + 15000);
hardStop.unref();

const shotsDir = process.env.SCREENSHOT_DIR;
const shots = [];
async function screenshots(page, name) {
  if (!shotsDir) return;
  fs.mkdirSync(shotsDir, { recursive: true });
  const before = page.viewportSize();
  for (const [label, width] of [['375', 375], ['desktop', 1280]]) {
    await page.setViewportSize({ width, height: 900 });
    const file = path.join(shotsDir, `${name}-${label}.png`);
    await page.screenshot({ path: file, fullPage: true });
    shots.push(file);
  }
  await page.setViewportSize(before);
}

async function newContext(browser, who) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  // Reports CSP violations as console errors (an init script runs whatever the page's CSP).
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  context.on('page', (p) => watch(p, who));
  return context;
}

function watch(page, who) {
  page.on('console', (m) => {
    const line = `${who} ${m.type()}: ${m.text()}`;
    consoleLines.push(line);
    if (m.type() === 'error') problems.push(line);
  });
  page.on('pageerror', (e) => problems.push(`${who} pageerror: ${e.message}`));
}

async function logIn(page, base, passphrase, keyboardOnly) {
  await page.goto(base + '/');
  await page.waitForURL((u) => u.pathname === '/auth/login');
  if (keyboardOnly) {
    // The passphrase field has the focus on arrival (`autofocus`, which the browser applies at
    // its next rendering step, after the load: typed before, the keys went nowhere); Enter
    // submits.
    await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'passphrase');
    await page.keyboard.type(passphrase);
    await Promise.all([page.waitForURL((u) => u.pathname === '/'), page.keyboard.press('Enter')]);
  } else {
    await page.fill('#passphrase', passphrase);
    await Promise.all([page.waitForURL((u) => u.pathname === '/'), page.click('#login')]);
  }
  await page.waitForSelector('#live.on');
}

async function run(browser, env) {
  const remaining = () => Math.max(1000, started + TIMEOUT_MS - Date.now());
  const card = (side) => `${side} article[data-sharing="${env.sharing}"]`;

  const bobContext = await newContext(browser, 'bob');
  const bob = await bobContext.newPage();
  bob.setDefaultTimeout(30000);
  await logIn(bob, env.bob, env.passphrase, true);
  step('bob logged in with the keyboard, live');
  await bob.evaluate(() => {
    window.hearthNotReloaded = true;
  });

  const aliceContext = await newContext(browser, 'alice');
  const alice = await aliceContext.newPage();
  alice.setDefaultTimeout(30000);
  alice.on('dialog', (d) => d.accept());
  await logIn(alice, env.alice, env.passphrase, false);
  step('alice logged in, live');

  // A guest gives bob's address on alice's invitation: the request goes to bob's instance.
  const guestContext = await newContext(browser, 'guest');
  const guest = await guestContext.newPage();
  await guest.goto(env.invitation);
  await guest.fill('#url', env.bob);
  await Promise.all([guest.waitForURL((u) => u.pathname === '/auth/login'), guest.click('#discover')]);
  step('request sent to bob');

  // It appears on bob's page, live (no reload).
  const accept = `${card('#requests')} button[data-action="accept"]`;
  await bob.waitForSelector(accept, { timeout: remaining() });
  if (!(await bob.evaluate(() => window.hearthNotReloaded === true))) throw new Error('bob\'s page was reloaded');
  step('request appeared live on bob\'s page');
  await screenshots(bob, 'bob-request');

  // Keyboard only: Tab to Accept, Enter.
  let focused = false;
  for (let i = 0; i < 80 && !focused; i++) {
    await bob.keyboard.press('Tab');
    focused = await bob.evaluate(
      (sel) => document.activeElement === document.querySelector(sel),
      accept,
    );
  }
  if (!focused) throw new Error('Accept cannot be reached with Tab');
  await bob.keyboard.press('Enter');
  await bob.waitForSelector(`${card('#shared-with-me')} .badge.ok`, { timeout: remaining() });
  step('bob accepted with the keyboard');

  // Alice's page: bob ready, and the first sync done.
  await alice.waitForFunction(
    (sel) => {
      const rows = document.querySelectorAll(sel + ' table.members tbody tr');
      return rows.length > 1 && /ready/.test(rows[1].textContent);
    },
    card('#shared-by-me'),
    { timeout: remaining() },
  );
  await alice.waitForFunction(
    (id) => /healthy/.test((document.getElementById(`sync-${id}-1`) || {}).textContent || ''),
    env.sharing,
    { timeout: remaining() },
  );
  const syncText = (await alice.textContent(`#sync-${env.sharing}-1`)).trim();
  step('first sync complete on alice\'s page', { sync: syncText });
  await screenshots(alice, 'alice-home');
  await screenshots(bob, 'bob-home');

  // Alice creates an invitation link; a second browser context opens it.
  const form = `${card('#shared-by-me')} form[data-action="invite"]`;
  await alice.selectOption(`${form} select[name="access"]`, 'read');
  await alice.fill(`${form} input[name="max"]`, '2');
  await alice.fill(`${form} input[name="days"]`, '3');
  await alice.click(`${form} button[type="submit"]`);
  await alice.waitForSelector('#new-link');
  const link = await alice.inputValue('#new-link');
  const other = await newContext(browser, 'other');
  const otherPage = await other.newPage();
  const opened = await otherPage.goto(link);
  if (!opened || opened.status() !== 200) throw new Error(`the invitation link answered ${opened && opened.status()}`);
  await otherPage.waitForSelector('#url', { state: 'visible' });
  const offered = await otherPage.textContent('body');
  step('invitation link opened in another context', { status: opened.status() });
  await alice.waitForSelector(`${card('#shared-by-me')} button[data-action="revoke-invitation"]`);

  // The read-only switch: bob becomes read-only, then may write again.
  const readonly = `${card('#shared-by-me')} button[data-action="readonly"][data-member="1"]`;
  await alice.click(readonly);
  await alice.waitForFunction(
    (sel) => /read-only/.test(document.querySelectorAll(sel + ' table.members tbody tr')[1].querySelector('td.status').textContent),
    card('#shared-by-me'),
    { timeout: remaining() },
  );
  await bob.waitForFunction(
    (sel) => {
      const row = document.querySelectorAll(sel + ' table.members tbody tr')[1];
      return !!row && /read-only/.test(row.querySelector('td.status').textContent);
    },
    card('#shared-with-me'),
    { timeout: remaining() },
  );
  await alice.click(`${readonly}[data-value="false"]`);
  await alice.waitForFunction(
    (sel) => !/read-only/.test(document.querySelectorAll(sel + ' table.members tbody tr')[1].querySelector('td.status').textContent),
    card('#shared-by-me'),
    { timeout: remaining() },
  );
  step('read-only switched on and off; bob\'s page followed');

  // Adding bob again (his address, as typed on the page) says he is a member already, and
  // makes no second row for him.
  const addForm = `${card('#shared-by-me')} form[data-action="add-member"]`;
  await alice.fill(`${addForm} input[name="who"]`, env.bob);
  await alice.click(`${addForm} button[type="submit"]`);
  await alice.waitForFunction(() => /Already a member/.test(document.getElementById('output').textContent), null, {
    timeout: remaining(),
  });
  const rows = await alice.evaluate(
    (sel) => document.querySelectorAll(sel + ' table.members tbody tr').length,
    card('#shared-by-me'),
  );
  if (rows !== 2) throw new Error(`adding bob again left ${rows} member rows, not 2`);
  step('adding bob again said he is a member already');

  // Alice revokes bob; bob's page shows the sharing ended.
  await alice.click(`${card('#shared-by-me')} button[data-action="revoke-one"][data-member="1"]`);
  await alice.waitForFunction(
    (sel) => /revoked/.test(document.querySelectorAll(sel + ' table.members tbody tr')[1].textContent),
    card('#shared-by-me'),
    { timeout: remaining() },
  );
  await bob.waitForFunction(
    (sel) => /ended/.test((document.querySelector(sel) || {}).textContent || ''),
    card('#shared-with-me'),
    { timeout: remaining() },
  );
  step('alice revoked bob; bob\'s page shows it ended');

  // Files: a folder, an upload with its progress bar, a download.
  // Made with Enter in its field: the list shows it without a click elsewhere.
  await alice.fill('form[data-action="mkdir"] input[name="name"]', 'Photos');
  await alice.press('form[data-action="mkdir"] input[name="name"]', 'Enter');
  await alice.waitForSelector('#files a:has-text("Photos")', { timeout: 5000 });
  await alice.click('#files a:has-text("Photos")');
  await alice.waitForSelector('#files nav.breadcrumb [aria-current="page"]:has-text("Photos")');
  const content = Buffer.from('hello from the browser ' + 'x'.repeat(200000));
  await alice.setInputFiles('form[data-action="upload"] input[type="file"]', {
    name: 'hello.txt',
    mimeType: 'text/plain',
    buffer: content,
  });
  // The progress bar's values as the page sets them (the section is re-rendered afterwards).
  await alice.evaluate(() => {
    window.hearthProgress = [];
    new MutationObserver(() => {
      const bar = document.getElementById('upload-progress');
      if (bar && !bar.hidden) window.hearthProgress.push(Number(bar.value));
    }).observe(document.getElementById('main'), { subtree: true, attributes: true, attributeFilter: ['value', 'hidden'] });
  });
  await alice.click('form[data-action="upload"] button');
  await alice.waitForSelector('#files button[data-action="download"][data-name="hello.txt"]');
  const progress = String(Math.max(-1, ...(await alice.evaluate(() => window.hearthProgress))));
  const [download] = await Promise.all([
    alice.waitForEvent('download'),
    alice.click('#files button[data-action="download"][data-name="hello.txt"]'),
  ]);
  const downloaded = fs.readFileSync(await download.path());
  if (!downloaded.equals(content)) throw new Error('the downloaded file differs from the uploaded one');
  step('folder made, file uploaded and downloaded', { progress });
  await screenshots(alice, 'alice-files');

  // Share the folder with a contact's email; the invitation is copied and opens elsewhere.
  await alice.fill('form[data-action="share-folder-with"] input[name="who"]', 'carol@example.net');
  await alice.click('form[data-action="share-folder-with"] button[type="submit"]');
  const copy = '#shared-by-me article:has(h3:has-text("Photos")) button[data-action="copy"]';
  await alice.waitForSelector(copy, { timeout: remaining() });
  await alice.click(copy);
  await alice.waitForSelector('#new-link');
  const folderInvitation = await alice.inputValue('#new-link');
  const carolPage = await other.newPage();
  const carolOpened = await carolPage.goto(folderInvitation);
  if (!carolOpened || carolOpened.status() !== 200) throw new Error('the folder invitation did not open');
  await carolPage.waitForSelector('#url', { state: 'visible' });
  const folderOffered = (await carolPage.textContent('body')).includes('Photos');
  step('folder shared with an email; its invitation opened', { folderOffered });

  // Share the folder by link, with a password; the link asks for it in another context.
  const byLink = 'form[data-action="share-folder"]';
  await alice.fill(`${byLink} input[name="days"]`, '2');
  await alice.fill(`${byLink} input[name="password"]`, 'open sesame');
  await alice.click(`${byLink} button[type="submit"]`);
  await alice.waitForFunction(() => {
    const i = document.getElementById('new-link');
    return i && /sharecode=/.test(i.value);
  });
  const folderLink = await alice.inputValue('#new-link');
  const stranger = await newContext(browser, 'stranger');
  const strangerPage = await stranger.newPage();
  await strangerPage.goto(folderLink);
  const asksPassword = /password/i.test(await strangerPage.textContent('body'));
  if (!asksPassword) throw new Error('the password link did not ask for its password');
  // A wrong password brings the form back, saying so.
  await strangerPage.fill('#password', 'not it');
  await strangerPage.press('#password', 'Enter');
  await strangerPage.waitForSelector('#password-error', { timeout: remaining() });
  await strangerPage.fill('#password', 'open sesame');
  await Promise.all([strangerPage.waitForLoadState('load'), strangerPage.click('#unlock')]);
  await strangerPage.waitForFunction(() => /Photos|hello\.txt/.test(document.body.textContent));
  await alice.waitForSelector('#links li:has-text("password") button[data-action="revoke-link"]', { timeout: remaining() });
  // The link names the folder by its name and path, not by its id.
  const linkText = await alice.textContent('#links li:has-text("password")');
  const folderId = await alice.getAttribute('#files', 'data-dir');
  if (!/Folder\s+Photos\s+\/Photos/.test(linkText) || linkText.includes(folderId)) {
    throw new Error(`the Links list does not name the folder: ${linkText}`);
  }
  step('folder link with a password opened in another context');
  await screenshots(alice, 'alice-links');

  // Rename, move and trash the file.
  const fileRow = (name) => `#files li.file[data-name="${name}"]`;
  await alice.click(`${fileRow('hello.txt')} summary`);
  await alice.fill(`${fileRow('hello.txt')} form[data-action="rename"] input[name="name"]`, 'notes.txt');
  await alice.click(`${fileRow('hello.txt')} form[data-action="rename"] button`);
  await alice.waitForSelector(fileRow('notes.txt'), { timeout: remaining() });
  const fileId = await alice.getAttribute(fileRow('notes.txt'), 'data-file');
  // The menu closed when the rename was sent; opened again, it stays open while a change made
  // elsewhere (a folder made in another tab) redraws the section live.
  if (await alice.isVisible(`${fileRow('notes.txt')} form[data-action="move"] input[name="path"]`)) {
    throw new Error('the actions menu stayed open after its rename was sent');
  }
  await alice.click(`${fileRow('notes.txt')} summary`);
  await alice.evaluate(() => {
    document.getElementById('files').dataset.before = 'redraw';
  });
  const tab = await aliceContext.newPage();
  await tab.goto(env.alice + '/');
  await tab.fill('form[data-action="mkdir"] input[name="name"]', 'Made elsewhere');
  await tab.press('form[data-action="mkdir"] input[name="name"]', 'Enter');
  await alice.waitForFunction(() => !document.getElementById('files').dataset.before, null, { timeout: remaining() });
  await tab.close();
  if (!(await alice.isVisible(`${fileRow('notes.txt')} form[data-action="move"] input[name="path"]`))) {
    throw new Error('a live redraw closed the actions menu someone had opened');
  }
  await alice.fill(`${fileRow('notes.txt')} form[data-action="move"] input[name="path"]`, '/');
  await alice.click(`${fileRow('notes.txt')} form[data-action="move"] button`);
  await alice.waitForSelector(fileRow('notes.txt'), { state: 'detached', timeout: remaining() });
  await alice.click('#files nav.breadcrumb a:has-text("Home")');
  await alice.waitForSelector(fileRow('notes.txt'), { timeout: remaining() });
  await alice.click(`${fileRow('notes.txt')} summary`);
  await alice.click(`${fileRow('notes.txt')} button[data-action="trash"]`);
  await alice.waitForSelector(fileRow('notes.txt'), { state: 'detached', timeout: remaining() });
  step('file renamed, moved and trashed', { fileId });

  return { syncText, progress, offered: offered.includes('holiday notes'), folderOffered, fileId };
}

async function main() {
  let env;
  try {
    env = {
      alice: required('ALICE_URL').replace(/\/+$/, ''),
      bob: required('BOB_URL').replace(/\/+$/, ''),
      passphrase: required('PASSPHRASE'),
      invitation: required('INVITATION_URL'),
      sharing: required('SHARING_ID'),
    };
  } catch (e) {
    emit({ ok: false, error: e.message });
    return 1;
  }
  let browser = null;
  let code = 1;
  try {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
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
        '--disable-dev-shm-usage',
        '--no-proxy-server',
        '--host-resolver-rules=MAP *.localhost 127.0.0.1',
      ],
    });
    step('launched', { version: browser.version() });
    const result = await Promise.race([
      run(browser, env),
      new Promise((_, reject) => setTimeout(() => reject(new Error('the flow timed out')), TIMEOUT_MS)),
    ]);
    if (problems.length) throw new Error(`console errors or CSP violations: ${problems.join(' | ')}`);
    emit({ ok: true, ...result, screenshots: shots, ms: Date.now() - started, steps });
    code = 0;
  } catch (e) {
    log(`FAILED: ${e && e.stack ? e.stack : e}`);
    for (const l of consoleLines) log(`console ${l}`);
    if (browser && shotsDir) {
      for (const ctx of browser.contexts()) {
        for (const p of ctx.pages()) {
          try {
            fs.mkdirSync(shotsDir, { recursive: true });
            const file = path.join(shotsDir, `failure-${shots.length}.png`);
            await p.screenshot({ path: file, fullPage: true, timeout: 3000 });
            shots.push(file);
          } catch (err) {
            log(`screenshot failed: ${err.message}`);
          }
        }
      }
    }
    emit({ ok: false, error: String(e && e.message ? e.message : e), problems, screenshots: shots, steps });
  } finally {
    if (browser) await browser.close().catch(() => {});
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

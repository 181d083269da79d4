#!/usr/bin/env node
// PouchDB <-> hearth replication interoperability test. Most ids hold characters
// that PouchDB percent-encodes in paths (`/ + % ? #`, space, non-ASCII).
//
//   HEARTH_DB=http://127.0.0.1:PORT/data/io.cozy.notes \
//   HEARTH_TOKEN=... DOCS=1000 node tests/node/replicate.js
//
// Optional: TIMEOUT_MS (default 120000), BULK_GET=0 (simulate a server
// without _bulk_get, forcing PouchDB's per-document open_revs fallback).
//
// Stdout: exactly one JSON summary object. Diagnostics: stderr.
// Exit code 0 only if every check passed.
'use strict';

const { isDeepStrictEqual } = require('node:util');

// Keep stdout for the single summary line, whatever a library prints.
const writeSummary = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
console.log = console.error;
console.info = console.error;
console.warn = console.error;
console.debug = console.error;

const log = (...args) => console.error('[replicate]', ...args);

let finished = false;
function finish(summary) {
  if (finished) return;
  finished = true;
  writeSummary(summary);
  // Let stdout drain before exiting.
  process.exitCode = summary.ok ? 0 : 1;
  setImmediate(() => process.exit(summary.ok ? 0 : 1));
}

function fail(what, err) {
  log(what + ':', err && err.stack ? err.stack : err);
  finish({
    ok: false,
    error: what + ': ' + (err && err.message ? err.message : JSON.stringify(err)),
    status: err && err.status,
    mismatches: [],
  });
}

process.on('unhandledRejection', (err) => fail('unhandled rejection', err));
process.on('uncaughtException', (err) => fail('uncaught exception', err));

// ---------------------------------------------------------------- config ---

const HEARTH_DB = (process.env.HEARTH_DB || '').replace(/\/+$/, '');
const HEARTH_TOKEN = process.env.HEARTH_TOKEN || '';
const DOCS = parseInt(process.env.DOCS || '1000', 10);
const TIMEOUT_MS = parseInt(process.env.TIMEOUT_MS || '120000', 10);
const CONCURRENCY = 8;
// BULK_GET=0 hides _bulk_get from PouchDB to exercise its per-doc open_revs fallback.
const USE_BULK_GET = process.env.BULK_GET !== '0';

if (!HEARTH_DB) {
  fail('config', new Error('HEARTH_DB is not set (e.g. http://127.0.0.1:8080/data/io.cozy.notes)'));
  return;
}
if (!(DOCS > 0)) {
  fail('config', new Error('DOCS must be a positive integer, got ' + process.env.DOCS));
  return;
}

const timer = setTimeout(() => {
  fail('timeout', new Error(`overall timeout of ${TIMEOUT_MS} ms exceeded`));
}, TIMEOUT_MS);

// --------------------------------------------------------------- PouchDB ---

const PouchDB = require('pouchdb');
PouchDB.plugin(require('pouchdb-adapter-memory'));

// Per-endpoint request accounting for the remote, e.g.
// "POST _bulk_get?latest&revs 200": 20
const requests = {};
let requestsWithoutToken = 0;

function classify(url, method) {
  const u = new URL(url);
  const base = new URL(HEARTH_DB + '/');
  let kind;
  if (u.pathname === base.pathname || u.pathname + '/' === base.pathname) {
    kind = '{db}';
  } else if (u.pathname.startsWith(base.pathname)) {
    const rest = u.pathname.slice(base.pathname.length);
    if (rest.startsWith('_local/')) kind = '_local/{id}';
    else if (rest.startsWith('_')) kind = rest;
    else kind = '{docid}';
  } else {
    kind = '{outside-db:' + u.pathname + '}';
  }
  const params = [...new Set([...u.searchParams.keys()])].sort();
  return `${method} ${kind}${params.length ? '?' + params.join('&') : ''}`;
}

async function remoteFetch(url, opts) {
  opts = opts || {};
  // PouchDB's http adapter always passes a Headers instance here.
  if (HEARTH_TOKEN) {
    opts.headers.set('Authorization', 'Bearer ' + HEARTH_TOKEN);
  }
  if (!opts.headers.get('Authorization')) requestsWithoutToken++;
  const key = classify(url, (opts.method || 'GET').toUpperCase());
  if (!USE_BULK_GET && key.startsWith('POST _bulk_get')) {
    // Pretend the server lacks _bulk_get: PouchDB then falls back to
    // GET /{docid}?revs=true&latest=true&open_revs=[...] per document.
    requests[key + ' 404(simulated)'] = (requests[key + ' 404(simulated)'] || 0) + 1;
    return new Response(JSON.stringify({ error: 'not_found', reason: 'simulated: no _bulk_get' }),
      { status: 404, headers: { 'Content-Type': 'application/json' } });
  }
  let res;
  try {
    res = await PouchDB.fetch(url, opts);
  } catch (err) {
    requests[key + ' ERR'] = (requests[key + ' ERR'] || 0) + 1;
    throw err;
  }
  const k = key + ' ' + res.status;
  requests[k] = (requests[k] || 0) + 1;
  return res;
}

const remote = new PouchDB(HEARTH_DB, {
  skip_setup: true, // hearth databases exist implicitly: never PUT the db
  fetch: remoteFetch,
});
const local = new PouchDB('hearth-interop-' + process.pid + '-' + Date.now(), {
  adapter: 'memory',
});

// --------------------------------------------------------------- helpers ---

const pad = Math.max(4, String(DOCS - 1).length);
// Most ids carry characters a path must encode: PouchDB sends them through
// encodeURIComponent (`/` as %2F, `+` as %2B, `%` as %25...), and hearth must decode each
// exactly once on every route replication uses. No suffix holds a '-' (see `n` below).
const ID_SUFFIXES = ['', '/notes/2026', '+a+b', '%25 50%off', '?q=1#frag', ' été', '😀', '%2F'];
const idOf = (side, i) => `${side}-${String(i).padStart(pad, '0')}${ID_SUFFIXES[i % ID_SUFFIXES.length]}`;

const mismatches = [];
function mismatch(m) {
  mismatches.push(m);
  if (mismatches.length <= 20) log('MISMATCH', JSON.stringify(m));
}

async function pool(items, n, fn) {
  let next = 0;
  const out = new Array(items.length);
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}

function chunks(arr, size) {
  const out = [];
  for (let i = 0; i < arr.length; i += size) out.push(arr.slice(i, i + size));
  return out;
}

async function bulk(db, name, docs) {
  for (const part of chunks(docs, 500)) {
    const res = await db.bulkDocs(part);
    const errors = res.filter((r) => r.error);
    if (errors.length) {
      const e = errors[0];
      const first = JSON.stringify({ id: e.id, error: e.error, reason: e.reason, status: e.status });
      throw new Error(`${name} bulkDocs: ${errors.length} errors, first: ${first}` +
        ' (is the remote database empty? this test expects a fresh one)');
    }
  }
}

async function revMap(db) {
  const res = await db.allDocs();
  const m = new Map();
  for (const row of res.rows) m.set(row.id, row.value.rev);
  return { total: res.total_rows, rows: res.rows.length, map: m };
}

async function replicate(label, src, dst, round) {
  const t0 = Date.now();
  const res = await PouchDB.replicate(src, dst, {});
  const ms = Date.now() - t0;
  log(`${label}: status=${res.status} read=${res.docs_read} written=${res.docs_written} ` +
    `failures=${res.doc_write_failures} last_seq=${JSON.stringify(res.last_seq)} ${ms}ms`);
  if (!res.ok || res.status !== 'complete' || res.doc_write_failures || (res.errors && res.errors.length)) {
    mismatch({ what: 'replication failed', label, result: {
      ok: res.ok, status: res.status, doc_write_failures: res.doc_write_failures, errors: res.errors } });
  }
  if (round === 'quiet' && res.docs_written !== 0) {
    mismatch({ what: 'replication not quiet', label, docs_written: res.docs_written });
  }
  return res;
}

async function syncBothWays(tag, round) {
  await replicate(`${tag} remote->local`, remote, local, round);
  await replicate(`${tag} local->remote`, local, remote, round);
}

// get(id, {conflicts, revs}) normalised to {status, rev, body, conflicts, revisions}
async function readWinner(db, id) {
  try {
    const doc = await db.get(id, { conflicts: true, revs: true });
    const body = { ...doc };
    delete body._rev;
    delete body._conflicts;
    delete body._revisions;
    return {
      status: 'ok',
      rev: doc._rev,
      body,
      conflicts: (doc._conflicts || []).slice().sort(),
      revisions: doc._revisions,
    };
  } catch (err) {
    if (err && err.status === 404) return { status: 'not_found', reason: err.reason || err.message };
    throw err;
  }
}

// get(id, {open_revs: 'all'}) normalised to sorted ["rev" | "rev(deleted)"]
async function readLeaves(db, id) {
  try {
    const res = await db.get(id, { open_revs: 'all' });
    return res
      .filter((r) => r.ok)
      .map((r) => r.ok._rev + (r.ok._deleted ? '(deleted)' : ''))
      .sort();
  } catch (err) {
    if (err && err.status === 404) return [];
    throw err;
  }
}

function body(side, i, extra) {
  return { title: `${side} doc ${i}`, n: i, tags: [side, i % 2 ? 'odd' : 'even'], ...extra };
}

// ---------------------------------------------------------- exact bodies ---

const HEADERS = { Authorization: 'Bearer ' + HEARTH_TOKEN, 'Content-Type': 'application/json' };

async function hearth(method, id, text) {
  const res = await fetch(HEARTH_DB + '/' + encodeURIComponent(id), { method, headers: HEADERS, body: text });
  return { status: res.status, text: await res.text() };
}

// A document as hearth renders it: `_id`, `_rev`, then the body's members as written.
function rendered(id, rev, body) {
  const members = JSON.stringify(body).slice(1);
  return `{"_id":${JSON.stringify(id)},"_rev":${JSON.stringify(rev)}` + (members === '}' ? '}' : ',' + members);
}

function withoutMeta(doc) {
  const body = {};
  for (const [k, v] of Object.entries(doc)) if (!k.startsWith('_')) body[k] = v;
  return body;
}

// Bodies whose text JavaScript writes back as it reads it: no integer-like keys (JavaScript
// moves those first), numbers in their shortest form.
function exactBody(i) {
  return {
    zeta: i, alpha: { yak: 2, bee: 3, mid: { z: [1, { y: true, x: null }], a: '' } },
    f: 0.1, g: 1.5e300, e: 1e-7, h: 0.30000000000000004, n: -2.5, m: 12345678.9,
    s: 'é "quoted" \\ back / slash 😀 \n\t\u0001 end', list: ['b', 'a', { d: 1, c: 2 }],
  };
}

async function exactBodies() {
  let checked = 0;
  const compare = async (id, body, what) => {
    const local = await local_get(id);
    const got = await hearth('GET', id);
    const want = rendered(id, local._rev, body);
    checked++;
    if (got.status !== 200 || got.text !== want) mismatch({ what: what + ': hearth text', id, want, got: got.text });
    const localText = JSON.stringify(withoutMeta(local));
    if (localText !== JSON.stringify(body)) mismatch({ what: what + ': PouchDB text', id, want: JSON.stringify(body), got: localText });
  };
  const local_get = (id) => local.get(id);

  // From PouchDB to hearth.
  const fromLocal = [0, 1, 2].map((i) => ({ _id: `exact-local-${i}`, ...exactBody(i) }));
  await bulk(local, 'exact local', fromLocal);
  await replicate('f. exact local->remote', local, remote, 'exact');
  for (const d of fromLocal) await compare(d._id, withoutMeta(d), 'written by PouchDB');

  // From hearth (raw text) to PouchDB.
  const fromRemote = [3, 4].map((i) => [`exact-remote-${i}`, exactBody(i)]);
  for (const [id, body] of fromRemote) {
    const res = await hearth('PUT', id, JSON.stringify(body));
    if (res.status !== 201) mismatch({ what: 'exact PUT refused', id, res });
  }
  // An integer JavaScript cannot hold, in an object whose keys hearth must keep in order.
  const big = '{"order":{"z":1,"a":2},"big":123456789012345678901234567890,"neg":-9223372036854775809}';
  const bigPut = await hearth('PUT', 'exact-big', big);
  if (bigPut.status !== 201) mismatch({ what: 'big PUT refused', res: bigPut });
  await replicate('f. exact remote->local', remote, local, 'exact');
  for (const [id, body] of fromRemote) await compare(id, body, 'written to hearth');

  // Edited in PouchDB (members keep their places), back to hearth.
  const edited = [];
  for (const [id] of [...fromRemote, ...fromLocal.map((d) => [d._id])]) {
    const doc = await local.get(id);
    doc.alpha.bee = 4.25;
    doc.s = doc.s + ' ✓';
    edited.push(doc);
  }
  await bulk(local, 'exact edits', edited);
  await replicate('f. exact edits local->remote', local, remote, 'exact');
  for (const d of edited) await compare(d._id, withoutMeta(d), 'edited in PouchDB');
  // PouchDB holds the big document too (its numbers rounded in its own copy), and sends
  // nothing back for it: hearth's text and revision stay.
  const bigNow = await hearth('GET', 'exact-big');
  const bigRev = JSON.parse(bigNow.text)._rev;
  checked++;
  if (bigNow.text !== rendered('exact-big', bigRev, {}).slice(0, -1) + ',' + big.slice(1)) {
    mismatch({ what: 'big document changed on hearth', got: bigNow.text });
  }
  const bigLocal = await local.get('exact-big');
  if (bigLocal._rev !== bigRev) mismatch({ what: 'big document revision differs', local: bigLocal._rev, remote: bigRev });
  return { checked, bigRev };
}

// ------------------------------------------------------------------ main ---

async function main() {
  const t0 = Date.now();
  log(`remote=${HEARTH_DB} docs=${DOCS} token=${HEARTH_TOKEN ? 'yes' : 'no'}`);

  const info = await remote.info();
  log('remote info:', JSON.stringify(info));

  // a. create DOCS docs on each side
  const remoteIds = [];
  const localIds = [];
  for (let i = 0; i < DOCS; i++) {
    remoteIds.push(idOf('remote', i));
    localIds.push(idOf('local', i));
  }
  await bulk(remote, 'remote', remoteIds.map((id, i) => ({ _id: id, ...body('remote', i) })));
  await bulk(local, 'local', localIds.map((id, i) => ({ _id: id, ...body('local', i) })));
  log(`a. created ${DOCS} remote + ${DOCS} local docs (${Date.now() - t0}ms)`);

  // b. replicate both ways, both sides must hold 2*DOCS identical docs
  await syncBothWays('b.', 'first');
  {
    const [l, r] = await Promise.all([revMap(local), revMap(remote)]);
    if (l.rows !== 2 * DOCS || r.rows !== 2 * DOCS) {
      mismatch({ what: 'doc count after first replication', expected: 2 * DOCS, local: l.rows, remote: r.rows });
    }
    for (const [id, rev] of l.map) {
      if (r.map.get(id) !== rev) mismatch({ what: 'rev after first replication', id, local: rev, remote: r.map.get(id) });
    }
  }

  // c. edits. Interleave ids so each subset mixes remote- and local- docs.
  const all = [];
  for (let i = 0; i < DOCS; i++) all.push(remoteIds[i], localIds[i]);
  const nConflict = Math.max(1, Math.floor(DOCS * 0.3)); // 300 for DOCS=1000
  const nDelEdit = Math.max(1, Math.floor(DOCS * 0.1));
  const nTwice = Math.max(1, Math.floor(DOCS * 0.1));
  const nDelete = Math.max(1, Math.floor(DOCS * 0.05));
  let p = 0;
  const conflictIds = all.slice(p, (p += nConflict));
  const delEditIds = all.slice(p, (p += nDelEdit));
  const twiceIds = all.slice(p, (p += nTwice));
  const deleteIds = all.slice(p, (p += nDelete));

  const revsL = (await revMap(local)).map;
  const revsR = (await revMap(remote)).map;
  const n = (id) => parseInt(id.split('-')[1], 10);
  const expect = new Map(); // id -> {body?, deleted?, conflicted?, revPrefix?}

  // c1. concurrent edits on both sides -> conflict
  await bulk(local, 'local conflict edits', conflictIds.map((id) =>
    ({ _id: id, _rev: revsL.get(id), ...body('edit', n(id), { by: 'local', src: id }) })));
  await bulk(remote, 'remote conflict edits', conflictIds.map((id) =>
    ({ _id: id, _rev: revsR.get(id), ...body('edit', n(id), { by: 'remote', src: id }) })));
  for (const id of conflictIds) expect.set(id, { conflicted: true, revPrefix: '2-' });

  // c2. delete on one side, edit on the other -> the edit wins, no _conflicts
  const delL = [], delR = [], editL = [], editR = [];
  delEditIds.forEach((id, k) => {
    const b = body('survivor', n(id), { src: id });
    if (k % 2) {
      delL.push({ _id: id, _rev: revsL.get(id), _deleted: true });
      editR.push({ _id: id, _rev: revsR.get(id), ...b, by: 'remote' });
      expect.set(id, { body: { _id: id, ...b, by: 'remote' }, revPrefix: '2-' });
    } else {
      delR.push({ _id: id, _rev: revsR.get(id), _deleted: true });
      editL.push({ _id: id, _rev: revsL.get(id), ...b, by: 'local' });
      expect.set(id, { body: { _id: id, ...b, by: 'local' }, revPrefix: '2-' });
    }
  });

  // c3. edit twice on one side only -> 3-xxx, no conflict
  const twiceL = [], twiceR = [];
  twiceIds.forEach((id, k) => (k % 2 ? twiceR : twiceL).push(id));
  // c4. delete on one side only -> deleted on both
  deleteIds.forEach((id, k) => {
    if (k % 2) delR.push({ _id: id, _rev: revsR.get(id), _deleted: true });
    else delL.push({ _id: id, _rev: revsL.get(id), _deleted: true });
    expect.set(id, { deleted: true, revPrefix: '2-' });
  });

  await bulk(local, 'local deletes', delL);
  await bulk(remote, 'remote deletes', delR);
  await bulk(local, 'local edits', editL);
  await bulk(remote, 'remote edits', editR);

  for (const [db, name, ids, revs] of [[local, 'local', twiceL, revsL], [remote, 'remote', twiceR, revsR]]) {
    const first = ids.map((id) => ({ _id: id, _rev: revs.get(id), ...body('twice', n(id), { step: 1, by: name }) }));
    const res1 = await db.bulkDocs(first);
    const second = ids.map((id, k) => ({ _id: id, _rev: res1[k].rev, ...body('twice', n(id), { step: 2, by: name }) }));
    await bulk(db, name + ' second edits', second);
    for (const id of ids) expect.set(id, { body: { _id: id, ...body('twice', n(id), { step: 2, by: name }) }, revPrefix: '3-' });
  }
  log(`c. edits: ${conflictIds.length} both sides, ${delEditIds.length} delete-vs-edit, ` +
    `${twiceIds.length} twice on one side, ${deleteIds.length} deleted on one side`);

  // d. replicate both ways, twice; the second round must write nothing
  await syncBothWays('d. round 1', 'edits');
  await syncBothWays('d. round 2', 'quiet');

  // e. verify
  const [l, r] = await Promise.all([revMap(local), revMap(remote)]);
  const expectedLive = 2 * DOCS - deleteIds.length;
  if (l.total !== r.total || l.rows !== r.rows) {
    mismatch({ what: 'allDocs totals differ', local: { total_rows: l.total, rows: l.rows }, remote: { total_rows: r.total, rows: r.rows } });
  }
  if (l.rows !== expectedLive) mismatch({ what: 'local live doc count', expected: expectedLive, got: l.rows });
  if (r.rows !== expectedLive) mismatch({ what: 'remote live doc count', expected: expectedLive, got: r.rows });
  for (const [id, rev] of l.map) {
    if (r.map.get(id) !== rev) mismatch({ what: 'allDocs rev differs', id, local: rev, remote: r.map.get(id) });
  }
  for (const [id, rev] of r.map) {
    if (!l.map.has(id)) mismatch({ what: 'allDocs rev differs', id, local: undefined, remote: rev });
  }

  const ids = [...new Set([...all, ...l.map.keys(), ...r.map.keys()])].sort();
  let conflicted = 0;
  let deleted = 0;
  const conflictSet = new Set(conflictIds);
  await pool(ids, CONCURRENCY, async (id) => {
    const [wl, wr, ll, lr] = await Promise.all([
      readWinner(local, id), readWinner(remote, id), readLeaves(local, id), readLeaves(remote, id),
    ]);
    const exp = expect.get(id);
    if (wl.status !== wr.status) {
      mismatch({ what: 'existence differs', id, local: wl.status, remote: wr.status });
      return;
    }
    if (!isDeepStrictEqual(ll, lr)) mismatch({ what: 'leaf revisions differ', id, local: ll, remote: lr });
    if (wl.status === 'not_found') {
      deleted++;
      // The 404 reason is not compared: CouchDB says "deleted", pouchdb-server
      // says "missing" for a deleted doc. The deleted leaf (open_revs=all,
      // compared above) is what proves both sides agree on the deletion.
      if (!exp || !exp.deleted) mismatch({ what: 'unexpectedly missing/deleted', id, reason: wl.reason });
      else if (!(ll.length === 1 && ll[0].startsWith(exp.revPrefix) && ll[0].endsWith('(deleted)'))) {
        mismatch({ what: 'deleted leaf unexpected', id, leaves: ll });
      }
      return;
    }
    if (wl.rev !== wr.rev) mismatch({ what: '_rev differs', id, local: wl.rev, remote: wr.rev });
    if (!isDeepStrictEqual(wl.body, wr.body)) mismatch({ what: 'body differs', id, local: wl.body, remote: wr.body });
    if (!isDeepStrictEqual(wl.conflicts, wr.conflicts)) {
      mismatch({ what: '_conflicts differ', id, local: wl.conflicts, remote: wr.conflicts });
    }
    if (!isDeepStrictEqual(wl.revisions, wr.revisions)) {
      mismatch({ what: '_revisions differ', id, local: wl.revisions, remote: wr.revisions });
    }
    if (wl.conflicts.length && wr.conflicts.length) conflicted++;
    if (conflictSet.has(id)) {
      if (wl.conflicts.length !== 1 || wr.conflicts.length !== 1) {
        mismatch({ what: 'expected exactly one conflict', id, local: wl.conflicts, remote: wr.conflicts });
      }
      if (wl.body.src !== id || !['local', 'remote'].includes(wl.body.by)) {
        mismatch({ what: 'conflict winner body unexpected', id, body: wl.body });
      }
    } else if (wl.conflicts.length || wr.conflicts.length) {
      mismatch({ what: 'unexpected _conflicts', id, local: wl.conflicts, remote: wr.conflicts });
    }
    if (exp && exp.deleted) mismatch({ what: 'expected deleted', id, rev: wl.rev });
    if (exp && exp.body && !isDeepStrictEqual(wl.body, exp.body)) {
      mismatch({ what: 'body not the expected edit', id, expected: exp.body, got: wl.body });
    }
    const prefix = exp ? exp.revPrefix : '1-';
    if (!wl.rev.startsWith(prefix)) mismatch({ what: 'unexpected rev generation', id, expected: prefix, got: wl.rev });
  });

  if (conflicted < conflictIds.length) {
    mismatch({ what: 'too few conflicted docs', expected: conflictIds.length, got: conflicted });
  }
  // PouchDB hides some server failures (e.g. a failing _bulk_get makes it
  // fall back to per-doc GETs), so flag them from the request accounting.
  for (const [k, count] of Object.entries(requests)) {
    const status = k.slice(k.lastIndexOf(' ') + 1);
    if (status === 'ERR' || /^5/.test(status)) mismatch({ what: 'server error', request: k, count });
    if (USE_BULK_GET && k.startsWith('POST _bulk_get') && !/^2/.test(status)) {
      mismatch({ what: '_bulk_get failed (PouchDB fell back to per-doc GETs)', request: k, count });
    }
  }
  if (HEARTH_TOKEN && requestsWithoutToken) {
    mismatch({ what: 'requests sent without Authorization header', count: requestsWithoutToken });
  }

  // f. exact bodies: key order at every depth, floats and strings come back as written,
  // both ways. (Integers beyond 2^53 cannot live in PouchDB's JavaScript numbers: the one
  // written to hearth below must stay exact there, which tests/pouchdb.rs checks.)
  const exact = await exactBodies();
  log(`f. exact bodies: ${exact.checked} documents compared as text`);

  const elapsed = Date.now() - t0;
  log('remote requests (method endpoint?params status: count):');
  for (const k of Object.keys(requests).sort()) log('  ' + k + ': ' + requests[k]);
  log(`done in ${elapsed}ms: ${ids.length} ids compared, ${conflicted} conflicted, ${deleted} deleted, ` +
    `${mismatches.length} mismatches`);

  clearTimeout(timer);
  finish({
    ok: mismatches.length === 0,
    docs: ids.length,
    conflicted,
    deleted,
    compared: ids.length,
    elapsed_ms: elapsed,
    exact_checked: exact.checked,
    big_rev: exact.bigRev,
    mismatch_count: mismatches.length,
    mismatches: mismatches.slice(0, 20),
    requests,
    // The ids both sides hold alive, for the caller to check against hearth's own store.
    live_ids: [...r.map.keys()].sort(),
  });
}

main().catch((err) => fail('error', err));

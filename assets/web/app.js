// hearth's owner page: progressive enhancement of the server-rendered home (src/http/home.rs).
// It acts only through the public API with a short-lived app token that the session obtains
// from POST /auth/session/token (CSRF token in X-CSRF-Token), listens to /realtime/events,
// and re-reads the page's sections from the server whenever something changes.
'use strict';

(function () {
  const meta = document.querySelector('meta[name="hearth-csrf"]');
  if (!meta) return;
  const csrf = meta.content;
  let token = null;
  let tokenUntil = 0;
  let uploading = 0;

  function toLogin() {
    location.href = '/auth/login?redirect=' + encodeURIComponent(location.pathname + location.search);
  }

  async function getToken() {
    if (token && Date.now() < tokenUntil - 60000) return token;
    const r = await fetch('/auth/session/token', {
      method: 'POST',
      headers: { 'X-CSRF-Token': csrf },
      credentials: 'same-origin',
    });
    if (r.status === 401) {
      toLogin();
      throw new Error('The session ended: log in again.');
    }
    if (!r.ok) throw new Error('Could not get an app token (' + r.status + ').');
    const j = await r.json();
    token = j.access_token;
    tokenUntil = Date.now() + j.expires_in * 1000;
    return token;
  }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ Authorization: 'Bearer ' + (await getToken()) }, extraHeaders || {});
    let payload = body;
    if (body !== undefined && !(body instanceof Blob)) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const r = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
    const text = await r.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (e) {
      json = null;
    }
    if (!r.ok) throw new Error((json && (json.reason || json.error)) || 'HTTP ' + r.status);
    return json;
  }

  const output = document.getElementById('output');
  function say(message, isError) {
    output.textContent = '';
    const p = document.createElement('p');
    p.textContent = message;
    if (isError) p.className = 'error';
    output.appendChild(p);
  }

  // A link to copy: shown with a read-only field and a Copy button.
  function offerLink(label, url) {
    output.textContent = '';
    const wrap = document.createElement('div');
    wrap.className = 'newlink';
    const l = document.createElement('label');
    l.textContent = label + ' ';
    const input = document.createElement('input');
    input.readOnly = true;
    input.value = url;
    input.id = 'new-link';
    l.appendChild(input);
    const copy = document.createElement('button');
    copy.type = 'button';
    copy.textContent = 'Copy';
    copy.addEventListener('click', async () => {
      input.select();
      try {
        await navigator.clipboard.writeText(url);
        copy.textContent = 'Copied';
      } catch (e) {
        copy.textContent = 'Selected: press Ctrl+C';
      }
    });
    wrap.appendChild(l);
    wrap.appendChild(document.createTextNode(' '));
    wrap.appendChild(copy);
    output.appendChild(wrap);
    input.focus();
    input.select();
  }

  // What identifies an element across a re-render, to give it the focus back.
  function focusKey(el) {
    if (!el || el === document.body) return null;
    if (el.id) return '#' + CSS.escape(el.id);
    const attrs = ['data-action', 'data-sharing', 'data-member', 'data-file', 'data-invitation', 'data-link'];
    const sel = attrs
      .filter((a) => el.hasAttribute(a))
      .map((a) => '[' + a + '="' + CSS.escape(el.getAttribute(a)) + '"]')
      .join('');
    return sel ? el.tagName.toLowerCase() + sel : null;
  }

  let refreshing = null;
  let again = false;
  async function refresh() {
    if (refreshing) {
      again = true;
      return refreshing;
    }
    refreshing = (async () => {
      do {
        again = false;
        const r = await fetch(location.pathname + location.search, {
          credentials: 'same-origin',
          headers: { Accept: 'text/html' },
        });
        if (r.redirected && new URL(r.url).pathname === '/auth/login') return toLogin();
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
        const active = document.activeElement;
        const key = focusKey(active);
        for (const fresh of doc.querySelectorAll('main > section')) {
          const current = document.getElementById(fresh.id);
          if (!current) continue;
          // Leave a section alone while someone types in it or a file is on its way.
          if (active && current.contains(active) && active.matches('input, select, textarea')) continue;
          if (fresh.id === 'files' && uploading > 0) continue;
          // A menu someone opened stays open: its row is found again by its ids.
          for (const open of current.querySelectorAll('details[open]')) {
            const row = open.parentElement && open.parentElement.closest('[data-file], [data-sharing], [data-member], [data-link]');
            const rowKey = row ? focusKey(row) : null;
            const again = rowKey ? fresh.querySelector(rowKey + ' details') : null;
            if (again) again.open = true;
          }
          current.replaceWith(fresh);
        }
        if (key && !document.body.contains(active)) {
          const again = document.querySelector(key);
          if (again) again.focus();
        }
        await syncStatuses();
      } while (again);
    })().finally(() => {
      refreshing = null;
    });
    return refreshing;
  }

  function bytes(n) {
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let v = n;
    let u = 0;
    while (v >= 1000 && u + 1 < units.length) {
      v /= 1000;
      u += 1;
    }
    return (u ? v.toFixed(1) : String(v)) + ' ' + units[u];
  }

  // A member's sync state (GET /sharings/:id/status): state, documents pending, refused
  // documents with the latest reason, the last error, and file contents still to send.
  function syncText(m, initialSetPending) {
    const rep = m.replication;
    const content = m.content || (rep && rep.content);
    if (!rep && !content) return m.status === 'owner' ? '—' : '';
    const parts = [];
    if (rep) {
      parts.push(m.health || rep.health);
      if (rep.running) parts.push('running');
      parts.push((rep.pending || 0) + ' pending');
      if (initialSetPending) parts.push('initial set still being taken');
      const refused = Array.isArray(rep.refused_docs) ? rep.refused_docs.length : Number(rep.refused_docs) || 0;
      if (refused) {
        const why = rep.last_refusal && rep.last_refusal.reason ? ' (' + rep.last_refusal.reason + ')' : '';
        parts.push(refused + ' refused' + why);
      }
      if (rep.last_error) parts.push('error: ' + rep.last_error);
    }
    if (content && content.last_error) parts.push('files: ' + content.last_error);
    if (content && (content.files_pending || content.bytes_pending)) {
      parts.push('files: ' + (content.files_pending || 0) + ' to send, ' + bytes(content.bytes_pending || 0));
    } else if (content) {
      parts.push('files up to date');
    }
    return parts.join(' · ');
  }

  // Content goes on after the documents, with no event of its own when it ends: while any
  // member has files to send or a sync running, the statuses are read again every 2 s.
  let busy = false;
  setInterval(() => {
    if (busy && !document.hidden) syncStatuses().catch(() => {});
  }, 2000);

  async function syncStatuses() {
    let anyBusy = false;
    const cards = document.querySelectorAll('#shared-by-me article[data-sharing], #shared-with-me article[data-sharing]');
    await Promise.all(
      Array.from(cards).map(async (card) => {
        const id = card.getAttribute('data-sharing');
        try {
          const st = await api('GET', '/sharings/' + encodeURIComponent(id) + '/status');
          const taking = st.data.attributes.initial_set_pending === true;
          if (taking) anyBusy = true;
          for (const m of st.data.attributes.members) {
            const cell = document.getElementById('sync-' + id + '-' + m.index);
            if (!cell) continue;
            cell.textContent = syncText(m, taking) || '—';
            const content = m.content || (m.replication && m.replication.content);
            if ((content && (content.files_pending || content.bytes_pending)) || (m.replication && m.replication.running)) {
              anyBusy = true;
            }
            const h = m.health || (m.replication && m.replication.health);
            cell.className = 'sync' + (h ? ' health-' + h : '');
          }
        } catch (e) {
          // The card shows "—" until the status can be read.
        }
      }),
    );
    busy = anyBusy;
  }

  function sharingPath(el, rest) {
    return '/sharings/' + encodeURIComponent(el.getAttribute('data-sharing')) + rest;
  }

  const clicks = {
    async accept(b) {
      await api('POST', sharingPath(b, '/accept'), { digest: b.getAttribute('data-digest') });
      return 'You accepted the sharing.';
    },
    async refuse(b) {
      await api('POST', sharingPath(b, '/refuse'));
      return 'You refused the sharing.';
    },
    async readonly(b) {
      const path = sharingPath(b, '/recipients/' + b.getAttribute('data-member') + '/readonly');
      await api(b.getAttribute('data-value') === 'true' ? 'POST' : 'DELETE', path);
      return 'Access changed.';
    },
    async 'revoke-one'(b) {
      if (!confirm('Revoke this member?')) return null;
      await api('DELETE', sharingPath(b, '/recipients/' + b.getAttribute('data-member')));
      return 'Member revoked.';
    },
    async 'revoke-all'(b) {
      if (!confirm('Revoke everyone and end this sharing?')) return null;
      await api('DELETE', sharingPath(b, '/recipients'));
      return 'Sharing revoked.';
    },
    async leave(b) {
      if (!confirm('Leave this sharing?')) return null;
      await api('DELETE', sharingPath(b, '/recipients/self'));
      return 'You left the sharing.';
    },
    async sync(b) {
      await api('POST', sharingPath(b, '/sync'));
      return 'Sync started.';
    },
    async 'revoke-invitation'(b) {
      await api('DELETE', sharingPath(b, '/invitations/' + encodeURIComponent(b.getAttribute('data-invitation'))));
      return 'Invitation link revoked.';
    },
    async 'revoke-link'(b) {
      await api('DELETE', '/permissions/' + encodeURIComponent(b.getAttribute('data-link')));
      return 'Link revoked.';
    },
    async copy(b) {
      offerLink('Invitation link', b.getAttribute('data-link-url'));
      return null;
    },
    async trash(b) {
      await api('DELETE', '/files/' + encodeURIComponent(b.getAttribute('data-file')));
      return 'Moved to the trash.';
    },
    async download(b) {
      const r = await fetch('/files/download/' + encodeURIComponent(b.getAttribute('data-file')), {
        headers: { Authorization: 'Bearer ' + (await getToken()) },
      });
      if (!r.ok) throw new Error('Download failed (' + r.status + ').');
      const url = URL.createObjectURL(await r.blob());
      const a = document.createElement('a');
      a.href = url;
      a.download = b.getAttribute('data-name');
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      return null;
    },
  };

  function currentDir() {
    const f = document.getElementById('files');
    return f ? f.getAttribute('data-dir') : 'io.cozy.files.root-dir';
  }

  function upload(dir, file, progress) {
    return getToken().then(
      (t) =>
        new Promise((resolve, reject) => {
          const xhr = new XMLHttpRequest();
          const q = '?Type=file&Name=' + encodeURIComponent(file.name);
          xhr.open('POST', '/files/' + encodeURIComponent(dir) + q);
          xhr.setRequestHeader('Authorization', 'Bearer ' + t);
          if (file.type) xhr.setRequestHeader('Content-Type', file.type);
          xhr.upload.addEventListener('progress', (e) => {
            if (e.lengthComputable) progress(e.loaded / e.total);
          });
          xhr.addEventListener('load', () => {
            if (xhr.status >= 200 && xhr.status < 300) return resolve();
            let reason = 'HTTP ' + xhr.status;
            try {
              reason = JSON.parse(xhr.responseText).reason || reason;
            } catch (e) {
              // keep the status
            }
            reject(new Error(file.name + ': ' + reason));
          });
          xhr.addEventListener('error', () => reject(new Error(file.name + ': the upload failed')));
          xhr.send(file);
        }),
    );
  }

  // An email, or the address of a hearth instance.
  function recipientOf(text) {
    const who = text.trim();
    return /^https?:\/\//.test(who) ? { instance: who } : { email: who };
  }

  const submits = {
    async invite(f) {
      const days = Number(f.elements.days.value);
      const body = {
        permissions: [f.elements.access.value],
        max_accepted_users: Number(f.elements.max.value),
        expires_in: days * 86400,
      };
      const j = await api('POST', sharingPath(f, '/invitations'), body);
      offerLink('Invitation link', j.data.attributes.link);
      return null;
    },
    async mkdir(f) {
      const q = '?Type=directory&Name=' + encodeURIComponent(f.elements.name.value);
      await api('POST', '/files/' + encodeURIComponent(currentDir()) + q);
      f.reset();
      return 'Folder created.';
    },
    async upload(f) {
      const files = Array.from(f.elements.file.files);
      const bar = document.getElementById('upload-progress');
      const total = files.reduce((n, x) => n + x.size, 0) || 1;
      let done = 0;
      uploading += 1;
      bar.hidden = false;
      bar.value = 0;
      try {
        for (const file of files) {
          await upload(currentDir(), file, (part) => {
            bar.value = Math.round(((done + part * file.size) / total) * 100);
          });
          done += file.size;
        }
        bar.value = 100;
      } finally {
        uploading -= 1;
      }
      f.reset();
      return files.length + ' file(s) uploaded.';
    },
    async 'add-member'(f) {
      const j = await api('POST', sharingPath(f, '/recipients'), {
        data: { type: 'io.cozy.sharings', relationships: { recipients: { data: [recipientOf(f.elements.who.value)] } } },
      });
      const links = (j && j.meta && j.meta.invitations) || [];
      const outcome = ((j && j.meta && j.meta.recipients) || [])[0];
      f.reset();
      // On a received open sharing, the owner answers the invitation to pass on.
      if (links.length) {
        offerLink('Invitation link', links[0].invitation);
        return null;
      }
      // Someone already there is never added twice (see POST /sharings/:id/recipients).
      if (outcome && outcome.outcome === 'already_member') return 'Already a member of this sharing: nothing to send.';
      if (outcome && outcome.outcome === 'invited_again') {
        return 'Already invited: the same invitation was sent again if mail is set up; else copy it from the members list.';
      }
      return 'Added. Copy the invitation from the members list if no mail was sent.';
    },
    async 'share-folder-with'(f) {
      const who = f.elements.who.value.trim();
      const recipient = recipientOf(who);
      const name = document.querySelector('.breadcrumb [aria-current]');
      const rule = {
        title: name ? name.textContent : 'Folder',
        doctype: 'io.cozy.files',
        values: [currentDir()],
        add: 'sync',
        update: 'sync',
        remove: 'sync',
      };
      const rels = {};
      rels[f.elements.access.value === 'read' ? 'read_only_recipients' : 'recipients'] = { data: [recipient] };
      await api('POST', '/sharings/', {
        data: {
          type: 'io.cozy.sharings',
          attributes: { description: rule.title, rules: [rule] },
          relationships: rels,
        },
      });
      f.reset();
      // An address is never mailed, and its instance hears of the sharing only once the
      // invitation is opened (see the README's "The owner's page").
      if (recipient.instance) {
        return 'Folder shared with ' + who + ': copy the invitation under "Shared by me" and send it to them; their instance gets the request when they open it.';
      }
      return 'Folder shared with ' + who + '. Copy the invitation from "Shared by me" if no mail was sent.';
    },
    async 'share-folder'(f) {
      const attributes = {
        permissions: { files: { type: 'io.cozy.files', verbs: ['GET'], values: [currentDir()] } },
      };
      if (f.elements.password.value) attributes.password = f.elements.password.value;
      const ttl = Number(f.elements.days.value) + 'D';
      const j = await api('POST', '/permissions?codes=link&ttl=' + ttl, {
        data: { type: 'io.cozy.permissions', attributes },
      });
      const code = j.data.attributes.codes.link;
      offerLink('Folder link', location.origin + '/public/?sharecode=' + encodeURIComponent(code));
      f.reset();
      return null;
    },
    async rename(f) {
      const id = f.getAttribute('data-file');
      await api('PATCH', '/files/' + encodeURIComponent(id), { data: { attributes: { name: f.elements.name.value } } });
      return 'Renamed.';
    },
    async move(f) {
      const id = f.getAttribute('data-file');
      const target = await api('GET', '/files/metadata?Path=' + encodeURIComponent(f.elements.path.value));
      await api('PATCH', '/files/' + encodeURIComponent(id), { data: { attributes: { dir_id: target.data.id } } });
      return 'Moved.';
    },
  };

  async function run(kind, handlers, el) {
    const handler = handlers[kind];
    if (!handler) return;
    el.setAttribute('aria-busy', 'true');
    // An action chosen from a menu closes the menu, as a native menu does, before any
    // live redraw (which keeps open menus open) can see it.
    const menu = el.closest('details');
    if (menu) {
      menu.open = false;
      const summary = menu.querySelector('summary');
      if (summary && menu.contains(document.activeElement)) summary.focus();
    }
    try {
      const message = await handler(el);
      if (message) say(message, false);
      // A form sent with Enter keeps the focus in its input, and refresh() leaves a section
      // alone while someone types in it: the form is done, so its section may be redrawn.
      // The focus moves to the form's button, as after a click.
      const typing = document.activeElement;
      if (el.tagName === 'FORM' && el.contains(typing) && typing.matches('input, select, textarea')) {
        const button = el.querySelector('button[type="submit"], button:not([type])');
        if (button) button.focus();
      }
      await refresh();
      // The control is gone (an accepted request, a revoked member): keyboard users continue
      // from the message that says what happened.
      if (!document.body.contains(el) && !document.getElementById('new-link')) output.focus();
    } catch (e) {
      say(e.message || String(e), true);
    } finally {
      el.removeAttribute('aria-busy');
    }
  }

  document.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (!b) return;
    e.preventDefault();
    run(b.getAttribute('data-action'), clicks, b);
  });
  document.addEventListener('submit', (e) => {
    const f = e.target.closest('form[data-action]');
    if (!f) return;
    e.preventDefault();
    run(f.getAttribute('data-action'), submits, f);
  });

  // Live updates: any change refreshes the page's sections (at most a few times a second).
  const live = document.getElementById('live');
  let pending = null;
  function soon() {
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      refresh().catch(() => {});
    }, 150);
  }
  function connect() {
    const source = new EventSource('/realtime/events');
    source.addEventListener('ready', () => {
      live.textContent = 'Live';
      live.className = 'live on';
    });
    for (const name of ['change', 'sharing', 'sync']) source.addEventListener(name, soon);
    source.addEventListener('error', () => {
      live.textContent = 'Reconnecting…';
      live.className = 'live';
    });
  }
  connect();
  syncStatuses();
})();

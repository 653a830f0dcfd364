// The console's small amount of JavaScript: live sprite status, checkpoint progress, and the
// live "Authorized Sprites" list. Every page works without it; this only saves reloads.
(() => {
  'use strict';
  const base = document.body.dataset.base || '';
  const csrf = document.body.dataset.csrf || '';
  const api = (p) => `${base}/api/v1${p}`;

  // Reads an NDJSON response line by line.
  async function lines(resp, onLine) {
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) { try { onLine(JSON.parse(line)); } catch (_) { /* not JSON: skip */ } }
      }
    }
  }

  function setStatus(el, status) {
    if (!el || !status || el.textContent === status) return;
    el.textContent = status;
    el.className = `status ${status}`;
  }

  // Live status: the API's watch stream (the same one the JS SDK's watchSprites reads).
  async function watch(prefix, onEvent) {
    for (;;) {
      try {
        const q = prefix ? `?prefix=${encodeURIComponent(prefix)}` : '';
        const resp = await fetch(api(`/sprites${q}`), { headers: { Accept: 'application/x-ndjson' } });
        if (resp.status === 401) return;
        if (resp.ok) await lines(resp, onEvent);
      } catch (_) { /* the server restarted or the network blinked: try again */ }
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  const list = document.getElementById('sprite-list');
  if (list) {
    watch('', (ev) => {
      if (!ev.name) return;
      let row = list.querySelector(`tr[data-sprite="${CSS.escape(ev.name)}"]`);
      if (!row) {
        row = document.createElement('tr');
        row.dataset.sprite = ev.name;
        const a = document.createElement('a');
        a.href = `${base}/sprites/${encodeURIComponent(ev.name)}`;
        a.textContent = ev.name;
        const td = document.createElement('td'); td.appendChild(a);
        const st = document.createElement('td'); const span = document.createElement('span'); span.className = 'status'; span.dataset.status = ''; st.appendChild(span);
        row.append(td, st);
        list.appendChild(row);
        document.getElementById('no-sprites')?.remove();
      }
      setStatus(row.querySelector('[data-status]'), ev.status);
    });
  }

  const one = document.querySelector('[data-live-sprite]');
  if (one) {
    const name = one.dataset.liveSprite;
    watch(name, (ev) => { if (ev.name === name) setStatus(one, ev.status); });
  }

  // Checkpoint and restore forms: the progress lines as they come, then the page again.
  for (const form of document.querySelectorAll('form[data-stream]')) {
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const out = form.querySelector('output') || form.appendChild(document.createElement('output'));
      out.className = 'progress';
      out.setAttribute('role', 'status');
      const buttons = form.querySelectorAll('button');
      buttons.forEach((b) => { b.disabled = true; });
      const commentField = form.querySelector('[name=comment]');
      let result = null;
      try {
        const resp = await fetch(api(form.dataset.stream), {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
          body: commentField ? JSON.stringify(commentField.value ? { comment: commentField.value } : {}) : undefined,
        });
        if (!resp.ok) {
          const t = await resp.text();
          let m = t; try { const j = JSON.parse(t); m = j.message || j.error || t; } catch (_) { /* text */ }
          result = { err: m };
        } else {
          await lines(resp, (ev) => {
            if (ev.type === 'error') result = { err: ev.error || ev.data };
            else if (ev.type === 'complete') result = { msg: ev.data || 'Done.' };
            else if (ev.data) out.textContent = ev.data;
          });
        }
      } catch (err) {
        result = { err: String(err) };
      }
      result = result || { err: 'the stream ended without a result' };
      const back = new URL(form.dataset.back || location.pathname, location.href);
      if (result.err) back.searchParams.set('err', result.err); else back.searchParams.set('msg', result.msg);
      location.href = back.toString();
    });
  }

  // The connector's "Authorized Sprites": which sprites its saved policy lets in, now.
  const auth = document.querySelector('[data-authorized]');
  if (auth) {
    const id = auth.dataset.authorized;
    const render = (sprites) => {
      const items = sprites.map((s) => {
        const li = document.createElement('li');
        li.textContent = s.name;
        if (s.labels?.length) { const m = document.createElement('span'); m.className = 'muted'; m.textContent = ` (${s.labels.join(', ')})`; li.appendChild(m); }
        return li;
      });
      if (!items.length) { const li = document.createElement('li'); li.className = 'muted'; li.textContent = 'None: the connector is dormant.'; items.push(li); }
      auth.replaceChildren(...items);
    };
    const tick = async () => {
      try {
        const r = await fetch(api(`/oauth/connections/${encodeURIComponent(id)}/sprites`));
        if (r.ok) render((await r.json()).sprites || []);
      } catch (_) { /* next tick */ }
    };
    setInterval(tick, 2000);
  }
})();

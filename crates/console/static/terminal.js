// The browser terminal: xterm.js over the exec WebSocket (TTY mode: raw bytes both ways, JSON
// text frames for session_info, resize and exit). A detached session keeps running in the
// sprite; opening it again replays its scrollback.
(() => {
  'use strict';
  const base = document.body.dataset.base || '';
  const el = document.getElementById('terminal');
  const name = el.dataset.sprite;
  let session = el.dataset.session || '';
  const info = document.getElementById('term-status');
  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000, fontSize: 14 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();
  window.spritesTerm = term; // for tests and the curious
  const enc = new TextEncoder();
  let ws = null;

  function say(text) { info.textContent = text; }

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const q = new URLSearchParams({ tty: 'true', rows: String(term.rows), cols: String(term.cols), stdin: 'true' });
    let path;
    if (session) {
      path = `/sprites/${encodeURIComponent(name)}/exec/${encodeURIComponent(session)}`;
    } else {
      path = `/sprites/${encodeURIComponent(name)}/exec`;
      q.append('cmd', 'bash'); q.append('cmd', '-l'); q.set('path', 'bash');
    }
    ws = new WebSocket(`${proto}://${location.host}${base}/api/v1${path}?${q}`);
    ws.binaryType = 'arraybuffer';
    say(session ? `Attaching to session ${session}…` : 'Starting a shell…');
    ws.onmessage = (m) => {
      if (typeof m.data === 'string') {
        let j; try { j = JSON.parse(m.data); } catch (_) { return; }
        if (j.type === 'session_info') {
          session = String(j.session_id);
          el.dataset.session = session;
          const u = new URL(location.href); u.searchParams.set('session', session); history.replaceState(null, '', u);
          say(`Session ${session}: connected.`);
          ws.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
        } else if (j.type === 'exit') {
          say(`Session ${session} ended (exit ${j.exit_code}).`);
          el.dataset.exited = String(j.exit_code);
        }
        return;
      }
      term.write(new Uint8Array(m.data));
    };
    ws.onclose = (e) => { if (!el.dataset.exited) say(e.code === 1000 ? `Session ${session}: detached.` : `Disconnected (${e.code}${e.reason ? ': ' + e.reason : ''}).`); ws = null; };
  }

  term.onData((d) => { if (ws?.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
  term.onResize(({ cols, rows }) => { if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols, rows })); });
  window.addEventListener('resize', () => fit.fit());
  document.getElementById('detach').addEventListener('click', () => { if (ws) ws.close(1000, 'detached'); });
  document.getElementById('reattach').addEventListener('click', () => { if (!ws && session) { term.reset(); connect(); } });
  connect();
  term.focus();
})();

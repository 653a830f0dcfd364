// The official @fly/sprites client (npm) against a real spritesd: exec, spawn, stdin, TTY,
// sessions, attach with scrollback, kill.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { startServer, collect, sleep } from '../harness.js';

let srv;
let sprite;

before(async () => {
  srv = await startServer();
  await srv.client.createSprite('js');
  sprite = srv.client.sprite('js');
});

after(async () => {
  await srv?.stop();
});

test('execFile returns stdout, stderr and exit code', async () => {
  const r = await sprite.execFile('sh', ['-c', 'echo out; echo err >&2']);
  assert.equal(r.stdout.toString(), 'out\n');
  assert.equal(r.stderr.toString(), 'err\n');
  assert.equal(r.exitCode, 0);
  await assert.rejects(sprite.execFile('sh', ['-c', 'exit 3']), (e) => e.result?.exitCode === 3 || e.exitCode === 3);
  const who = await sprite.execFile('whoami');
  assert.equal(who.stdout.toString(), 'sprite\n');
});

test('execFileHTTP parses the paced frames', async () => {
  const r = await sprite.execFileHTTP('sh', ['-c', 'echo one; echo two >&2; echo three']);
  assert.equal(r.stdout.toString(), 'one\nthree\n');
  assert.equal(r.stderr.toString(), 'two\n');
  assert.equal(r.exitCode, 0);
  const input = await sprite.execFileHTTP('cat', [], { input: 'piped in' });
  assert.equal(input.stdout.toString(), 'piped in');
  await assert.rejects(sprite.execFileHTTP('sh', ['-c', 'exit 9']), (e) => e.result?.exitCode === 9 || e.exitCode === 9);
});

test('execFileHTTP frames stay whole while the event loop is busy', async () => {
  // Busy for 3 ms of every 4: the client reads late, and a merged frame would show as
  // stray stream bytes in the output or a failed exit frame.
  const busy = setInterval(() => { const end = Date.now() + 3; while (Date.now() < end); }, 4);
  try {
    const r = await sprite.execFileHTTP('sh', ['-c', 'seq 1 40000; echo done >&2']);
    let want = '';
    for (let i = 1; i <= 40000; i++) want += `${i}\n`;
    assert.equal(r.stdout.toString(), want);
    assert.equal(r.stderr.toString(), 'done\n');
    assert.equal(r.exitCode, 0);
  } finally {
    clearInterval(busy);
  }
});

test('spawn streams stdout as it is produced', async () => {
  const cmd = sprite.spawn('sh', ['-c', 'for i in 1 2 3; do echo tick $i; sleep 0.2; done']);
  const chunks = [];
  cmd.stdout.on('data', (d) => chunks.push({ t: Date.now(), s: d.toString() }));
  const code = await cmd.wait();
  assert.equal(code, 0);
  assert.equal(chunks.map((c) => c.s).join(''), 'tick 1\ntick 2\ntick 3\n');
  assert.ok(chunks.length >= 2, 'output arrives in several pieces, not at the end');
});

test('stdin round trip through spawn', async () => {
  const cmd = sprite.spawn('sh', ['-c', 'read a; echo "got $a"; cat']);
  const out = collect(cmd.stdout);
  await once(cmd, 'spawn');
  cmd.stdin.write('first\n');
  cmd.stdin.write('rest of it');
  cmd.stdin.end();
  assert.equal(await cmd.wait(), 0);
  assert.equal(out(), 'got first\nrest of it');
});

test('TTY session: detach, list, attach with scrollback, exit', async () => {
  const cmd = sprite.spawn('bash', [], { tty: true, cols: 100, rows: 30 });
  const out = collect(cmd.stdout);
  let sessionId;
  cmd.on('message', (m) => { if (m?.type === 'session_info') sessionId = m.session_id; });
  await once(cmd, 'spawn');
  await sleep(300);
  cmd.stdin.write('echo marker-$((40+2)); stty size\r');
  for (let i = 0; i < 50 && !out().includes('30 100'); i++) await sleep(100);
  assert.match(out(), /marker-42/);
  assert.match(out(), /30 100/);

  const sessions = await sprite.listSessions();
  const mine = sessions.find((s) => s.tty && String(s.command).includes('bash'));
  assert.ok(mine, `session listed: ${JSON.stringify(sessions)}`);
  sessionId = sessionId ?? String(mine.id);

  // Detach by dropping our socket: the TTY session keeps running.
  cmd.wsCmd.close();
  await sleep(300);
  const still = await sprite.listSessions();
  assert.ok(still.some((s) => String(s.id) === String(sessionId)), 'session survives disconnect');

  const again = sprite.attachSession(String(sessionId));
  const replay = collect(again.stdout);
  for (let i = 0; i < 50 && !replay().includes('marker-42'); i++) await sleep(100);
  assert.match(replay(), /marker-42/, 'scrollback replayed on attach');
  again.stdin.write('exit 5\r');
  const code = await again.wait();
  assert.equal(code, 0, 'JS derives TTY exit from the close code 1000');
});

test('killSession signals a running session', async () => {
  const cmd = sprite.createSession('sleep', ['300']);
  await sleep(500);
  const sessions = await sprite.listSessions();
  const s = sessions.find((x) => String(x.command).startsWith('sleep 300'));
  assert.ok(s, JSON.stringify(sessions));
  const stream = await sprite.killSession(String(s.id), 'SIGTERM', '5s');
  const events = [];
  for await (const ev of stream) events.push(ev);
  assert.equal(events[0].type, 'signal');
  assert.equal(events.at(-1).type, 'complete');
  await cmd.wait().catch(() => {});
});

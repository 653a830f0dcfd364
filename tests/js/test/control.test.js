// The official @fly/sprites control mode (spec §4): exec over pooled, multiplexed control
// WebSockets against a real spritesd.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SpritesClient, ControlConnection } from '@fly/sprites';
import { startServer } from '../harness.js';

let srv;
let client;
let sprite;
let cc; // one control socket of our own, outside the SDK's pool

before(async () => {
  srv = await startServer();
  await srv.client.createSprite('jsctl');
  client = new SpritesClient(srv.token, { baseURL: srv.baseURL, controlMode: true });
  sprite = client.sprite('jsctl');
  cc = new ControlConnection(sprite);
  await cc.connect();
});

after(async () => {
  cc?.close();
  sprite?.closeControlConnection();
  await srv?.stop();
});

// Runs one op on a pooled connection and collects what it said.
async function runOp(opts, stdin) {
  const op = await cc.startOp('exec', opts);
  let out = '';
  let err = '';
  const messages = [];
  op.on('stdout', (d) => { out += d.toString(); });
  op.on('stderr', (d) => { err += d.toString(); });
  op.on('message', (m) => messages.push(m));
  if (stdin !== undefined) op.write(Buffer.from(stdin));
  op.sendEOF();
  const code = await op.wait();
  return { code, out, err, messages };
}

test('execFile goes over the control connection', async () => {
  const r = await sprite.execFile('sh', ['-c', 'echo out; echo err >&2']);
  assert.equal(r.stdout, 'out\n');
  assert.equal(r.stderr, 'err\n');
  assert.ok(sprite.hasControlConnection(), 'the pool holds a control socket (no fallback)');
  for (let i = 0; i < 5; i++) {
    const again = await sprite.execFile('echo', [`n${i}`]);
    assert.equal(again.stdout, `n${i}\n`);
  }
});

test('exit codes, stdin, env and dir of an op', async () => {
  const r = await runOp({ cmd: ['sh', '-c', 'cat; echo "$X $(pwd)"; exit 7'], env: ['X=yes'], dir: '/tmp', stdin: true }, 'piped\n');
  assert.equal(r.code, 7, 'op.complete carries the exit code');
  assert.equal(r.out, 'piped\nyes /tmp\n');
  assert.equal(r.messages[0].type, 'session_info');
  // The same socket runs the next ops.
  for (let i = 0; i < 3; i++) {
    const again = await runOp({ cmd: ['sh', '-c', `echo ${i}; exit ${i}`] });
    assert.deepEqual([again.code, again.out], [i, `${i}\n`]);
  }
});

test('a TTY op: raw output, resize as the JS dialect sends it, exit code', async () => {
  const op = await cc.startOp('exec', { cmd: ['sh', '-c', 'sleep 0.5; stty size; exit 3'], tty: true, rows: 24, cols: 80 });
  let out = '';
  op.on('stdout', (d) => { out += d.toString(); });
  op.resize(100, 40); // a binary JSON frame: must resize, not be typed into the terminal
  const code = await op.wait();
  assert.equal(code, 3);
  assert.match(out, /40 100/);
  assert.doesNotMatch(out, /resize/);
});

test('an unknown op is an op.error and leaves the socket usable', async () => {
  const op = await cc.startOp('nope', {});
  const err = await new Promise((resolve) => op.on('error', resolve));
  assert.match(err.message, /unknown op/);
  await op.wait();
  const r = await runOp({ cmd: ['echo', 'still'] });
  assert.equal(r.out, 'still\n');
});

test('concurrent execs get one socket each', async () => {
  const rs = await Promise.all([0, 1, 2, 3].map((i) => sprite.execFile('sh', ['-c', `sleep 0.3; echo ${i}`])));
  assert.deepEqual(rs.map((r) => r.stdout), ['0\n', '1\n', '2\n', '3\n']);
});

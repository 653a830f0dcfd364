// The official @fly/sprites client: port notifications on spawn, watchPorts, proxyPort.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { startServer, sleep } from '../harness.js';

let srv;
let sprite;

before(async () => {
  srv = await startServer();
  await srv.client.createSprite('jsnet');
  sprite = srv.client.sprite('jsnet');
});

after(async () => {
  await srv?.stop();
});

// The JS client reads text frames only in TTY mode (non-TTY it treats every frame as a
// stream frame), so port notifications reach `message` listeners of TTY commands.
test('spawn sees port_opened and port_closed of its own server', async () => {
  const cmd = sprite.spawn('python3', ['-c', 'import socket,time\ns=socket.socket(); s.bind(("0.0.0.0",7077)); s.listen()\ntime.sleep(1.5)\ns.close(); time.sleep(1)'], { tty: true });
  const msgs = [];
  cmd.on('message', (m) => msgs.push(m));
  assert.equal(await cmd.wait(), 0);
  const opened = msgs.find((m) => m.type === 'port_opened');
  assert.ok(opened, JSON.stringify(msgs));
  assert.equal(opened.port, 7077);
  assert.equal(opened.address, '0.0.0.0');
  assert.ok(opened.pid > 0);
  assert.ok(msgs.some((m) => m.type === 'port_closed' && m.port === 7077), JSON.stringify(msgs));
});

test('proxyPort forwards a local port into the sprite', async () => {
  const server = sprite.spawn('python3', ['-c', 'import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0",7078)); s.listen()\nwhile True:\n c,_=s.accept(); d=c.recv(100); c.sendall(b"echo:"+d); c.close()']);
  server.on('error', () => {});
  await sleep(800);
  // A port the kernel says is free now (a random one can collide with an outgoing
  // connection's ephemeral port on a busy machine).
  const probe = net.createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const local = probe.address().port;
  await new Promise((r) => probe.close(r));
  const session = await sprite.proxyPort(local, 7078);
  const reply = await new Promise((resolve, reject) => {
    const sock = net.connect(local, '127.0.0.1', () => sock.write('hi'));
    let data = '';
    sock.on('data', (d) => { data += d; });
    sock.on('end', () => resolve(data));
    sock.on('error', reject);
  });
  assert.equal(reply, 'echo:hi');
  session.close?.();
  server.kill();
});

// The official @fly/sprites filesystem API against a real spritesd (spec §9).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../harness.js';

let srv;
let fs;
let sprite;

before(async () => {
  srv = await startServer();
  await srv.client.createSprite('jsfs');
  sprite = srv.client.sprite('jsfs');
  fs = sprite.filesystem('/home/sprite');
});

after(async () => {
  await srv?.stop();
});

test('write, read, stat, append, rename, copy, chmod, rm', async () => {
  await fs.mkdir('work/deep', { recursive: true });
  await fs.writeFile('work/deep/a.txt', 'hello js\n');
  assert.equal(await fs.readFile('work/deep/a.txt', 'utf8'), 'hello js\n');
  const st = await fs.stat('work/deep/a.txt');
  assert.equal(st.size, 9);
  assert.equal(await fs.exists('work/deep/a.txt'), true);
  assert.equal(await fs.exists('work/deep/missing.txt'), false);
  await fs.appendFile('work/deep/a.txt', 'more\n');
  assert.equal(await fs.readFile('work/deep/a.txt', 'utf8'), 'hello js\nmore\n');
  const names = await fs.readdir('work/deep');
  assert.deepEqual(names.map((n) => (typeof n === 'string' ? n : n.name)), ['a.txt']);
  await fs.rename('work/deep/a.txt', 'work/deep/b.txt');
  await fs.copyFile('work/deep/b.txt', 'work/c.txt');
  await fs.chmod('work/c.txt', 0o600);
  const r = await sprite.execFile('stat', ['-c', '%a %U', '/home/sprite/work/c.txt']);
  assert.equal(r.stdout.toString(), '600 sprite\n');
  await fs.rm('work', { recursive: true });
  assert.equal(await fs.exists('work/c.txt'), false);
  await fs.rm('never-was', { force: true });
  await assert.rejects(fs.readFile('/etc/shadow', 'utf8'));
});

test('watch: subscribe, events for writes and new directories, errors', async () => {
  await fs.mkdir('watched', { recursive: true });
  const watcher = await fs.watch('watched', { recursive: true });
  try {
    const first = await watcher.next();
    assert.deepEqual(first, { type: 'subscribed', paths: ['/home/sprite/watched'] });

    // Reads events until one matches; returns everything seen on the way.
    const until = async (pred) => {
      const seen = [];
      for (;;) {
        const ev = await watcher.next();
        assert.ok(ev, `watcher ended; saw ${JSON.stringify(seen)}`);
        seen.push(ev);
        if (pred(ev)) return seen;
      }
    };
    await fs.writeFile('watched/a.txt', 'hello');
    let seen = await until((e) => e.path === '/home/sprite/watched/a.txt' && e.event === 'write');
    assert.ok(seen.some((e) => e.event === 'create' && e.path === '/home/sprite/watched/a.txt'));
    assert.ok(seen.every((e) => e.type === 'event' && e.path.endsWith('/a.txt')), JSON.stringify(seen));
    const last = seen.at(-1);
    assert.equal(last.size, 5);
    assert.equal(last.isDir, false);
    assert.ok(!Number.isNaN(Date.parse(last.timestamp)));

    await fs.mkdir('watched/sub/inner', { recursive: true });
    seen = await until((e) => e.path === '/home/sprite/watched/sub/inner' && e.event === 'create');
    assert.ok(seen.some((e) => e.path === '/home/sprite/watched/sub' && e.isDir));
    await fs.writeFile('watched/sub/inner/b.txt', 'deep');
    await until((e) => e.path === '/home/sprite/watched/sub/inner/b.txt' && e.event === 'write');
    await fs.rm('watched/a.txt');
    await until((e) => e.path === '/home/sprite/watched/a.txt' && e.event === 'remove');
  } finally {
    watcher.close();
  }
  assert.equal(watcher.isClosed(), true);

  const denied = await sprite.filesystem('/').watch('/root');
  try {
    const ev = await denied.next();
    assert.equal(ev.type, 'error');
    assert.match(ev.message, /\/root: Permission denied/);
    assert.equal(await denied.next(), null, 'nothing to watch: the server closes the socket');
  } finally {
    denied.close();
  }
});

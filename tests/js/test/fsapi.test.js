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

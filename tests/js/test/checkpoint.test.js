// The official @fly/sprites checkpoint calls against a real spritesd (spec §6).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../harness.js';

let srv;
let sprite;

before(async () => {
  srv = await startServer();
  await srv.client.createSprite('jsck');
  sprite = srv.client.sprite('jsck');
});

after(async () => {
  await srv?.stop();
});

async function drain(stream) {
  const msgs = [];
  for await (const m of stream) msgs.push(m);
  return msgs;
}

async function sh(script) {
  const r = await sprite.execFile('sh', ['-c', script]);
  return r.stdout.toString();
}

test('create, list, get, restore', async () => {
  await sh('echo one > ~/f');
  let msgs = await drain(await sprite.createCheckpoint('js first'));
  assert.equal(msgs[0].type, 'info');
  assert.equal(msgs.at(-1).type, 'complete');
  assert.equal(msgs.at(-1).data, 'Checkpoint v0 created successfully');

  await sh('echo two > ~/f && touch ~/extra');
  msgs = await drain(await sprite.createCheckpoint());
  assert.equal(msgs.at(-1).data, 'Checkpoint v1 created successfully');

  const list = await sprite.listCheckpoints();
  assert.deepEqual(list.map((c) => c.id), ['Current', 'v1', 'v0']);
  const v0 = await sprite.getCheckpoint('v0');
  assert.equal(v0.comment, 'js first');
  assert.ok(v0.createTime instanceof Date && !Number.isNaN(v0.createTime.getTime()));
  assert.ok(list[1].createTime >= v0.createTime);

  msgs = await drain(await sprite.restoreCheckpoint('v0'));
  assert.equal(msgs.at(-1).type, 'complete');
  assert.equal(await sh('cat ~/f; ls ~/extra 2>/dev/null || echo none'), 'one\nnone\n');

  await assert.rejects(() => sprite.getCheckpoint('v9'), /not found|404/i);
});

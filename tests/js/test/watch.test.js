// The official @fly/sprites watchSprites (GET /v1/sprites, Accept: application/x-ndjson)
// against a real spritesd: a snapshot line per sprite, then state changes as they happen.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../harness.js';

let srv;

before(async () => {
  srv = await startServer();
  await srv.client.createSprite('jsw-old');
  await srv.client.createSprite('other');
});

after(async () => {
  await srv?.stop();
});

test('watchSprites: snapshot, then a created sprite as it starts', async () => {
  const stream = await srv.client.watchSprites({ prefix: 'jsw-' });
  try {
    const first = await stream.next();
    assert.equal(first.name, 'jsw-old');
    assert.equal(first.status, 'running');
    assert.equal(first.organization.name, 'personal');
    assert.ok(first.organization.running >= 2, JSON.stringify(first));
    assert.ok(first.timestamp instanceof Date && !isNaN(first.timestamp));
    const created = srv.client.createSprite('jsw-new');
    let ev;
    do {
      ev = await stream.next();
      assert.notEqual(ev, null, 'the stream ended');
      assert.notEqual(ev.name, 'other', 'a sprite outside the prefix was sent');
    } while (ev.name !== 'jsw-new');
    assert.equal(ev.status, 'running');
    await created;
  } finally {
    stream.close();
  }
});

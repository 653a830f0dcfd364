// The MCP consent page in a real browser (Debian's Chromium, driven by playwright-core): it
// renders readable without JavaScript, the person signs in with an org token, picks a
// restricted grant and approves, and the browser lands on the client's redirect URI with a
// code.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';
import { startServer } from '../harness.js';

const exe = process.env.CHROMIUM || '/usr/bin/chromium';
// Screenshots go where SPRITES_SCREENSHOTS says (docs/screenshots holds the committed ones).
const shots = process.env.SPRITES_SCREENSHOTS || join(tmpdir(), 'sprites-screenshots');
let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

test('a person approves a restricted grant on the consent page', { skip: !existsSync(exe) && `no browser at ${exe}` }, async () => {
  // The client's redirect target: a local server that records the code.
  let got;
  const cb = createServer((req, res) => { const u = new URL(req.url, 'http://x'); if (u.pathname === '/callback') got = u; res.end('ok'); });
  await new Promise((r) => cb.listen(0, '127.0.0.1', r));
  const redirect = `http://127.0.0.1:${cb.address().port}/callback`;
  const reg = await (await fetch(`${server.baseURL}/oauth/register`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'Browser Test Client', redirect_uris: [redirect] }),
  })).json();
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const url = new URL(`${server.baseURL}/oauth/authorize`);
  for (const [k, v] of Object.entries({ response_type: 'code', client_id: reg.client_id, redirect_uri: redirect, code_challenge: challenge, code_challenge_method: 'S256', state: 'xyz', resource: `${server.baseURL}/mcp` })) url.searchParams.set(k, v);

  const browser = await chromium.launch({ executablePath: exe, args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  try {
    for (const [w, h, name] of [[1280, 900, 'consent-laptop.png'], [390, 844, 'consent-phone.png']]) {
      const page = await browser.newPage({ viewport: { width: w, height: h }, javaScriptEnabled: false });
      await page.goto(url.toString());
      assert.equal(await page.title(), 'Authorize an MCP client');
      assert.ok((await page.textContent('body')).includes('Browser Test Client'));
      // Every control has a label a screen reader reads.
      for (const id of ['token', 'prefix', 'max_sprites']) assert.equal(await page.locator(`label[for=${id}]`).count(), 1, id);
      mkdirSync(shots, { recursive: true });
      await page.screenshot({ path: join(shots, name), fullPage: true });
      await page.close();
    }
    const page = await browser.newPage({ javaScriptEnabled: false });
    await page.goto(url.toString());
    await page.fill('#token', server.token);
    await page.fill('#prefix', 'agent-');
    await page.fill('#max_sprites', '3');
    await Promise.all([page.waitForURL((u) => u.toString().startsWith(redirect)), page.click('button[value=approve]')]);
  } finally {
    await browser.close();
    cb.close();
  }
  assert.ok(got, 'the browser reached the redirect URI');
  assert.equal(got.searchParams.get('state'), 'xyz');
  assert.equal(got.searchParams.get('iss'), server.baseURL);
  const tok = await fetch(`${server.baseURL}/oauth/token`, { method: 'POST', body: new URLSearchParams({ grant_type: 'authorization_code', code: got.searchParams.get('code'), client_id: reg.client_id, redirect_uri: redirect, code_verifier: verifier }) });
  assert.equal(tok.status, 200);
  const grants = await (await fetch(`${server.baseURL}/v1/mcp/grants`, { headers: { authorization: `Bearer ${server.token}` } })).json();
  const g = grants.grants.find((x) => x.client_name === 'Browser Test Client');
  assert.deepEqual([g.mode, g.prefix, g.max_sprites], ['restricted', 'agent-', 3]);
});

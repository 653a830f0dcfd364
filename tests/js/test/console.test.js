// The web console in a real browser (Debian's Chromium, driven by playwright-core) against a
// real spritesd: sign-in, sprites with live status, the terminal with detach and scrollback,
// checkpoints, a custom-API connector whose Authorized Sprites list follows a label, the
// Gateway Playground, tokens shown once and revoked, MCP grants and consent through the
// console session; and, as an attacker would try it, pages and assets without a session, a
// forged cross-site form, a post without the CSRF token.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';
import { startServer, sleep } from '../harness.js';

const exe = process.env.CHROMIUM || '/usr/bin/chromium';
const shots = process.env.SPRITES_SCREENSHOTS || join(tmpdir(), 'sprites-screenshots');
const skip = !existsSync(exe) && `no browser at ${exe}`;

let server;
let browser;
// The custom API behind the connector: records what the gateway sent it.
const upstreamSeen = [];
let upstream;
// Another site (a different host name is a different site): the attacker's pages.
let evil;
let evilPage = '';

before(async () => {
  upstream = createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    // A stand-in GitHub for the OAuth flow: the person "approves" at once.
    if (u.pathname === '/oauth/authorize') {
      res.writeHead(302, { location: `${u.searchParams.get('redirect_uri')}?code=c0de&state=${encodeURIComponent(u.searchParams.get('state'))}` });
      return res.end();
    }
    res.setHeader('content-type', 'application/json');
    if (u.pathname === '/oauth/token') return res.end(JSON.stringify({ access_token: 'gho_console_1', token_type: 'bearer', scope: 'repo,read:user' }));
    if (u.pathname === '/gh/user') return res.end(JSON.stringify({ login: 'octo' }));
    upstreamSeen.push({ url: req.url, auth: req.headers.authorization });
    res.end(JSON.stringify({ hello: 'from upstream', path: req.url }));
  });
  await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
  evil = createServer((req, res) => { res.setHeader('content-type', 'text/html'); res.end(evilPage); });
  await new Promise((r) => evil.listen(0, '127.0.0.1', r));
  const up = `http://127.0.0.1:${upstream.address().port}`;
  server = await startServer(['--gateway-allow-private', '--provider', `github.authorize_url=${up}/oauth/authorize`, '--provider', `github.token_url=${up}/oauth/token`, '--provider', `github.base_url=${up}/gh`, '--provider', 'github.client_id=console-test', '--provider', 'github.client_secret=console-secret']);
  if (!skip) {
    browser = await chromium.launch({ executablePath: exe, args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  }
});

after(async () => {
  await browser?.close();
  upstream?.close();
  evil?.close();
  await server?.stop();
});

// Every control a person fills has a label a screen reader reads, and every button a name.
async function assertLabelled(page) {
  const bad = await page.evaluate(() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
    .filter((el) => el.tagName === 'BUTTON' ? !(el.textContent.trim() || el.getAttribute('aria-label')) : !(el.labels?.length || el.getAttribute('aria-label')))
    .map((el) => el.outerHTML.slice(0, 120)));
  assert.deepEqual(bad, [], `unlabelled controls on ${page.url()}`);
}

async function shot(page, name) {
  await assertLabelled(page);
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, `console-${name}.png`), fullPage: true });
}

const api = (path, init = {}) => fetch(`${server.baseURL}${path}`, { ...init, headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json', ...(init.headers || {}) } });

async function sh(name, script) {
  const r = await server.client.sprite(name).execFile('sh', ['-c', script]);
  return r.stdout.toString();
}

async function signIn(page) {
  await page.goto(`${server.baseURL}/`);
  assert.match(page.url(), /\/signin\?next=/);
  await page.fill('#token', server.token);
  await Promise.all([page.waitForURL(`${server.baseURL}/`), page.click('button[type=submit]')]);
}

// Reads the terminal's screen (xterm's buffer, as the person sees it).
const screen = (page) => page.evaluate(() => {
  const b = window.spritesTerm.buffer.active;
  const out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i)?.translateToString(true) ?? '');
  return out.join('\n');
});

async function waitFor(fn, what, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('nothing but the sign-in page is served without a session', { skip }, async () => {
  for (const path of ['/', '/tokens', '/connectors', '/grants', '/sprites/x', '/sprites/x/terminal', '/static/console.css', '/static/console.js', '/static/xterm.js', '/static/terminal.js', '/api/v1/sprites']) {
    const r = await fetch(`${server.baseURL}${path}`, { redirect: 'manual' });
    assert.ok([303, 401].includes(r.status), `${path} answered ${r.status}`);
    if (r.status === 303) assert.match(r.headers.get('location'), /^\/signin\?next=/, path);
    const body = await r.text();
    assert.ok(!body.includes('Terminal') && !body.includes('xterm'), path);
  }
  const r = await fetch(`${server.baseURL}/signin`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-security-policy'), /script-src 'self'/);
  assert.equal(r.headers.get('x-frame-options'), 'DENY');
  // A wrong token signs nobody in.
  const bad = await fetch(`${server.baseURL}/signin`, { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'token=nope%2Fx%2Fy%2Fz' });
  assert.equal(bad.status, 401);
  assert.equal(bad.headers.get('set-cookie'), null);
  // The API's own routes keep their JSON errors.
  const v1 = await fetch(`${server.baseURL}/v1/sprites`);
  assert.equal(v1.status, 401);
  assert.ok((await v1.json()).error);
});

test('a person signs in, makes a sprite, uses its terminal, checkpoints and restores it', { skip, timeout: 240000 }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  const cookieShot = await browser.newPage();
  await cookieShot.goto(`${server.baseURL}/signin`);
  await shot(cookieShot, 'signin');
  await cookieShot.close();
  await signIn(page);
  const [cookie] = await ctx.cookies();
  assert.equal(cookie.name, 'sprites_session');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');

  // Create.
  await page.fill('#new-name', 'web1');
  await Promise.all([page.waitForURL(/\/sprites\/web1/), page.click('form[action="/sprites"] button')]);
  assert.match(await page.textContent('[role=status]'), /Sprite web1 created/);

  // The list follows the sprite's state without a reload.
  await page.goto(`${server.baseURL}/`);
  const status = page.locator('tr[data-sprite="web1"] [data-status]');
  await waitFor(async () => (await status.textContent()) === 'running', 'running');
  await shot(page, 'sprites');
  // Stopped from its own page in another tab; the list (still open) follows.
  const tab = await ctx.newPage();
  await tab.goto(`${server.baseURL}/sprites/web1`);
  await Promise.all([tab.waitForURL(/msg=/), tab.click('button[value=cold]')]);
  assert.match(await tab.textContent('[role=status]'), /web1 is cold/);
  await waitFor(async () => (await status.textContent()) === 'cold', 'the list to show cold');
  // A sleeping sprite's page does not wake it to list its sessions.
  await tab.reload();
  assert.match(await tab.textContent('main'), /Wake it and show them/);
  assert.equal((await (await api('/v1/sprites/web1')).json()).status, 'cold');
  await tab.close();
  // A sprite made elsewhere appears too.
  await server.client.createSprite('other1');
  await waitFor(async () => (await page.locator('tr[data-sprite="other1"]').count()) === 1, 'a new row');

  // Terminal: type, read, detach while a command runs, reattach and see what it printed.
  await page.goto(`${server.baseURL}/sprites/web1/terminal`);
  await waitFor(async () => /connected/.test(await page.textContent('#term-status')), 'the terminal to connect');
  await page.click('#terminal');
  await page.keyboard.type('echo hello-$((6*7))\n');
  await waitFor(async () => (await screen(page)).includes('hello-42'), 'the command output');
  await shot(page, 'terminal');
  const session = await page.getAttribute('#terminal', 'data-session');
  assert.ok(session, 'the page knows its session');
  await page.keyboard.type('sleep 2; echo while-away-$((40+2))\n');
  await page.click('#detach');
  await waitFor(async () => /detached/.test(await page.textContent('#term-status')), 'detached');
  await sleep(3500);
  // The session is listed on the sprite's page, with a link that reattaches.
  await page.goto(`${server.baseURL}/sprites/web1`);
  const attach = page.locator(`a[href$="terminal?session=${session}"]`);
  assert.equal(await attach.count(), 1);
  await attach.click();
  await waitFor(async () => /connected/.test(await page.textContent('#term-status')), 'reattached');
  await waitFor(async () => (await screen(page)).includes('while-away-42'), 'the scrollback from while detached');
  assert.ok((await screen(page)).includes('hello-42'), 'the earlier output is replayed too');

  // A service and its logs.
  const svc = await api('/v1/sprites/web1/services/ticker', { method: 'PUT', body: JSON.stringify({ cmd: 'sh', args: ['-c', 'echo tick-from-service; exec sleep 1000'] }) });
  assert.equal(svc.status, 200);
  await svc.text();
  await page.goto(`${server.baseURL}/sprites/web1`);
  await page.click('a[href$="/services/ticker/logs"]');
  assert.match(await page.textContent('pre'), /tick-from-service/);
  // The network policy editor: rules as lines, stored as the API's rules.
  await page.goto(`${server.baseURL}/sprites/web1`);
  await page.fill('#rules', 'allow example.com\ninclude defaults\ndeny *');
  await Promise.all([page.waitForURL(/msg=/), page.click('form[action$="/policy"] button')]);
  assert.equal(await page.inputValue('#rules'), 'allow example.com\ninclude defaults\ndeny *');
  assert.deepEqual((await (await api('/v1/sprites/web1/policy/network')).json()).rules, [{ domain: 'example.com', action: 'allow' }, { include: 'defaults' }, { domain: '*', action: 'deny' }]);
  await page.fill('#rules', 'permit everything');
  await Promise.all([page.waitForURL(/err=/), page.click('form[action$="/policy"] button')]);
  assert.match(await page.textContent('[role=alert]'), /line 1/);
  await page.fill('#rules', '');
  await Promise.all([page.waitForURL(/msg=/), page.click('form[action$="/policy"] button')]);

  // Checkpoint with a comment, change the file, restore.
  await sh('web1', 'echo one > ~/f');
  await page.goto(`${server.baseURL}/sprites/web1`);
  await page.fill('#comment', 'before the change');
  await Promise.all([page.waitForURL(/msg=/), page.click('form[data-stream$="/checkpoint"] button')]);
  assert.match(await page.textContent('[role=status]'), /Checkpoint v0 created/);
  assert.match(await page.textContent('tr[data-checkpoint="v0"]'), /before the change/);
  await sh('web1', 'echo two > ~/f');
  await shot(page, 'sprite');
  const row = page.locator('tr[data-checkpoint="v0"]');
  await row.locator('input[name=confirm]').check();
  await Promise.all([page.waitForURL(/msg=Restore/), row.locator('button', { hasText: 'Restore v0' }).click()]);
  assert.match(await page.textContent('[role=status]'), /Restore from v0 complete/);
  assert.equal(await waitFor(async () => { try { return await sh('web1', 'cat ~/f'); } catch { return ''; } }, 'exec after restore'), 'one\n');

  // Phone width: the same pages stay usable.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 } });
  await phone.addCookies(await ctx.cookies());
  const p2 = await phone.newPage();
  await p2.goto(`${server.baseURL}/sprites/web1`);
  assert.equal(await p2.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), true, 'no sideways scrolling');
  await shot(p2, 'sprite-phone');
  await p2.goto(`${server.baseURL}/`);
  await shot(p2, 'sprites-phone');
  await phone.close();
  await ctx.close();
});

test('a custom-API connector: label policy, live Authorized Sprites, the playground', { skip, timeout: 180000 }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  await signIn(page);
  await page.goto(`${server.baseURL}/connectors`);
  const base = `http://127.0.0.1:${upstream.address().port}/api`;
  const form = page.locator('form:has(input[name=kind][value=custom_api])');
  await form.locator('#ca-name').fill('weather');
  await form.locator('#ca-base').fill(base);
  await form.locator('#ca-key').fill('sk-console-secret');
  await form.locator('#ca-labels').fill('agents');
  await Promise.all([page.waitForURL(/\/connectors\/conn_/), form.locator('button').click()]);
  assert.match(await page.textContent('[role=status]'), /Connector added/);
  const list = page.locator('[data-authorized]');
  assert.match(await list.textContent(), /None/);
  // Labelling the sprite on its own page (another tab) lets it in; the list follows without
  // a reload.
  const tab = await ctx.newPage();
  await tab.goto(`${server.baseURL}/sprites/web1`);
  await tab.fill('#labels', 'agents, web');
  await tab.fill('#warm_after', '30s');
  await Promise.all([tab.waitForURL(/msg=/), tab.click('form[action$="/settings"] button')]);
  const saved = await (await api('/v1/sprites/web1')).json();
  assert.deepEqual(saved.labels, ['agents', 'web']);
  assert.equal(saved.idle?.warm_after, '30s');
  await tab.close();
  await waitFor(async () => /web1/.test(await list.textContent()), 'web1 in Authorized Sprites');
  assert.ok(!(await list.textContent()).includes('other1'));
  await shot(page, 'connector');

  // The playground sends a real request from inside web1, through its gateway.
  await page.selectOption('#pg-sprite', 'web1');
  await page.fill('#pg-path', '/forecast?city=oslo');
  await Promise.all([page.waitForLoadState('load'), page.click('form[action$="/playground"] button')]);
  const answer = await page.textContent('#playground-result');
  assert.match(answer, /200/);
  assert.match(answer, /from upstream/);
  const seen = upstreamSeen.at(-1);
  assert.equal(seen.url, '/api/forecast?city=oslo');
  assert.equal(seen.auth, 'Bearer sk-console-secret');
  assert.ok(!(await page.content()).includes('sk-console-secret'), 'the key is never in a page');
  await shot(page, 'playground');
  // As a sprite the policy refuses, the gateway refuses.
  await page.selectOption('#pg-sprite', 'other1');
  await Promise.all([page.waitForLoadState('load'), page.click('form[action$="/playground"] button')]);
  assert.match(await page.textContent('#playground-result'), /403/);
  // The list page shows it; the usage strip counts the calls.
  // (Usage is written to the store about once a second.)
  await waitFor(async () => { await page.reload(); return Number(await page.textContent('tr[data-usage="24h"] td:nth-child(2)')) >= 1; }, 'the call in the usage strip');
  assert.equal(await page.textContent('tr[data-usage="30d"] td:nth-child(2)'), await page.textContent('tr[data-usage="24h"] td:nth-child(2)'));
  // OAuth: the browser goes to the provider and comes back through the server's callback.
  await page.goto(`${server.baseURL}/connectors`);
  await Promise.all([page.waitForURL(/\/v1\/oauth\/github\/callback/), page.click('form:has(input[value=github]) button')]);
  assert.match(await page.textContent('h1'), /Connected/);
  await page.click('text=Back to the connectors');
  assert.match(await page.textContent('tbody'), /weather/);
  assert.match(await page.textContent('tr:has-text("github")'), /oauth/);
  const conns = (await (await api('/v1/oauth/connections?provider=github')).json()).connections;
  assert.equal(conns.length, 1, 'the callback made the connection');
  await shot(page, 'connectors');
  await ctx.close();
});

test('a token is shown once, listed without its secret, and refused once revoked', { skip }, async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await signIn(page);
  await page.goto(`${server.baseURL}/tokens`);
  await page.fill('#description', 'console test');
  await page.click('form[action="/tokens"] button');
  const token = await page.inputValue('#created-token');
  assert.match(token, /^[^/]+\/[^/]+\/tok[a-z0-9]+\/\w+$/);
  await shot(page, 'token-created');
  assert.equal((await fetch(`${server.baseURL}/v1/sprites`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
  await page.goto(`${server.baseURL}/tokens`);
  const html = await page.content();
  assert.ok(!html.includes(token.split('/')[3]), 'the secret is not in the list page');
  const id = token.split('/')[2];
  assert.match(html, new RegExp(id));
  await shot(page, 'tokens');
  await Promise.all([page.waitForURL(/msg=/), page.click(`tr[data-token="${id}"] button`)]);
  assert.match(await page.textContent('[role=status]'), /revoked/);
  const after = await fetch(`${server.baseURL}/v1/sprites`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(after.status, 401);
  await ctx.close();
});

test('a session ends with its token', { skip }, async () => {
  // Mint a token, sign in with it, revoke it elsewhere: the next page is the sign-in page.
  const made = await (await api(`/v1/organizations/${server.token.split('/')[0]}/tokens`, { method: 'POST', body: JSON.stringify({ description: 'short-lived' }) })).json();
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(`${server.baseURL}/signin`);
  await page.fill('#token', made.token);
  await Promise.all([page.waitForURL(`${server.baseURL}/`), page.click('button[type=submit]')]);
  const r = await api(`/v1/organizations/${server.token.split('/')[0]}/tokens/${made.id}`, { method: 'DELETE' });
  assert.ok(r.ok);
  await page.goto(`${server.baseURL}/tokens`);
  assert.match(page.url(), /\/signin/);
  await ctx.close();
});

test('MCP grants are listed and revoked; consent goes straight through a console session', { skip, timeout: 60000 }, async () => {
  const g = await (await api('/v1/mcp/grants', { method: 'POST', body: JSON.stringify({ mode: 'restricted', prefix: 'bot-', max_sprites: 2 }) })).json();
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await signIn(page);

  // An MCP client sends the person to the consent page from its own site.
  let got;
  const cb = createServer((req, res) => { const u = new URL(req.url, 'http://x'); if (u.pathname === '/callback') got = u; res.end('ok'); });
  await new Promise((r) => cb.listen(0, '127.0.0.1', r));
  const redirect = `http://127.0.0.1:${cb.address().port}/callback`;
  const reg = await (await fetch(`${server.baseURL}/oauth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ client_name: 'Console Client', redirect_uris: [redirect] }) })).json();
  const challenge = createHash('sha256').update(randomBytes(32).toString('base64url')).digest('base64url');
  const url = new URL(`${server.baseURL}/oauth/authorize`);
  for (const [k, v] of Object.entries({ response_type: 'code', client_id: reg.client_id, redirect_uri: redirect, code_challenge: challenge, code_challenge_method: 'S256', state: 's1' })) url.searchParams.set(k, v);
  evilPage = `<!doctype html><a id="go" href="${url}">Sign in with Sprites</a>`;
  await page.goto(`http://localhost:${evil.address().port}/client`);
  await Promise.all([page.waitForSelector('#signed-in'), page.click('#go')]);
  assert.equal(await page.locator('#token').count(), 0, 'no token asked of a signed-in person');
  await page.fill('#prefix', 'mcp-');
  await Promise.all([page.waitForURL((u) => u.toString().startsWith(redirect)), page.click('button[value=approve]')]);
  assert.ok(got?.searchParams.get('code'));
  cb.close();

  await page.goto(`${server.baseURL}/grants`);
  assert.equal(await page.locator(`tr[data-grant="${g.grant_id || g.id}"]`).count(), 1);
  assert.match(await page.textContent('tbody'), /Console Client/);
  await shot(page, 'grants');
  await Promise.all([page.waitForURL(/msg=/), page.click(`tr[data-grant="${g.grant_id || g.id}"] button`)]);
  assert.equal(await page.locator(`tr[data-grant="${g.grant_id || g.id}"]`).count(), 0);
  const left = await (await api('/v1/mcp/grants')).json();
  assert.ok(!left.grants.some((x) => x.id === (g.grant_id || g.id)));
  await ctx.close();
});

test('a forged cross-site form and a post without the CSRF token change nothing', { skip, timeout: 60000 }, async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await signIn(page);
  // The attacker's page posts the destroy form, with the right name, from another site.
  let csrf = await page.getAttribute('body', 'data-csrf');
  evilPage = `<!doctype html><form id="f" method="post" action="${server.baseURL}/sprites/web1/destroy"><input name="confirm" value="web1"><input name="_csrf" value="guess"></form><script>document.getElementById('f').submit()</script>`;
  const destroyed = () => page.waitForResponse((r) => r.url() === `${server.baseURL}/sprites/web1/destroy`);
  const [resp] = await Promise.all([destroyed(), page.goto(`http://localhost:${evil.address().port}/evil`)]);
  assert.equal(resp.status(), 403);
  assert.equal((await api('/v1/sprites/web1')).status, 200, 'the sprite is still there');
  // Even knowing the CSRF token, another site cannot use the session (the cookie stays home,
  // and the browser says where the post came from).
  evilPage = `<!doctype html><form id="f" method="post" action="${server.baseURL}/sprites/web1/destroy"><input name="confirm" value="web1"><input name="_csrf" value="${csrf}"></form><script>document.getElementById('f').submit()</script>`;
  const [resp2] = await Promise.all([destroyed(), page.goto(`http://localhost:${evil.address().port}/evil2`)]);
  assert.equal(resp2.status(), 403);
  assert.equal((await api('/v1/sprites/web1')).status, 200);
  // Same origin, session cookie, no token: refused.
  await page.goto(`${server.baseURL}/`);
  csrf = await page.getAttribute('body', 'data-csrf');
  const status = await page.evaluate(async () => (await fetch('/sprites/web1/destroy', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'confirm=web1' })).status);
  assert.equal(status, 403);
  const pass = await page.evaluate(async () => (await fetch('/api/v1/sprites/web1/checkpoint', { method: 'POST', body: '{}' })).status);
  assert.equal(pass, 403, 'the API passthrough needs the token too');
  assert.equal((await api('/v1/sprites/web1')).status, 200);
  // Through the page itself the same form works (the check does not refuse everything),
  // once the name is typed.
  await page.goto(`${server.baseURL}/sprites/other1`);
  await page.fill('#confirm-name', 'other');
  await Promise.all([page.waitForURL(/err=/), page.click('button.danger')]);
  assert.equal((await api('/v1/sprites/other1')).status, 200, 'a wrong name destroys nothing');
  await page.fill('#confirm-name', 'other1');
  await Promise.all([page.waitForURL(/\?msg=Sprite%20other1%20destroyed/), page.click('button.danger')]);
  assert.equal((await api('/v1/sprites/other1')).status, 404);
  // Signing out ends the session.
  await Promise.all([page.waitForURL(/signin/), page.click('header button')]);
  await page.goto(`${server.baseURL}/tokens`);
  assert.match(page.url(), /\/signin/);
  await ctx.close();
});

test('the console moves or goes away with --console-path', { timeout: 60000 }, async () => {
  const moved = await startServer(['--console-path', '/console']);
  try {
    const r = await fetch(`${moved.baseURL}/console/`, { redirect: 'manual' });
    assert.equal(r.status, 303);
    assert.equal(r.headers.get('location'), '/console/signin?next=%2Fconsole%2F');
    assert.equal((await fetch(`${moved.baseURL}/console/signin`)).status, 200);
    const root = await fetch(`${moved.baseURL}/`);
    assert.equal(root.status, 404);
    assert.ok((await root.json()).error);
  } finally {
    await moved.stop();
  }
  const off = await startServer(['--console-path', 'none']);
  try {
    for (const p of ['/', '/signin', '/static/console.js']) assert.equal((await fetch(`${off.baseURL}${p}`)).status, 404, p);
  } finally {
    await off.stop();
  }
});

// The official MCP TypeScript SDK (@modelcontextprotocol/sdk) against spritesd's /mcp:
// discovery, registration, PKCE and the consent form submitted over plain HTTP as a script
// would, token exchange, tools, a restricted grant's refusals, and refresh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { startServer } from '../harness.js';

let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

// An OAuthClientProvider kept in memory; "opening the browser" fetches the consent page and
// posts its form with the org token, as a person would.
function provider(mode) {
  const state = { code: null };
  const p = {
    get redirectUrl() { return 'http://127.0.0.1:38222/callback'; },
    get clientMetadata() {
      return { client_name: 'node agent', redirect_uris: ['http://127.0.0.1:38222/callback'], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' };
    },
    clientInformation() { return p._client; },
    saveClientInformation(c) { p._client = c; },
    tokens() { return p._tokens; },
    saveTokens(t) { p._tokens = t; },
    saveCodeVerifier(v) { p._verifier = v; },
    codeVerifier() { return p._verifier; },
    async redirectToAuthorization(url) {
      const page = await fetch(url, { redirect: 'manual' });
      assert.equal(page.status, 200);
      const html = await page.text();
      const fields = new URLSearchParams();
      for (const m of html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)) {
        fields.append(m[1], m[2].replaceAll('&quot;', '"').replaceAll('&#39;', "'").replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&amp;', '&'));
      }
      fields.append('token', server.token);
      fields.append('decision', 'approve');
      fields.append('mode', mode);
      fields.append('prefix', 'mcp-');
      fields.append('max_sprites', '2');
      const r = await fetch(`${server.baseURL}/oauth/authorize`, { method: 'POST', body: fields, redirect: 'manual' });
      assert.equal(r.status, 302);
      const loc = new URL(r.headers.get('location'));
      assert.equal(loc.searchParams.get('iss'), server.baseURL);
      state.code = loc.searchParams.get('code');
    },
  };
  return { p, state };
}

async function connect(mode) {
  const { p, state } = provider(mode);
  const url = new URL(`${server.baseURL}/mcp`);
  let transport = new StreamableHTTPClientTransport(url, { authProvider: p });
  let client = new Client({ name: 'node-test', version: '1.0.0' });
  await assert.rejects(client.connect(transport), UnauthorizedError);
  await transport.finishAuth(state.code);
  transport = new StreamableHTTPClientTransport(url, { authProvider: p });
  client = new Client({ name: 'node-test', version: '1.0.0' });
  await client.connect(transport);
  return { client, p };
}

test('sign in, then create a sprite and work in it within a restricted grant', async () => {
  const { client, p } = await connect('restricted');
  assert.ok(p._tokens.access_token.startsWith('mcp_at_') && p._tokens.refresh_token);
  const { tools } = await client.listTools();
  assert.deepEqual(tools.slice(0, 4).map((t) => t.name), ['list_sprites', 'create_sprite', 'destroy_sprite', 'exec']);
  assert.equal(tools.find((t) => t.name === 'list_sprites').annotations.readOnlyHint, true);

  let r = await client.callTool({ name: 'create_sprite', arguments: { name: 'mcp-node' } });
  assert.equal(r.isError, false, JSON.stringify(r));
  r = await client.callTool({ name: 'exec', arguments: { sprite: 'mcp-node', command: 'echo from-node; exit 2' } });
  assert.deepEqual([r.structuredContent.stdout, r.structuredContent.exit_code], ['from-node\n', 2]);
  r = await client.callTool({ name: 'write_file', arguments: { sprite: 'mcp-node', path: '/home/sprite/x.txt', content: 'hi' } });
  assert.equal(r.isError, false);
  r = await client.callTool({ name: 'read_file', arguments: { sprite: 'mcp-node', path: '/home/sprite/x.txt' } });
  assert.equal(r.structuredContent.content, 'hi');
  r = await client.callTool({ name: 'create_sprite', arguments: { name: 'nope' } });
  assert.equal(r.isError, true);
  r = await client.callTool({ name: 'list_sprites', arguments: {} });
  assert.deepEqual(r.structuredContent.sprites.map((s) => s.name), ['mcp-node']);
  r = await client.callTool({ name: 'destroy_sprite', arguments: { name: 'mcp-node' } });
  assert.equal(r.isError, false);
  await client.close();

  // Refresh with the stored refresh token; the old one is then refused.
  const meta = await (await fetch(`${server.baseURL}/.well-known/oauth-authorization-server`)).json();
  const body = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: p._tokens.refresh_token, client_id: p._client.client_id });
  const ok = await fetch(meta.token_endpoint, { method: 'POST', body });
  assert.equal(ok.status, 200);
  const replay = await fetch(meta.token_endpoint, { method: 'POST', body });
  assert.equal(replay.status, 400);
});

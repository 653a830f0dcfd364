"""The official MCP Python SDK (`mcp`) against spritesd's /mcp: discovery, dynamic
registration, PKCE and the consent form submitted over plain HTTP as a script would, token
exchange and refresh; then tools in both protocol revisions, and a restricted grant's
refusals.

The only thing done by hand is what a person does in a browser: the SDK's redirect handler
fetches the consent page and posts its form with an org token.
"""

from __future__ import annotations

import asyncio
import html
import re
import urllib.parse

import httpx2
import pytest
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from conftest import unique_name


class Memory(TokenStorage):
    def __init__(self):
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


def consent(server, mode: str, prefix: str = "mcp-", max_sprites: int = 3):
    """The person's part: sign in on the consent page and approve."""
    got: dict = {}

    async def redirect_handler(url: str) -> None:
        async with httpx2.AsyncClient(follow_redirects=False) as h:
            page = await h.get(url)
            assert page.status_code == 200, page.text
            assert "Authorize an MCP client" in page.text
            fields = {
                m.group(1): html.unescape(m.group(2))
                for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text)
            }
            fields.update(token=server.token, decision="approve", mode=mode, prefix=prefix, max_sprites=str(max_sprites))
            r = await h.post(f"{server.base_url}/oauth/authorize", data=fields)
            assert r.status_code == 302, r.text
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["location"]).query)
            got.update({k: v[0] for k, v in q.items()})

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=got["code"], state=got.get("state"), iss=got.get("iss"))

    return redirect_handler, callback_handler


def oauth(server, storage: Memory, mode: str, **kw) -> OAuthClientProvider:
    redirect, callback = consent(server, mode, **kw)
    return OAuthClientProvider(
        server_url=f"{server.base_url}/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="pytest agent",
            redirect_uris=["http://127.0.0.1:38111/callback"],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect,
        callback_handler=callback,
    )


def client(server, auth, mode: str) -> Client:
    http = httpx2.AsyncClient(auth=auth, timeout=120)
    return Client(streamable_http_client(f"{server.base_url}/mcp", http_client=http), mode=mode)


def structured(result):
    assert not result.is_error, result.content
    return result.structured_content


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_sign_in_and_work_in_a_sprite(server, mode):
    async def run():
        storage = Memory()
        async with client(server, oauth(server, storage, "restricted", max_sprites=3), mode) as c:
            assert storage.tokens is not None and storage.tokens.refresh_token
            tools = await c.list_tools()
            names = [t.name for t in tools.tools]
            assert names[:4] == ["list_sprites", "create_sprite", "destroy_sprite", "exec"]
            exec_tool = next(t for t in tools.tools if t.name == "exec")
            assert exec_tool.annotations.read_only_hint is False
            assert exec_tool.annotations.destructive_hint is True

            name = unique_name("mcp").replace("py-", "mcp-", 1)
            s = structured(await c.call_tool("create_sprite", {"name": name}))
            assert s["sprite"]["name"] == name
            out = structured(await c.call_tool("exec", {"sprite": name, "command": "echo hello > ~/f; cat ~/f; exit 4"}))
            assert (out["stdout"], out["exit_code"]) == ("hello\n", 4)
            log = structured(await c.call_tool("create_checkpoint", {"sprite": name, "comment": "py"}))
            assert any("complete" in str(l) for l in log["log"]), log
            cps = structured(await c.call_tool("list_checkpoints", {"sprite": name}))
            cp = next(x for x in cps["checkpoints"] if x.get("comment") == "py")
            structured(await c.call_tool("exec", {"sprite": name, "command": "rm ~/f"}))
            structured(await c.call_tool("restore_checkpoint", {"sprite": name, "id": cp["id"]}))
            out = structured(await c.call_tool("exec", {"sprite": name, "command": ["cat", "/home/sprite/f"]}))
            assert out["stdout"] == "hello\n"
            structured(await c.call_tool("create_service", {"sprite": name, "name": "web", "cmd": "python3", "args": ["-m", "http.server", "8080"]}))
            structured(await c.call_tool("start_service", {"sprite": name, "name": "web"}))
            svc = structured(await c.call_tool("get_service", {"sprite": name, "name": "web"}))
            assert "web" in str(svc)

            # The restricted grant's refusals come back as tool errors, not protocol errors.
            r = await c.call_tool("create_sprite", {"name": "outside-prefix"})
            assert r.is_error and "mcp-" in r.content[0].text
            r = await c.call_tool("exec", {"sprite": "not-mine", "command": "true"})
            assert r.is_error and "not found" in r.content[0].text
            structured(await c.call_tool("destroy_sprite", {"name": name}))

        # The refresh token works once: the SDK's own refresh, then a replay is refused.
        first_refresh = storage.tokens.refresh_token
        async with httpx2.AsyncClient() as h:
            meta = (await h.get(f"{server.base_url}/.well-known/oauth-authorization-server")).json()
            r = await h.post(meta["token_endpoint"], data={"grant_type": "refresh_token", "refresh_token": first_refresh, "client_id": storage.client.client_id})
            assert r.status_code == 200, r.text
            again = await h.post(meta["token_endpoint"], data={"grant_type": "refresh_token", "refresh_token": first_refresh, "client_id": storage.client.client_id})
            assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

    asyncio.run(run())


def test_full_access_and_revocation(server):
    async def run():
        storage = Memory()
        async with client(server, oauth(server, storage, "full"), "auto") as c:
            listed = structured(await c.call_tool("list_sprites", {}))
            assert isinstance(listed["sprites"], list)
        async with httpx2.AsyncClient() as h:
            auth = {"authorization": f"Bearer {server.token}"}
            grants = (await h.get(f"{server.base_url}/v1/mcp/grants", headers=auth)).json()["grants"]
            mine = [g for g in grants if g["client_name"] == "pytest agent" and g["mode"] == "full"]
            assert mine
            r = await h.delete(f"{server.base_url}/v1/mcp/grants/{mine[-1]['id']}", headers=auth)
            assert r.status_code == 204
            r = await h.post(
                f"{server.base_url}/mcp",
                headers={"authorization": f"Bearer {storage.tokens.access_token}", "accept": "application/json, text/event-stream"},
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            )
            assert r.status_code == 401

    asyncio.run(run())

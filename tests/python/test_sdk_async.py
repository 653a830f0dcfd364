"""The official SDK's asyncio client (`AsyncSpritesClient`) against a real spritesd.

Same endpoints as the sync client (CRUD over HTTP, exec over a WebSocket); this checks that
the async code paths parse the server's answers too.
"""

from __future__ import annotations

import asyncio

import pytest
from sprites import AsyncSpritesClient, AuthenticationError, ExecError, NotFoundError
from sprites.types import ListOptions, URLSettings

from conftest import unique_name



def test_async_lifecycle(server):
    async def main():
        name = unique_name("async")
        async with AsyncSpritesClient(server.token, base_url=server.base_url) as c:
            s = await c.create_sprite(name, labels=["a"])
            try:
                assert s.name == name and s.id and s.labels == ["a"]
                got = await c.get_sprite(name)
                assert got.id == s.id
                page = await c.list_sprites(ListOptions(prefix=name))
                assert [x.name for x in page.sprites] == [name]
                assert [x.name for x in await c.list_all_sprites(prefix=name)] == [name]
                upd = await c.update_sprite(name, url_settings=URLSettings(auth="public"))
                assert upd.url_settings.auth == "public"
                assert upd.labels == ["a"]
            finally:
                await c.delete_sprite(name)
            with pytest.raises(NotFoundError):
                await c.get_sprite(name)

    asyncio.run(main())


def test_async_wrong_token(server):
    async def main():
        async with AsyncSpritesClient("personal/a/b/wrong", base_url=server.base_url) as c:
            with pytest.raises(AuthenticationError):
                await c.list_sprites()

    asyncio.run(main())


def test_async_exec(server, shared_sprite):
    async def main():
        async with AsyncSpritesClient(server.token, base_url=server.base_url) as c:
            s = c.sprite(shared_sprite.name)
            cp = await s.run("sh", "-c", "echo out; echo err >&2; exit 6", capture_output=True, timeout=60)
            assert (cp.returncode, cp.stdout, cp.stderr) == (6, b"out\n", b"err\n")
            assert await s.command("pwd", cwd="/tmp", timeout=60).output() == b"/tmp\n"
            with pytest.raises(ExecError) as ei:
                await s.command("sh", "-c", "exit 9", timeout=60).run()
            assert ei.value.exit_code() == 9
            # Several commands at once on one event loop.
            outs = await asyncio.gather(
                *(s.command("sh", "-c", f"sleep 0.2; echo {i}", timeout=60).output() for i in range(5))
            )
            assert outs == [f"{i}\n".encode() for i in range(5)]

    asyncio.run(main())

"""Sprite CRUD through the official Python SDK (`sprites-py`), against a real spritesd.

Raw HTTP (urllib / http.client) is used only for inputs the SDK cannot express: a missing
Authorization header, malformed JSON, an oversized body, an unknown route.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest
from sprites import (
    AuthenticationError,
    NotFoundError,
    Sprite,
    SpriteError,
    SpritesClient,
)
from sprites.types import ListOptions, SpriteConfig, URLSettings

from conftest import json_body, unique_name


@pytest.fixture
def statuses(client):
    """Records (method, path, status) of every response the SDK's own HTTP client receives.

    The SDK hides status codes of successful calls; this observes them without changing a
    byte of what the SDK sends.
    """
    seen = []

    def hook(resp):
        seen.append((resp.request.method, resp.request.url.path, resp.status_code))

    hooks = client._client.event_hooks
    hooks.setdefault("response", []).append(hook)
    yield seen
    hooks["response"].remove(hook)


# ---------------------------------------------------------------------------------------------
# create / get / list / update / delete


def test_create_returns_sprite_with_201(client, make_sprite, statuses):
    s = make_sprite("create")
    assert isinstance(s, Sprite)
    assert s.name.startswith("py-create-")
    assert s.id, "create must return an id"
    assert s.organization_name == "personal"
    assert s.status in ("cold", "warm", "running")
    assert s.created_at is not None and s.created_at.tzinfo is not None
    assert s.url and s.name in s.url
    assert s.labels == []
    # Go treats anything but 201 as failure; the SDK accepts any 2xx, so check the wire.
    assert ("POST", "/v1/sprites", 201) in statuses


def test_create_with_labels_and_url_settings(make_sprite):
    s = make_sprite(
        "opts", labels=["alpha", "beta"], url_settings=URLSettings(auth="public")
    )
    assert s.labels == ["alpha", "beta"]
    assert s.url_settings is not None and s.url_settings.auth == "public"


def test_create_accepts_every_field_the_sdk_sends(client, make_sprite, statuses):
    # create_sprite can send config, url_settings, labels, wait_for_capacity and runtime.
    s = make_sprite(
        "full",
        config=SpriteConfig(ram_mb=512, cpus=1, region="ord", storage_gb=10),
        url_settings=URLSettings(auth="sprite", private_access="org_users"),
        labels=["x"],
        wait_for_capacity=True,
        runtime="default",
    )
    assert s.labels == ["x"]
    assert s.url_settings.auth == "sprite"
    assert ("POST", "/v1/sprites", 201) in statuses


def test_get_returns_same_sprite(client, make_sprite):
    created = make_sprite("get")
    got = client.get_sprite(created.name)
    assert got.name == created.name
    assert got.id == created.id
    assert got.organization_name == "personal"
    assert got.created_at == created.created_at
    assert got.status in ("cold", "warm", "running")


def test_get_missing_raises_not_found(client):
    with pytest.raises(NotFoundError):
        client.get_sprite(unique_name("never"))


def test_list_with_prefix(client, make_sprite):
    prefix = unique_name("lst") + "-"
    names = set()
    for i in range(3):
        name = f"{prefix}{i}"
        client.create_sprite(name)
        names.add(name)
    try:
        other = make_sprite("lstother")
        page = client.list_sprites(ListOptions(prefix=prefix))
        got = {s.name for s in page.sprites}
        assert got == names
        assert page.has_more is False
        for info in page.sprites:
            assert info.organization == "personal"
            assert info.id
        # Unfiltered list sees everything, including the sprite outside the prefix.
        everything = {s.name for s in client.list_all_sprites()}
        assert names | {other.name} <= everything
        # list_all_sprites with a prefix (sends max_results=100: must be clamped, not rejected).
        assert {s.name for s in client.list_all_sprites(prefix=prefix)} == names
        # bulk_load=true ("minimal entries") is accepted.
        bulk = client.list_sprites(ListOptions(prefix=prefix, bulk_load=True))
        assert {s.name for s in bulk.sprites} == names
        # Top-level counters are read by the SDK.
        assert page.running + page.warm + page.cold >= 4
    finally:
        for n in names:
            client.delete_sprite(n)


def test_list_pagination_small_pages(client):
    prefix = unique_name("pg") + "-"
    names = [f"{prefix}{i}" for i in range(3)]
    for n in names:
        client.create_sprite(n)
    try:
        first = client.list_sprites(ListOptions(prefix=prefix, max_results=2))
        assert len(first.sprites) == 2
        assert first.has_more is True
        assert first.next_continuation_token
        second = client.list_sprites(
            ListOptions(
                prefix=prefix,
                max_results=2,
                continuation_token=first.next_continuation_token,
            )
        )
        assert len(second.sprites) == 1
        assert second.has_more is False
        seen = [s.name for s in first.sprites + second.sprites]
        assert sorted(seen) == sorted(names)
        assert len(set(seen)) == 3
    finally:
        for n in names:
            client.delete_sprite(n)


def test_list_unknown_prefix_is_empty(client):
    page = client.list_sprites(ListOptions(prefix=unique_name("nothing-here")))
    assert page.sprites == []
    assert page.has_more is False


def test_update_labels(client, make_sprite, statuses):
    s = make_sprite("lbl")
    updated = s.update(labels=["one", "two"])
    assert isinstance(updated, Sprite)
    assert updated.name == s.name
    assert updated.labels == ["one", "two"]
    assert client.get_sprite(s.name).labels == ["one", "two"]
    assert ("PUT", f"/v1/sprites/{s.name}", 200) in statuses
    # Replacing with an empty list clears them.
    assert client.update_sprite(s.name, labels=[]).labels == []
    assert client.get_sprite(s.name).labels == []


def test_update_url_settings_is_partial(client, make_sprite):
    s = make_sprite("url", labels=["keep"])
    assert s.url_settings is not None and s.url_settings.auth == "sprite"
    updated = client.update_sprite(s.name, url_settings=URLSettings(auth="public"))
    assert updated.url_settings.auth == "public"
    got = client.get_sprite(s.name)
    assert got.url_settings.auth == "public"
    assert got.labels == ["keep"], "a url_settings update must leave labels alone"
    # The compatibility helper (returns None) goes through the same PUT.
    s.update_url_settings(URLSettings(auth="sprite"))
    assert client.get_sprite(s.name).url_settings.auth == "sprite"


def test_update_invalid_url_auth_is_400(client, make_sprite):
    s = make_sprite("badauth")
    with pytest.raises(SpriteError) as ei:
        client.update_sprite(s.name, url_settings=URLSettings(auth="bogus"))
    assert type(ei.value) is SpriteError
    assert "(status 400)" in str(ei.value)
    assert client.get_sprite(s.name).url_settings.auth == "sprite"


def test_update_missing_raises_not_found(client):
    with pytest.raises(NotFoundError):
        client.update_sprite(unique_name("never"), labels=["x"])


def test_delete_then_get_is_not_found(client, statuses):
    name = unique_name("del")
    s = client.create_sprite(name)
    s.delete()
    assert ("DELETE", f"/v1/sprites/{name}", 204) in statuses
    with pytest.raises(NotFoundError):
        client.get_sprite(name)
    assert name not in {x.name for x in client.list_all_sprites()}
    with pytest.raises(NotFoundError):
        client.delete_sprite(name)


def test_name_can_be_reused_after_delete(client):
    name = unique_name("reuse")
    first = client.create_sprite(name)
    client.delete_sprite(name)
    second = client.create_sprite(name)
    try:
        assert second.name == name
        assert second.id != first.id
    finally:
        client.delete_sprite(name)


def test_upgrade(client, make_sprite):
    s = make_sprite("upg")
    s.upgrade()  # 200 or 204 expected; anything else raises
    assert client.get_sprite(s.name).id == s.id


# ---------------------------------------------------------------------------------------------
# errors the SDK reports


def test_duplicate_create_is_409(client, make_sprite):
    s = make_sprite("dup")
    with pytest.raises(SpriteError) as ei:
        client.create_sprite(s.name)
    # The SDK turns non-401/404 failures into SpriteError("Failed create sprite (status N): body").
    assert type(ei.value) is SpriteError
    assert "(status 409)" in str(ei.value)
    body = json.loads(str(ei.value).split(": ", 1)[1])
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("message"), str) and body["message"]
    # The original is untouched.
    assert client.get_sprite(s.name).id == s.id


@pytest.mark.parametrize(
    "bad",
    ["Upper-Case", "under_score", "-leading", "trailing-", "a" * 64, "has space", "dot.ted", ""],
    ids=["upper", "underscore", "leading-dash", "trailing-dash", "too-long", "space", "dot", "empty"],
)
def test_bad_name_is_400(client, bad):
    with pytest.raises(SpriteError) as ei:
        client.create_sprite(bad)
    assert type(ei.value) is SpriteError
    assert "(status 400)" in str(ei.value)
    body = json.loads(str(ei.value).split(": ", 1)[1])
    assert body.get("error") and body.get("message")


def test_wrong_token_is_authentication_error(server, make_sprite):
    s = make_sprite("auth")
    with SpritesClient("personal/nope/nope/not-a-real-token", base_url=server.base_url) as bad:
        with pytest.raises(AuthenticationError):
            bad.list_sprites()
        with pytest.raises(AuthenticationError):
            bad.get_sprite(s.name)
        with pytest.raises(AuthenticationError):
            bad.create_sprite(unique_name("auth"))
        with pytest.raises(AuthenticationError):
            bad.update_sprite(s.name, labels=["x"])
        with pytest.raises(AuthenticationError):
            bad.delete_sprite(s.name)
    # Nothing happened to the sprite.
    assert server.client().get_sprite(s.name).labels == []


def test_missing_token_is_401_json(server):
    # The SDK cannot send a request without a token (httpx refuses "Bearer "), so raw HTTP.
    status, headers, body = server.raw("GET", "/v1/sprites", token=None)
    assert status == 401
    v = json_body(body)
    assert v.get("error") and v.get("message")
    status, _, body = server.raw(
        "POST", "/v1/sprites", body=b'{"name":"x"}', token=None,
        headers={"Content-Type": "application/json"},
    )
    assert status == 401


def test_other_org_cannot_see_sprite(client, other_org, make_sprite):
    _, other = other_org
    s = make_sprite("iso")
    with pytest.raises(NotFoundError):
        other.get_sprite(s.name)
    assert s.name not in {x.name for x in other.list_all_sprites()}
    with pytest.raises(NotFoundError):
        other.update_sprite(s.name, labels=["stolen"])
    with pytest.raises(NotFoundError):
        other.delete_sprite(s.name)
    # Restart is not wrapped by sprites-py; through its authenticated HTTP client.
    r = other.http_client.post(f"{other.base_url}/v1/sprites/{s.name}/restart")
    assert r.status_code == 404, r.text
    # Still there, unchanged, for its owner.
    got = client.get_sprite(s.name)
    assert got.id == s.id and got.labels == []


def test_other_org_sprites_are_its_own(client, other_org):
    _, other = other_org
    name = unique_name("theirs")
    theirs = other.create_sprite(name)
    try:
        assert theirs.organization_name == "py-other-org"
        assert other.get_sprite(name).id == theirs.id
        with pytest.raises(NotFoundError):
            client.get_sprite(name)
        assert name not in {x.name for x in client.list_all_sprites()}
    finally:
        other.delete_sprite(name)


# ---------------------------------------------------------------------------------------------
# bad input over raw HTTP (the SDK cannot express these); the server must keep serving.


def test_malformed_json_is_400_json(server):
    status, headers, body = server.raw(
        "POST", "/v1/sprites", body=b'{"name": "x",', headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert headers.get("content-type", "").startswith("application/json")
    v = json_body(body)
    assert isinstance(v.get("error"), str) and v["error"]
    assert isinstance(v.get("message"), str) and v["message"]


def test_wrong_json_shape_is_400_json(server):
    for raw in (b"[]", b'{"name": 5}', b"{}", b'"just a string"'):
        status, _, body = server.raw(
            "POST", "/v1/sprites", body=raw, headers={"Content-Type": "application/json"}
        )
        assert status == 400, raw
        v = json_body(body)
        assert v.get("error") and v.get("message"), raw


def test_malformed_json_on_update_is_400(server, make_sprite):
    s = make_sprite("badput")
    status, _, body = server.raw(
        "PUT", f"/v1/sprites/{s.name}", body=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert json_body(body).get("error")


def test_oversized_body_is_413_json(server):
    body = b'{"name":"' + b"a" * (2 * 1024 * 1024) + b'"}'
    u = urllib.parse.urlsplit(server.base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        try:
            conn.request(
                "POST",
                "/v1/sprites",
                body=body,
                headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer before reading it all; the answer is still there
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status == 413
    v = json_body(data)
    assert v.get("error") and v.get("message")


def test_unknown_route_is_404_json(server):
    for method, path in (("GET", "/v1/nope"), ("GET", "/v1/sprites/x/nope/deeper"), ("GET", "/nope")):
        status, headers, body = server.raw(method, path)
        assert status == 404, path
        v = json_body(body)
        assert v.get("error") and v.get("message"), path


def test_server_still_serves_after_bad_input(server, client):
    # Runs after the bad-input tests above (file order).
    assert server.proc.poll() is None, "spritesd exited"
    name = unique_name("after")
    s = client.create_sprite(name)
    try:
        assert client.get_sprite(name).id == s.id
    finally:
        client.delete_sprite(name)

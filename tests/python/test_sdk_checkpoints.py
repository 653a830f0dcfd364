"""Checkpoints through the official sprites-py calls (spec §6)."""

from __future__ import annotations

import pytest
from sprites.exceptions import APIError, SpriteError


def _run(sprite, script):
    return sprite.command("sh", "-c", script).output().decode()


def test_checkpoint_create_list_restore(make_sprite):
    sprite = make_sprite("ckpy")
    _run(sprite, "echo first > ~/a && echo doomed > ~/b")

    msgs = list(sprite.create_checkpoint("py first"))
    assert msgs[0].type == "info" and msgs[0].data == "Creating checkpoint v0..."
    assert msgs[-1].type == "complete"
    assert msgs[-1].data == "Checkpoint v0 created successfully"

    _run(sprite, "rm ~/b && echo second >> ~/a && echo new > ~/c")
    msgs = list(sprite.create_checkpoint())
    assert msgs[-1].data == "Checkpoint v1 created successfully"

    cps = sprite.list_checkpoints()
    ids = [c.id for c in cps]
    assert ids == ["Current", "v1", "v0"], ids
    v0 = sprite.get_checkpoint("v0")
    assert v0.comment == "py first"
    assert v0.create_time.tzinfo is not None
    assert cps[1].create_time >= v0.create_time
    assert sprite.get_checkpoint("v1").history == ["v0"]

    msgs = list(sprite.restore_checkpoint("v0"))
    assert msgs[-1].type == "complete", msgs
    assert msgs[-1].data == "Restore from v0 complete"
    out = _run(sprite, "cat ~/a ~/b; test -e ~/c && echo c-exists || echo no-c")
    assert out == "first\ndoomed\nno-c\n", out

    # Forward again to v1.
    list(sprite.restore_checkpoint("v1"))
    assert _run(sprite, "cat ~/a ~/c") == "first\nsecond\nnew\n"


def test_checkpoint_errors(make_sprite):
    sprite = make_sprite("ckerr")
    with pytest.raises((APIError, SpriteError)) as e:
        sprite.get_checkpoint("v3")
    assert getattr(e.value, "status_code", 404) == 404
    with pytest.raises((APIError, SpriteError)):
        list(sprite.restore_checkpoint("v3"))

"""The filesystem API through sprites-py's pathlib-like interface (spec §9)."""

from __future__ import annotations

import pytest


def test_filesystem_round_trip(make_sprite):
    sprite = make_sprite("fs")
    fs = sprite.filesystem("/home/sprite")
    d = fs / "proj"
    d.mkdir(parents=True)
    # sprites-py stats through a listing of the path, so a directory's "stat" is its first
    # child (an SDK quirk, spec §9): check the directory through its parent instead.
    assert "proj" in fs.cwd.listdir()
    f = d / "hello.txt"
    f.write_text("hi from python\n")
    assert f.exists() and f.is_file()
    assert f.read_text() == "hi from python\n"
    st = f.stat()
    assert st.size == len("hi from python\n") and not st.is_dir
    assert sorted(d.listdir()) == ["hello.txt"]
    g = f.rename(d / "renamed.txt")
    assert not f.exists() and g.read_text() == "hi from python\n"
    g.copy_to(d / "copy.txt")
    assert (d / "copy.txt").read_bytes() == b"hi from python\n"
    (d / "copy.txt").chmod(0o600)
    out = sprite.command("stat", "-c", "%a %U", "/home/sprite/proj/copy.txt").output()
    assert out.decode().strip() == "600 sprite"
    (d / "copy.txt").unlink()
    assert not (d / "copy.txt").exists()
    with pytest.raises(Exception):
        (fs / "/etc/not-mine").write_text("x")
    missing = fs / "does-not-exist"
    assert not missing.exists()

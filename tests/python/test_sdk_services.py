"""Services through the official sprites-py calls (spec §8)."""

from __future__ import annotations

import time

import pytest
from sprites.exceptions import APIError, SpriteError


def _wait(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_services_round_trip(make_sprite):
    sprite = make_sprite("svc")
    stream = sprite.create_service(
        "web",
        "python3",
        ["-u", "-c", "import time\nprint('serving', flush=True)\nwhile True: time.sleep(1)"],
        http_port=8080,
        duration=1.0,
        env={"MODE": "test"},
        dir="/tmp",
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "started", kinds
    assert any(e.type == "stdout" and e.data == "serving\n" for e in events), events
    assert kinds[-1] == "complete"
    assert events[-1].log_files["combined"] == "/.sprite/logs/services/web.log"

    services = sprite.list_services()
    assert [s.name for s in services] == ["web"]
    web = sprite.get_service("web")
    assert web.cmd == "python3" and web.http_port == 8080 and web.env == {"MODE": "test"}
    assert web.state.status == "running" and web.state.pid > 0
    assert web.state.started_at is not None

    # Only one service owns the URL port.
    with pytest.raises(APIError) as e:
        sprite.create_service("other", "sleep", ["100"], http_port=9000)
    assert e.value.status_code == 409

    stop = list(sprite.stop_service("web", timeout=5.0))
    assert [e.type for e in stop][-1] == "complete"
    assert "stopped" in [e.type for e in stop]
    assert sprite.get_service("web").state.status == "stopped"
    list(sprite.start_service("web", duration=0.5))
    assert sprite.get_service("web").state.status == "running"
    sprite.signal_service("web", "TERM")
    # A signal-induced exit is a crash: the service comes back with a restart count.
    assert _wait(lambda: (sprite.get_service("web").state.restart_count or 0) >= 1)
    assert _wait(lambda: sprite.get_service("web").state.status == "running")

    sprite.delete_service("web")
    assert sprite.list_services() == []
    with pytest.raises((APIError, SpriteError)):
        sprite.get_service("web")

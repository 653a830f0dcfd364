"""Running commands in sprites, against a real spritesd, through the official Python SDK.

Transport map of sprites-py 0.7.2 (read from its source):
  * every SDK exec call - ``Sprite.run``, ``Sprite.command(...).run/output/combined_output``,
    ``Sprite.attach_session``, ``sprites.exec.run`` and the async ``AsyncSprite`` equivalents -
    goes over a WebSocket: ``GET /v1/sprites/{name}/exec?cmd=..&path=..&env=..&dir=..&stdin=true``
    (``sprites.websocket._run_ws_command_direct``). With ``SpritesClient(control_mode=True)`` it
    uses ``/v1/sprites/{name}/control`` (falling back to the direct socket on any non-101
    answer, ``run_ws_command_via_control``).
  * the SDK has no HTTP (``POST .../exec``) exec call at all. That endpoint is exercised here
    through the SDK's own authenticated HTTP client (``SpritesClient.http_client``), which is
    how SDK users reach endpoints the SDK does not wrap. Restart is not wrapped either and goes
    the same way.

Every exec test runs over each transport: HTTP, a WebSocket, and the control connection.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import httpx
import pytest
from sprites import ExecError, Sprite, SpritesClient
from sprites.exceptions import APIError, TimeoutError as SpriteTimeoutError

from conftest import unique_name



@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: bytes


def parse_http_exec_body(body: bytes) -> Result:
    """Decodes a whole HTTP exec body: ``[0x01|data]``/``[0x02|data]`` frames, then ``[0x03, code]``.

    Frames carry no length, so a body that was read in one piece can only be split because the
    payloads the tests use never contain the bytes 0x00-0x03. The final exit frame is mandatory.
    """
    assert len(body) >= 2 and body[-2] == 0x03, f"no exit frame at the end: {body[-40:]!r}"
    code = body[-1]
    rest = body[:-2]
    out = {1: bytearray(), 2: bytearray()}
    stream = None
    for b in rest:
        if b in (1, 2):
            stream = b
        elif b < 4:
            pytest.fail(f"unexpected control byte {b} inside exec output: {rest[:200]!r}")
        else:
            assert stream is not None, f"output before any stream id: {rest[:40]!r}"
            out[stream].append(b)
    return Result(code, bytes(out[1]), bytes(out[2]))


def exec_http(
    client: SpritesClient,
    name: str,
    args: List[str],
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[str] = None,
    stdin: Optional[bytes] = None,
) -> Result:
    """``POST /v1/sprites/{name}/exec`` with the SDK's authenticated HTTP client (§3.5)."""
    params = [("cmd", a) for a in args] + [("path", args[0])]
    for k, v in (env or {}).items():
        params.append(("env", f"{k}={v}"))
    if cwd:
        params.append(("dir", cwd))
    if stdin is not None:
        params.append(("stdin", "true"))
    r = client.http_client.post(
        f"{client.base_url}/v1/sprites/{urllib.parse.quote(name, safe='')}/exec",
        params=params,
        content=stdin if stdin is not None else b"",
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
    )
    assert r.status_code == 200, f"HTTP exec {args}: {r.status_code} {r.text}"
    assert r.headers.get("content-type", "").startswith("application/octet-stream")
    return parse_http_exec_body(r.content)


def exec_ws(
    sprite: Sprite,
    args: List[str],
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[str] = None,
    stdin: Optional[bytes] = None,
) -> Result:
    """The SDK's ``Sprite.command(...).run()`` (WebSocket exec), with stdout/stderr sinks."""
    out, err = io.BytesIO(), io.BytesIO()
    cmd = sprite.command(
        *args,
        env=env,
        cwd=cwd,
        stdin=io.BytesIO(stdin) if stdin is not None else None,
        stdout=out,
        stderr=err,
        timeout=120,
    )
    try:
        cmd.run()
        code = 0
    except ExecError as e:
        code = e.exit_code()
    assert cmd.exit_code == code
    return Result(code, out.getvalue(), err.getvalue())


Runner = Callable[..., Result]


@pytest.fixture(scope="module")
def control_client(server):
    """A client in control mode: exec over the multiplexed ``/control`` sockets (spec §4)."""
    c = server.client(control_mode=True)
    yield c
    c.close()


@pytest.fixture(params=["http", "ws", "control"])
def run(request, client, control_client) -> Runner:
    """``run(sprite, args, env=, cwd=, stdin=)`` over one transport."""
    if request.param == "http":
        return lambda sprite, args, **kw: exec_http(client, sprite.name, args, **kw)
    if request.param == "control":

        def via_control(sprite, args, env=None, cwd=None, stdin=None):
            s = control_client.sprite(sprite.name)
            # In control mode sprites-py 0.7.2 ignores stdout/stderr sinks and keeps the
            # output on the command object instead, so it is read from there.
            cmd = s.command(*args, env=env, cwd=cwd, timeout=120,
                            stdin=io.BytesIO(stdin) if stdin is not None else None)
            try:
                cmd.run()
                code = 0
            except ExecError as e:
                code = e.exit_code()
            assert s._control_mode_supported, "fell back from the control connection"
            return Result(code, cmd._stdout_data, cmd._stderr_data)

        return via_control
    return lambda sprite, args, **kw: exec_ws(sprite, args, **kw)


# ---------------------------------------------------------------------------------------------
# output, input, exit codes


def test_stdout(run, shared_sprite):
    r = run(shared_sprite, ["echo", "hello world"])
    assert r == Result(0, b"hello world\n", b"")


def test_stderr(run, shared_sprite):
    r = run(shared_sprite, ["sh", "-c", "echo oops >&2"])
    assert r == Result(0, b"", b"oops\n")


def test_stdout_and_stderr_are_separate(run, shared_sprite):
    r = run(shared_sprite, ["sh", "-c", "echo a; echo b >&2; sleep 0.05; echo c; echo d >&2"])
    assert r == Result(0, b"a\nc\n", b"b\nd\n")


def test_large_stdout(run, shared_sprite):
    n = 300_000
    r = run(shared_sprite, ["sh", "-c", f"head -c {n} /dev/zero | tr '\\000' x"])
    assert r.code == 0
    assert r.stdout == b"x" * n
    assert r.stderr == b""


def test_stdin_round_trip(run, shared_sprite):
    data = b"line one\nline two\n\xc3\xa9t\xc3\xa9\n"
    r = run(shared_sprite, ["cat"], stdin=data)
    assert r == Result(0, data, b"")


def test_large_binary_stdin(run, shared_sprite):
    # Every byte value, 0x00 and 0x04 included (the WebSocket stdin frame and EOF markers).
    data = random.Random(7).randbytes(256 * 1024) + bytes(range(256)) * 4
    r = run(shared_sprite, ["sha256sum"], stdin=data)
    assert r.code == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_no_stdin_means_eof(run, shared_sprite):
    # Without stdin the child must see EOF at once instead of hanging.
    t = time.monotonic()
    r = run(shared_sprite, ["sh", "-c", "cat; echo done"])
    assert r == Result(0, b"done\n", b"")
    assert time.monotonic() - t < 30


@pytest.mark.parametrize(
    "args,code",
    [
        (["true"], 0),
        (["false"], 1),
        (["sh", "-c", "exit 3"], 3),
        (["sh", "-c", "exit 255"], 255),
        (["sh", "-c", "no-such-command-xyz"], 127),
        (["no-such-binary-xyz"], 127),
        (["sh", "-c", "kill -9 $$"], 137),
        (["sh", "-c", "kill -TERM $$"], 143),
    ],
    ids=["true", "false", "exit3", "exit255", "sh-missing", "missing-binary", "sigkill", "sigterm"],
)
def test_exit_codes(run, shared_sprite, args, code):
    r = run(shared_sprite, args)
    assert r.code == code, r


# ---------------------------------------------------------------------------------------------
# environment, working directory, identity


def test_env(run, shared_sprite):
    r = run(
        shared_sprite,
        ["sh", "-c", 'printf "%s|%s" "$GREETING" "$WITH_EQUALS"; echo; whoami'],
        env={"GREETING": "hello there", "WITH_EQUALS": "a=b=c"},
    )
    assert r == Result(0, b"hello there|a=b=c\nsprite\n", b"")


def test_default_env(run, shared_sprite):
    r = run(shared_sprite, ["sh", "-c", 'echo "$HOME"; test -n "$PATH" && echo has-path'])
    assert r == Result(0, b"/home/sprite\nhas-path\n", b"")


@pytest.mark.parametrize("d", ["/tmp", "/", "/home/sprite"])
def test_dir(run, shared_sprite, d):
    r = run(shared_sprite, ["pwd"], cwd=d)
    assert r == Result(0, f"{d}\n".encode(), b"")


def test_missing_dir_fails_without_running(run, shared_sprite):
    r = run(shared_sprite, ["sh", "-c", "echo ran"], cwd="/no/such/dir")
    assert r.code != 0
    assert r.stdout == b""
    assert b"/no/such/dir" in r.stderr


def test_default_dir_is_home(run, shared_sprite):
    assert run(shared_sprite, ["pwd"]) == Result(0, b"/home/sprite\n", b"")


def test_runs_as_sprite_user(run, shared_sprite):
    assert run(shared_sprite, ["whoami"]) == Result(0, b"sprite\n", b"")
    assert run(shared_sprite, ["id", "-u"]) == Result(0, b"1000\n", b"")


def test_hostname_is_sprite_name(run, shared_sprite):
    assert run(shared_sprite, ["hostname"]) == Result(0, f"{shared_sprite.name}\n".encode(), b"")


# ---------------------------------------------------------------------------------------------
# state across execs and restarts


def test_file_persists_between_execs(run, shared_sprite):
    token = unique_name("content")
    path = f"/home/sprite/{token}.txt"
    w = run(shared_sprite, ["sh", "-c", f"echo {token} > {path}"])
    assert w == Result(0, b"", b"")
    r = run(shared_sprite, ["cat", path])
    assert r == Result(0, f"{token}\n".encode(), b"")


def test_restart_keeps_file(run, client, make_sprite):
    s = make_sprite("restart")
    token = unique_name("keep")
    assert run(s, ["sh", "-c", f"echo {token} > ~/kept.txt"]).code == 0
    # A background process outlives its exec, but not a restart.
    assert run(s, ["sh", "-c", "sleep 1000 >/dev/null 2>&1 </dev/null &"]).code == 0
    assert run(s, ["pgrep", "-x", "sleep"]).code == 0
    # Not wrapped by sprites-py: POST .../restart through its authenticated HTTP client.
    resp = client.http_client.post(f"{client.base_url}/v1/sprites/{s.name}/restart", timeout=120)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body.get("sprite_name") == s.name
    assert isinstance(body.get("message"), str)
    r = run(s, ["cat", "/home/sprite/kept.txt"])
    assert r == Result(0, f"{token}\n".encode(), b"")
    assert run(s, ["pgrep", "-x", "sleep"]).code == 1, "restart must stop every process"
    assert client.get_sprite(s.name).status in ("cold", "warm", "running")


# ---------------------------------------------------------------------------------------------
# SDK-level WebSocket API (subprocess-style helpers, errors, control-mode fallback)


def test_sdk_run_capture_output(shared_sprite):
    cp = shared_sprite.run("sh", "-c", "echo out; echo err >&2; exit 4", capture_output=True, timeout=60)
    assert cp.returncode == 4
    assert cp.stdout == b"out\n"
    assert cp.stderr == b"err\n"
    assert cp.args == ["sh", "-c", "echo out; echo err >&2; exit 4"]


def test_sdk_run_check_raises_exec_error(shared_sprite):
    with pytest.raises(ExecError) as ei:
        shared_sprite.run("sh", "-c", "echo bad >&2; exit 3", capture_output=True, check=True, timeout=60)
    assert ei.value.exit_code() == 3
    assert ei.value.stderr == b"bad\n"


def test_sdk_output_and_combined_output(shared_sprite):
    assert shared_sprite.command("echo", "hi", timeout=60).output() == b"hi\n"
    combined = shared_sprite.command("sh", "-c", "echo o; echo e >&2", timeout=60).combined_output()
    assert sorted(combined.splitlines()) == [b"e", b"o"]


def test_sdk_tty_run(shared_sprite):
    # TTY mode: raw PTY output, exit code from the {"type":"exit"} text message.
    cp = shared_sprite.run(
        "sh", "-c", "tty; stty size; echo err >&2; exit 4",
        tty=True, tty_rows=33, tty_cols=101, capture_output=True, timeout=60,
    )
    assert cp.returncode == 4
    lines = cp.stdout.replace(b"\r\n", b"\n").splitlines()
    assert lines[0].startswith(b"/dev/pts/"), cp.stdout
    assert lines[1:] == [b"33 101", b"err"], cp.stdout
    assert cp.stderr == b""


def test_sdk_timeout_then_sprite_still_usable(shared_sprite):
    t = time.monotonic()
    with pytest.raises(SpriteTimeoutError):
        shared_sprite.run("sleep", "30", timeout=1)
    assert time.monotonic() - t < 15
    assert shared_sprite.run("echo", "alive", capture_output=True, timeout=60).stdout == b"alive\n"


def test_sdk_control_mode_runs_over_the_control_connection(server, shared_sprite):
    # /control is served (spec §4): commands go over pooled control sockets, no fallback.
    with server.client(control_mode=True) as c:
        s = c.sprite(shared_sprite.name)
        cp = s.run("sh", "-c", "echo via-control; echo e >&2; exit 5", capture_output=True, timeout=60)
        assert cp.returncode == 5
        assert (cp.stdout, cp.stderr) == (b"via-control\n", b"e\n")
        assert s._control_mode_supported is True
        assert s.has_control_connection()
        cmd = s.command("sh", "-c", 'cat; echo "$K $(pwd)"', env={"K": "v w"}, cwd="/tmp",
                        stdin=io.BytesIO(b"in\x00put\n"), timeout=60)
        assert cmd.output() == b"in\x00put\nv w /tmp\n"
        # Sequential commands reuse the pooled sockets.
        for i in range(5):
            assert s.run("echo", str(i), capture_output=True, timeout=60).stdout == f"{i}\n".encode()
        assert s.run("whoami", capture_output=True, timeout=60).stdout == b"sprite\n"
        assert s._control_mode_supported is True


def test_sdk_list_sessions_shows_running_command(shared_sprite):
    import threading

    marker = "2.25"  # a sleep length no other test uses, to find this session
    t = threading.Thread(target=lambda: shared_sprite.run("sleep", marker, timeout=60))
    t.start()
    try:
        deadline = time.monotonic() + 5
        mine = []
        while time.monotonic() < deadline and not mine:
            mine = [x for x in shared_sprite.list_sessions() if x.command == f"sleep {marker}"]
            time.sleep(0.1)
        assert len(mine) == 1, shared_sprite.list_sessions()
        sess = mine[0]
        assert isinstance(sess.id, str) and sess.id
        assert sess.is_active is True
        assert sess.tty is False
        assert sess.workdir == "/home/sprite"
        # The module-level helper reads the same endpoint.
        from sprites.session import list_sessions

        assert sess.id in {x.id for x in list_sessions(shared_sprite)}
    finally:
        t.join(timeout=60)
    after = [x for x in shared_sprite.list_sessions() if x.id == sess.id]
    assert after == [] or after[0].is_active is False


def test_sdk_kill_session(shared_sprite):
    import threading

    from sprites.session import kill_session

    res = {}
    t = threading.Thread(
        target=lambda: res.update(cp=shared_sprite.run("sleep", "44.5", capture_output=True, timeout=60))
    )
    t.start()
    try:
        deadline = time.monotonic() + 5
        mine = []
        while time.monotonic() < deadline and not mine:
            mine = [x for x in shared_sprite.list_sessions() if x.command == "sleep 44.5"]
            time.sleep(0.1)
        assert mine, "session of the running command not listed"
        # sprites-py sends the signal in a JSON body ({"signal": .., "timeout": ..}).
        stream = kill_session(shared_sprite, mine[0].id, signal="SIGUSR1", timeout=5)
        types = [m.type for m in stream]
        assert "signal" in types and types[-1] == "complete", types
    finally:
        t.join(timeout=60)
    assert res["cp"].returncode == 128 + 10  # SIGUSR1
    with pytest.raises(APIError) as ei:
        kill_session(shared_sprite, "999999")
    assert ei.value.status_code == 404


def test_sdk_disconnect_stops_non_tty_command(shared_sprite):
    # A non-TTY command whose client went away is killed after max_run_after_disconnect (10 s).
    with pytest.raises(SpriteTimeoutError):
        shared_sprite.run("sleep", "61.5", timeout=1)
    probe = ["pgrep", "-f", "sleep 61[.]5"]
    assert shared_sprite.run(*probe, timeout=60).returncode == 0, "killed at once, not after 10 s"
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        if shared_sprite.run(*probe, timeout=60).returncode == 1:
            break
        time.sleep(1)
    else:
        pytest.fail("command still running 25 s after its client disconnected")


def test_ws_exec_missing_sprite_is_404(client):
    # The WebSocket upgrade is refused before any exec happens.
    with pytest.raises(APIError) as ei:
        client.sprite(unique_name("never")).run("true", timeout=60)
    assert ei.value.status_code == 404
    assert ei.value.error_code  # parsed from the JSON error body


def test_ws_exec_other_org_is_404(other_org, shared_sprite):
    _, other = other_org
    with pytest.raises(APIError) as ei:
        other.sprite(shared_sprite.name).run("true", timeout=60)
    assert ei.value.status_code == 404


def test_ws_exec_wrong_token_is_401(server, shared_sprite):
    # sprites-py maps a refused upgrade to APIError (not AuthenticationError).
    with SpritesClient("personal/x/y/wrong", base_url=server.base_url) as bad:
        with pytest.raises(APIError) as ei:
            bad.sprite(shared_sprite.name).run("true", timeout=60)
    assert ei.value.status_code == 401


# ---------------------------------------------------------------------------------------------
# HTTP exec specifics (§3.5)


def test_http_exec_frames_are_separate_chunks(server, shared_sprite):
    """Each frame is its own HTTP chunk and the exit frame is exactly two bytes (what the JS
    SDK's ``execFileHTTP`` parses). Read with httpx (the SDK's HTTP library), streamed."""
    url = f"{server.base_url}/v1/sprites/{shared_sprite.name}/exec"
    params = [("cmd", "sh"), ("cmd", "-c"), ("cmd", "echo one; sleep 0.1; echo two >&2; exit 7"), ("path", "sh")]
    chunks = []
    with httpx.stream(
        "POST", url, params=params, headers={"Authorization": f"Bearer {server.token}"}, timeout=60
    ) as r:
        assert r.status_code == 200
        for c in r.iter_raw():
            if c:
                chunks.append(c)
    assert chunks, "empty body"
    assert chunks[-1] == b"\x03\x07", chunks
    for c in chunks[:-1]:
        assert c[0] in (1, 2), f"chunk does not start with a stream id: {c!r} in {chunks!r}"
    assert b"".join(c[1:] for c in chunks[:-1] if c[0] == 1) == b"one\n"
    assert b"".join(c[1:] for c in chunks[:-1] if c[0] == 2) == b"two\n"


@pytest.mark.parametrize("flag", ["tty", "detachable"])
def test_http_exec_rejects_tty_and_detachable(client, shared_sprite, flag):
    r = client.http_client.post(
        f"{client.base_url}/v1/sprites/{shared_sprite.name}/exec",
        params=[("cmd", "true"), ("path", "true"), (flag, "true")],
    )
    assert r.status_code == 400, r.text


def test_http_exec_missing_sprite_is_404_json(client):
    r = client.http_client.post(
        f"{client.base_url}/v1/sprites/{unique_name('never')}/exec", params=[("cmd", "true")]
    )
    assert r.status_code == 404
    v = r.json()
    assert v.get("error") and v.get("message")


def test_http_exec_other_org_is_404(other_org, shared_sprite):
    _, other = other_org
    r = other.http_client.post(
        f"{other.base_url}/v1/sprites/{shared_sprite.name}/exec", params=[("cmd", "true")]
    )
    assert r.status_code == 404


def test_file_written_over_http_is_read_over_ws(client, shared_sprite):
    token = unique_name("cross")
    assert exec_http(client, shared_sprite.name, ["sh", "-c", f"echo {token} > ~/cross.txt"]).code == 0
    r = exec_ws(shared_sprite, ["cat", "/home/sprite/cross.txt"])
    assert r == Result(0, f"{token}\n".encode(), b"")

"""Starts a real spritesd for the official Python SDK (`sprites-py`) and hands out clients.

Nothing here talks to the server on the SDK's behalf: the fixtures only start and stop the
process, read the admin token it writes, and mint tokens for other orgs with the
`spritesd token create` command.

Environment:
    SPRITESD_BIN            server binary (default: <repo>/target/debug/spritesd)
    SPRITES_TEST_IMAGE_DIR  base image cache (default: /var/cache/sprites/images)
    SPRITES_TEST_KEEP=1     keep the data dir after the run (it is always kept on failure)
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from sprites import SpritesClient

REPO = Path(__file__).resolve().parents[2]
SPRITESD_BIN = os.environ.get("SPRITESD_BIN", str(REPO / "target" / "debug" / "spritesd"))
IMAGE_DIR = os.environ.get("SPRITES_TEST_IMAGE_DIR", "/var/cache/sprites/images")
START_TIMEOUT = 120.0

# Every sprite a test creates gets this prefix, so names never collide between tests.
_counter = itertools.count()


def unique_name(tag: str = "t") -> str:
    """A fresh valid sprite name (lowercase letters, digits, dashes)."""
    return f"py-{tag}-{os.getpid() % 10000}-{next(_counter)}"


@dataclass
class Server:
    """A running spritesd."""

    base_url: str
    token: str
    data_dir: str
    log_path: str
    proc: subprocess.Popen
    # Tokens minted for other orgs during the session: org -> token.
    org_tokens: Dict[str, str] = field(default_factory=dict)

    def mint_token(self, org: str) -> str:
        """A new token for `org` (created if needed), via `spritesd token create`."""
        out = subprocess.run(
            [SPRITESD_BIN, "token", "create", "--org", org, "--data-dir", self.data_dir,
             "--image-dir", IMAGE_DIR],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [l.strip() for l in out.stdout.splitlines() if l.strip()]
        assert lines, f"token create printed nothing; stderr: {out.stderr}"
        token = lines[-1]
        self.org_tokens.setdefault(org, token)
        return token

    def client(self, token: Optional[str] = None, **kw) -> SpritesClient:
        """An official SDK client pointed at this server."""
        return SpritesClient(self.token if token is None else token, base_url=self.base_url, **kw)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError as e:
            return f"(no server log: {e})"

    def raw(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        token: Optional[str] = "default",
        timeout: float = 60.0,
    ) -> Tuple[int, Dict[str, str], bytes]:
        """A raw HTTP request (for inputs the SDK cannot express). Returns status, headers, body."""
        h = dict(headers or {})
        if token == "default":
            token = self.token
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base_url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _wait_ready(proc: subprocess.Popen, data_dir: str, log_path: str) -> str:
    """Waits until spritesd listens; returns the address it bound (it was given port 0 and
    writes the real address to <data-dir>/spritesd.addr, so no port can be raced)."""
    addr_file = Path(data_dir, "spritesd.addr")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"spritesd exited with {proc.returncode} during start-up:\n"
                + Path(log_path).read_text(errors="replace")
            )
        if addr_file.exists():
            addr = addr_file.read_text().strip()
            if addr:
                return addr
        time.sleep(0.05)
    raise RuntimeError(
        f"spritesd did not listen within {START_TIMEOUT:.0f}s:\n"
        + Path(log_path).read_text(errors="replace")
    )


def _pids_using(path: str) -> List[int]:
    """Processes whose command line mentions `path`."""
    pids = []
    needle = path.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def _cgroup_instance(data_dir: str) -> str:
    """The server's cgroup instance name for a data dir (FNV-1a of the canonical path, as in
    `Config::instance`)."""
    h = 0xCBF29CE484222325
    for b in os.path.realpath(data_dir).encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "d%08x" % (h & 0xFFFFFFFF)


def _kill_cgroups(data_dir: str) -> Tuple[List[int], List[str]]:
    """SIGKILLs every process left in this server instance's sprite cgroups (v1 and v2), then
    removes the emptied cgroup directories. Touches nothing of other instances."""
    inst = _cgroup_instance(data_dir)
    roots = [f"/sys/fs/cgroup/{c}/sprites/{inst}" for c in ("freezer", "memory", "pids")]
    roots.append(f"/sys/fs/cgroup/sprites/{inst}")
    roots = [r for r in roots if os.path.isdir(r)]
    killed: List[int] = []
    for r in roots:
        for sub in sorted(os.listdir(r)):
            d = os.path.join(r, sub)
            if not os.path.isdir(d):
                continue
            # A frozen process cannot die: thaw first (v1 freezer.state, v2 cgroup.freeze).
            for f, v in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                try:
                    with open(os.path.join(d, f), "w") as fh:
                        fh.write(v)
                except OSError:
                    pass
            try:
                with open(os.path.join(d, "cgroup.procs")) as fh:
                    pids = [int(x) for x in fh.read().split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
    left: List[str] = []
    if killed:
        time.sleep(0.5)
    for r in roots:
        for sub in os.listdir(r):
            d = os.path.join(r, sub)
            if os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError:
                    left.append(d)
        try:
            os.rmdir(r)
        except OSError:
            left.append(r)
    return sorted(set(killed)), left


def _mounts_under(path: str) -> List[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            return [l.split()[4] for l in f if l.split()[4].startswith(path.rstrip("/") + "/")]
    except OSError:
        return []


def _cleanup_sprites(server: Server) -> List[str]:
    """Deletes every sprite of every org this session used, through the API."""
    problems = []
    tokens = [server.token, *server.org_tokens.values()]
    for token in tokens:
        try:
            with server.client(token) as c:
                for s in c.list_all_sprites():
                    try:
                        c.delete_sprite(s.name)
                    except Exception as e:  # noqa: BLE001 - best effort clean-up
                        problems.append(f"delete {s.name}: {e!r}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"list sprites: {e!r}")
    return problems


@pytest.fixture(scope="session")
def server(request) -> Server:
    """A real spritesd with a fresh data dir, for the whole session."""
    if not os.path.exists(SPRITESD_BIN):
        pytest.exit(f"spritesd binary not found at {SPRITESD_BIN} (set SPRITESD_BIN)", returncode=2)
    # Short path: agent sockets live below it and must stay under 108 bytes.
    tmp = tempfile.mkdtemp(prefix="sp", dir="/tmp")
    data_dir = os.path.join(tmp, "d")
    log_path = os.path.join(tmp, "spritesd.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [SPRITESD_BIN, "serve", "--data-dir", data_dir, "--image-dir", IMAGE_DIR,
         "--listen", "127.0.0.1:0", "--storage-pool", "none"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        addr = _wait_ready(proc, data_dir, log_path)
        token = Path(data_dir, "admin-token").read_text().strip()
    except BaseException:
        proc.kill()
        proc.wait()
        log.close()
        raise
    srv = Server(
        base_url=f"http://{addr}",
        token=token,
        data_dir=data_dir,
        log_path=log_path,
        proc=proc,
    )
    yield srv

    problems = _cleanup_sprites(srv) if proc.poll() is None else ["server had already exited"]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            problems.append("server ignored SIGTERM for 30 s; killed")
            proc.kill()
            proc.wait()
    log.close()
    # Sprites outlive the server by design. Deleting them through the API stopped them; as a
    # fallback, kill whatever is still in this instance's cgroups or runs from its run/ dir.
    leftovers, cgroups_left = _kill_cgroups(data_dir)
    run_dir = os.path.join(data_dir, "run") + "/"
    for pid in _pids_using(run_dir):
        try:
            os.kill(pid, signal.SIGKILL)
            leftovers.append(pid)
        except ProcessLookupError:
            pass
    if leftovers:
        problems.append(f"killed leftover sprite processes {sorted(set(leftovers))}")
    if cgroups_left:
        problems.append(f"could not remove cgroups {cgroups_left}")
    failed = request.session.testsfailed > 0
    if problems or failed:
        sys.stderr.write("\n==== spritesd log (%s) ====\n%s\n" % (log_path, srv.log()))
        for p in problems:
            sys.stderr.write(f"cleanup: {p}\n")
    keep = failed or os.environ.get("SPRITES_TEST_KEEP") == "1"
    if not keep:
        time.sleep(0.2 if leftovers else 0)
        mounts = _mounts_under(tmp)
        if mounts:
            sys.stderr.write(f"cleanup: not removing {tmp}, still mounted: {mounts}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        sys.stderr.write(f"kept data dir {tmp}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Puts the tail of the server log into the report of a failing test."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and not hasattr(rep, "wasxfail"):
        srv = item.funcargs.get("server")
        if isinstance(srv, Server):
            tail = "\n".join(srv.log().splitlines()[-60:])
            rep.sections.append(("spritesd log (last 60 lines)", tail))


@pytest.fixture(scope="session")
def client(server) -> SpritesClient:
    """The official SDK client with the admin token of org `personal`."""
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="session")
def other_org(server) -> Tuple[str, SpritesClient]:
    """A second org and an SDK client holding its token."""
    token = server.mint_token("py-other-org")
    c = server.client(token)
    yield token, c
    c.close()


@pytest.fixture
def make_sprite(client):
    """Creates sprites through the SDK and deletes them after the test (if still there)."""
    made = []

    def make(tag: str = "t", **kw):
        name = unique_name(tag)
        sprite = client.create_sprite(name, **kw)
        made.append(name)
        return sprite

    yield make
    for name in made:
        try:
            client.delete_sprite(name)
        except Exception:  # noqa: BLE001 - already deleted by the test
            pass


@pytest.fixture(scope="module")
def shared_sprite(client):
    """One sprite shared by the exec tests of a module (creating one costs a boot)."""
    name = unique_name("exec")
    sprite = client.create_sprite(name)
    yield sprite
    try:
        client.delete_sprite(name)
    except Exception:  # noqa: BLE001
        pass


def json_body(body: bytes) -> dict:
    """Parses an error body, failing the test with the raw bytes if it is not JSON."""
    try:
        v = json.loads(body)
    except ValueError:
        pytest.fail(f"body is not JSON: {body[:300]!r}")
    assert isinstance(v, dict), v
    return v

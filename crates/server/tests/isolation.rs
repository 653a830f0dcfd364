//! A sprite cannot see other sprites, the host, or do what host root can.

mod common;

use common::{Api, TestServer};

#[tokio::test]
async fn sprites_are_isolated_from_each_other_and_the_host() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("one").await;
    api.create("two").await;

    // Another sprite's files and processes are invisible.
    api.exec("two", &["bash", "-c", "echo secret-two > /tmp/marker-two; (exec -a marker-proc-two sleep 300) >/dev/null 2>&1 &"]).await;
    let o = api.exec("one", &["cat", "/tmp/marker-two"]).await;
    assert_ne!(o.code, Some(0), "{o:?}");
    let o = api.exec("one", &["ls", "/tmp"]).await;
    assert!(!o.stdout.contains("marker-two"), "{o:?}");
    let o = api.exec("one", &["ps", "-eo", "args"]).await;
    assert!(
        !o.stdout.contains("marker-proc-two"),
        "processes of sprite two visible in one: {}",
        o.stdout
    );
    let o = api.sh("two", "ps -eo args").await;
    assert!(
        o.stdout.contains("marker-proc-two"),
        "the marker process runs in two: {}",
        o.stdout
    );
    // Only the sprite's own processes: init, agent, this shell and ps.
    let o = api.sh("one", "ps -e --no-headers | wc -l").await;
    assert!(o.stdout.trim().parse::<u32>().unwrap() <= 5, "{o:?}");
    let o = api.exec("one", &["hostname"]).await;
    assert_eq!(o.stdout, "one\n");

    // The host's files, data dir and devices are not there.
    let host_marker = s.data_dir.join("host-secret.txt");
    std::fs::write(&host_marker, "host-only").unwrap();
    let dd = s.data_dir.display().to_string();
    let o = api
        .sh(
            "one",
            &format!("cat {dd}/host-secret.txt; ls {dd}; ls /dev"),
        )
        .await;
    assert!(!o.stdout.contains("host-only"), "{o:?}");
    for dev in ["kvm", "vda", "sda", "mem", "loop0", "nvme0"] {
        assert!(
            !o.stdout.split_whitespace().any(|w| w == dev),
            "/dev/{dev} visible: {}",
            o.stdout
        );
    }
    let o = api
        .sh(
            "one",
            "sudo cat /proc/1/environ | tr '\\0' '\\n'; sudo ls /root",
        )
        .await;
    assert!(
        !o.stdout.contains("SPRITES_"),
        "server environment leaked: {}",
        o.stdout
    );
    // Root inside maps to an unprivileged host range (seen from the host: inside, the
    // programs' user namespace is one level below the agent's, identity-mapped).
    let mut ranges = Vec::new();
    for name in ["one", "two"] {
        let marker = format!("marker-uid-{name}");
        api.sh(
            name,
            &format!("(sudo bash -c 'exec -a {marker} sleep 300' >/dev/null 2>&1 &)"),
        )
        .await;
        let pid = find_process(&marker).unwrap_or_else(|| panic!("{marker} not found"));
        let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        let fields: Vec<u64> = map.split_whitespace().map(|f| f.parse().unwrap()).collect();
        assert_eq!(fields[0], 0, "{map}");
        assert!(
            fields[1] >= 1_000_000_000,
            "sprite root is host uid {}",
            fields[1]
        );
        assert_eq!(fields[2], 65536);
        ranges.push(fields[1]);
    }
    assert_ne!(ranges[0], ranges[1], "each sprite has its own uid range");

    // Root in the sprite cannot do what host root can.
    let o = api
        .sh(
            "one",
            "sudo mount -t tmpfs none /mnt 2>&1; sudo mount -o remount,rw /sys 2>&1; echo rc=$?",
        )
        .await;
    assert!(!o.stdout.contains("rc=0"), "{o:?}");
    let module = "import ctypes,os; l=ctypes.CDLL(None,use_errno=True); r=l.syscall(313,-1,b'',0); print(r, ctypes.get_errno())";
    let o = api.exec("one", &["sudo", "python3", "-c", module]).await;
    assert_eq!(
        o.stdout.trim(),
        "-1 1",
        "finit_module must fail with EPERM: {o:?}"
    );
    // io_uring (a large kernel surface, the source of many escalations) is refused too.
    let uring = "import ctypes; l=ctypes.CDLL(None,use_errno=True); p=ctypes.create_string_buffer(120); print([[(l.syscall(n,8,p) if n == 425 else l.syscall(n,-1,0,0,0,0)), ctypes.get_errno()] for n in (425,426,427)])";
    let o = api.exec("one", &["sudo", "python3", "-c", uring]).await;
    assert_eq!(
        o.stdout.trim(),
        "[[-1, 1], [-1, 1], [-1, 1]]",
        "io_uring_setup/enter/register must fail with EPERM: {o:?}"
    );
    let o = api
        .sh(
            "one",
            "sudo sh -c 'echo 1 > /proc/sys/kernel/sysrq' 2>&1; echo rc=$?",
        )
        .await;
    assert!(!o.stdout.contains("rc=0"), "host sysctl writable: {o:?}");
    let o = api
        .sh(
            "one",
            "sudo sh -c 'echo x > /sys/kernel/uevent_helper' 2>&1; echo rc=$?",
        )
        .await;
    assert!(!o.stdout.contains("rc=0"), "{o:?}");
    let o = api.sh("one", "sudo hostname hacked 2>&1; hostname").await;
    // The UTS namespace is the sprite's own: even a change stays inside.
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host_name.trim(), "hacked");
    drop(o);
    // The agent socket is not reachable from inside.
    let o = api
        .sh(
            "one",
            "ls /.sprite; find / -xdev -name agent.sock 2>/dev/null | head -1",
        )
        .await;
    assert!(!o.stdout.contains("agent.sock"), "{o:?}");
}

/// Host pid of the process whose command line starts with `marker`.
fn find_process(marker: &str) -> Option<i32> {
    for _ in 0..50 {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                if cmd.starts_with(marker.as_bytes()) {
                    return Some(pid);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// As root in the sprite, the agent's processes (PID 1 and the agent proper) can be neither
/// traced nor robbed of their descriptors (the host's channel), and no program inherits the
/// channel: code in a sprite cannot stand in for its agent.
#[tokio::test]
async fn sprite_root_cannot_take_the_agent() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("target").await;
    let probe = r#"
import ctypes, json, os
l = ctypes.CDLL(None, use_errno=True)
l.syscall.restype = ctypes.c_long
def errno_of(r):
    return 0 if r >= 0 else ctypes.get_errno()
agents = [p for p in os.listdir('/proc') if p.isdigit()
          and open(f'/proc/{p}/stat').read().split(') ')[0].endswith('(sprite-agent')]
out = {'agents': agents}
for p in agents:
    pid = int(p)
    pfd = l.syscall(434, pid, 0)
    out[f'pidfd_open {p}'] = errno_of(pfd)
    if pfd >= 0:
        out[f'getfd {p}'] = [errno_of(l.syscall(438, pfd, fd, 0)) for fd in range(0, 12)]
    out[f'seize {p}'] = errno_of(l.ptrace(0x4206, pid, None, None))
    # One iovec each way: the permission check comes before any address is looked at, so
    # EPERM means refused, anything else (EFAULT, success) means reached.
    buf = ctypes.create_string_buffer(8)
    local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = (ctypes.c_void_p * 2)(0x10000, 8)
    r = l.syscall(310, pid, local, 1, remote, 1, 0)
    out[f'vm_read {p}'] = 1 if r < 0 and ctypes.get_errno() == 1 else 0
    for f in ['ns/user', 'ns/mnt', 'environ', 'mem', 'fd/3']:
        try:
            open(f'/proc/{p}/{f}', 'rb').close()
            out[f'{f} {p}'] = 0
        except OSError as e:
            out[f'{f} {p}'] = e.errno
print(json.dumps(out))
"#;
    let o = api.exec("target", &["sudo", "python3", "-c", probe]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("probe output");
    let agents = v["agents"].as_array().unwrap();
    assert!(agents.len() >= 2, "PID 1 and the agent proper: {v}");
    for (k, r) in v.as_object().unwrap() {
        if k == "agents" {
            continue;
        }
        let denied = |e: &serde_json::Value| e.as_i64().is_some_and(|e| e != 0);
        let ok = match r {
            serde_json::Value::Array(a) => a.iter().all(denied),
            other => k.starts_with("pidfd_open") || denied(other),
        };
        assert!(ok, "sprite root reached the agent ({k} = {r}): {v}");
    }
    // No program holds the agent's listening socket.
    let o = api
        .sh("target", "for f in /proc/$$/fd/*; do readlink $f; done")
        .await;
    assert!(
        !o.stdout.lines().any(|l| l.starts_with("socket:")),
        "a program inherited a socket: {o:?}"
    );
    // The sprite keeps working as a machine of its own: its root can mount and trace its own
    // programs.
    let o = api
        .sh(
            "target",
            "sudo mount -t tmpfs none /mnt && sudo touch /mnt/x && echo mounted; \
             sleep 30 & sudo python3 -c \"import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); print('traced', l.ptrace(0x4206, int(sys.argv[1]), None, None))\" $!",
        )
        .await;
    assert!(o.stdout.contains("mounted"), "{o:?}");
    assert!(o.stdout.contains("traced 0"), "{o:?}");
    assert_eq!(
        api.exec("target", &["echo", "alive"]).await.stdout,
        "alive\n"
    );
}

fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A file of sprite `id`'s cgroup: `v2` in the unified hierarchy, else `v1` (`controller/file`)
/// in the legacy one.
fn cgroup_file(s: &TestServer, id: &str, v2: &str, v1: &str) -> String {
    let instance = sprites_testing::instance_name(&s.data_dir);
    if cgroup_v2() {
        format!("/sys/fs/cgroup/sprites/{instance}/{id}/{v2}")
    } else {
        let (controller, file) = v1.split_once('/').expect("controller/file");
        format!("/sys/fs/cgroup/{controller}/sprites/{instance}/{id}/{file}")
    }
}

fn memory_max_path(s: &TestServer, id: &str) -> String {
    cgroup_file(s, id, "memory.max", "memory/memory.limit_in_bytes")
}

/// Touching `mb` MiB in `sprite` gets the process killed (and the host keeps its memory).
async fn assert_killed_when_allocating(api: &Api, sprite: &str, mb: u64) {
    let code =
        format!("b = bytearray({mb} << 20); b[::4096] = b'x' * len(b[::4096]); print('survived')");
    let o = api.exec(sprite, &["python3", "-c", &code]).await;
    assert!(!o.stdout.contains("survived"), "{o:?}");
    assert_ne!(o.code, Some(0));
}

/// The resources policy is the sprite's memory limit, live and after a server restart.
#[tokio::test]
async fn the_memory_policy_is_the_cgroup_limit() {
    let mut s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let v = api.create("pol").await;
    let id = v["id"].as_str().unwrap().to_string();
    let read = |s: &TestServer| {
        std::fs::read_to_string(memory_max_path(s, &id))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read(&s), (2048u64 << 20).to_string());
    let (st, v) = api
        .json(
            reqwest::Method::PUT,
            "/v1/sprites/pol/policy/resources",
            Some(serde_json::json!({"memory": {"limit_mb": 256}})),
        )
        .await;
    assert!(st.is_success(), "{st} {v}");
    assert_eq!(read(&s), (256u64 << 20).to_string());
    s.restart().unwrap();
    let api = Api::new(&s);
    api.exec("pol", &["true"]).await;
    assert_eq!(read(&s), (256u64 << 20).to_string(), "after a restart");
    // Stopped and booted again, it keeps the policy's limit.
    let (st, _) = api
        .json(reqwest::Method::POST, "/v1/sprites/pol/restart", None)
        .await;
    assert!(st.is_success(), "{st}");
    assert_eq!(read(&s), (256u64 << 20).to_string(), "after a reboot");
    assert_killed_when_allocating(&api, "pol", 512).await;
    // Removing the policy gives the default back.
    let (st, _) = api
        .json(
            reqwest::Method::DELETE,
            "/v1/sprites/pol/policy/resources",
            None,
        )
        .await;
    assert!(st.is_success(), "{st}");
    assert_eq!(read(&s), (2048u64 << 20).to_string());
}

/// Every size a client sends is range-checked at once, against this host.
#[tokio::test]
async fn out_of_range_sizes_are_a_clear_400() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    for config in [
        serde_json::json!({"ram_mb": u64::MAX}),
        serde_json::json!({"ram_mb": 1u64 << 30}),
        serde_json::json!({"ram_mb": 1}),
        serde_json::json!({"cpus": 0}),
        serde_json::json!({"cpus": 100000}),
        serde_json::json!({"storage_gb": 0}),
    ] {
        let (st, v) = api
            .json(
                reqwest::Method::POST,
                "/v1/sprites",
                Some(serde_json::json!({"name": "big", "config": config})),
            )
            .await;
        assert_eq!(st, reqwest::StatusCode::BAD_REQUEST, "{config}: {v}");
        assert_eq!(v["error"], "bad_request", "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("must be between"),
            "{v}"
        );
    }
    let (_, list) = api.json(reqwest::Method::GET, "/v1/sprites", None).await;
    assert_eq!(list["sprites"].as_array().unwrap().len(), 0, "{list}");
    api.create("ok").await;
    for limit in [
        serde_json::json!(1),
        serde_json::json!(1u64 << 40),
        serde_json::json!("x"),
    ] {
        let (st, v) = api
            .json(
                reqwest::Method::PUT,
                "/v1/sprites/ok/policy/resources",
                Some(serde_json::json!({"memory": {"limit_mb": limit}})),
            )
            .await;
        assert_eq!(st, reqwest::StatusCode::BAD_REQUEST, "{limit}: {v}");
    }
}

#[tokio::test]
async fn cgroup_limits_apply() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let v = api
        .create_with(serde_json::json!({"name": "small", "config": {"ram_mb": 64}}))
        .await;
    assert_eq!(v["config"]["ram_mb"], 64);
    let id = v["id"].as_str().unwrap();
    let (mem, pids) = (
        memory_max_path(&s, id),
        cgroup_file(&s, id, "pids.max", "pids/pids.max"),
    );
    assert_eq!(
        std::fs::read_to_string(mem).unwrap().trim(),
        (64u64 << 20).to_string()
    );
    assert_eq!(std::fs::read_to_string(&pids).unwrap().trim(), "4096");
    // All sprites together leave the host a reserve of process ids (an eighth of pid_max,
    // at least 2048): eight sprites of 4096 no longer take a 32768 host's every pid.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let instance_pids = std::path::Path::new(&pids)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("pids.max");
    assert_eq!(
        std::fs::read_to_string(instance_pids).unwrap().trim(),
        (pid_max - (pid_max / 8).max(2048)).to_string()
    );
    // Allocating past the limit gets the process killed, not the host's memory.
    assert_killed_when_allocating(&api, "small", 256).await;
    // The sprite itself keeps working.
    assert_eq!(
        api.exec("small", &["echo", "alive"]).await.stdout,
        "alive\n"
    );
}

/// Free bytes of the filesystem holding `p`, as the host sees it.
fn host_free(p: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

fn avail(o: &common::ExecOut) -> u64 {
    o.stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df: {o:?}"))
}

/// A sprite's disk is a sparse image: it must not promise, nor take, space the host lacks.
/// On a 4 GiB host filesystem, a sprite that writes until it cannot gets ENOSPC, the host
/// keeps its reserve, and the sprite, its neighbour and the server's state all keep working.
#[tokio::test]
async fn a_sprite_cannot_fill_the_host() {
    let vol = sprites_testing::XfsVolume::new(4).unwrap();
    let s = TestServer::start_in(vol.path(), &[]).unwrap();
    let api = Api::new(&s);
    api.create("filler").await;
    api.create("other").await;
    const GIB: u64 = 1 << 30;
    let df = "df -B1 --output=avail / | tail -1";
    let seen = avail(&api.sh("filler", df).await);
    let free = host_free(vol.path());
    assert!(
        seen <= free.saturating_sub(2 * GIB) + (64 << 20),
        "the sprite sees {seen} bytes free, the host has {free}"
    );
    let o = api
        .sh(
            "filler",
            "dd if=/dev/zero of=$HOME/fill bs=1M count=8192 conv=fsync 2>&1; echo rc=$?",
        )
        .await;
    assert!(o.stdout.contains("No space left on device"), "{o:?}");
    assert!(!o.stdout.contains("rc=0"), "{o:?}");
    let left = host_free(vol.path());

    assert!(left >= GIB, "the host kept only {left} bytes");
    // The sprite's filesystem is healthy (not read-only after write errors).
    let o = api
        .sh("filler", "rm ~/fill && echo fine > ~/after && cat ~/after")
        .await;
    assert_eq!(o.stdout, "fine\n", "{o:?}");
    assert_eq!(
        api.exec("other", &["echo", "alive"]).await.stdout,
        "alive\n"
    );
    // The state store still takes writes.
    api.create("third").await;

    // A quota of 1 GB holds on a host with room for more.
    api.create_with(serde_json::json!({"name": "small", "config": {"storage_gb": 1}}))
        .await;
    let seen = avail(&api.sh("small", df).await);
    assert!(seen <= 1_000_000_000, "a 1 GB quota shows {seen} free");
    let o = api
        .sh(
            "small",
            "dd if=/dev/zero of=$HOME/fill bs=1M count=2000 conv=fsync 2>&1; echo rc=$?; stat -c %s $HOME/fill",
        )
        .await;
    assert!(o.stdout.contains("No space left on device"), "{o:?}");
    let size: u64 = o.stdout.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        size <= 1_000_000_000,
        "wrote {size} bytes with a 1 GB quota"
    );
}

/// A sprite's root opening thousands of connections to its inside API (`/.sprite/host`)
/// costs the server a few file descriptors, not thousands, and other sprites keep working.
#[tokio::test]
async fn the_inside_api_bounds_what_a_sprite_holds_open() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("hog").await;
    api.create("quiet").await;
    let pid = s.server_pid().unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let flood = r#"
import socket, time
held = []
for i in range(2000):
    try:
        c = socket.socket(socket.AF_UNIX)
        c.setblocking(False)
        c.connect("/.sprite/host/api.sock")
    except BlockingIOError:
        pass
    except OSError as e:
        print("stopped at", i, e.errno)
        break
    held.append(c)
print("holding", len(held), flush=True)
time.sleep(30)
"#;
    let id = api.create("flood").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let _ = id;
    let script = format!("cat > /tmp/flood.py <<'EOF'\n{flood}EOF\nsudo setsid python3 /tmp/flood.py > /tmp/flood.out 2>&1 < /dev/null &");
    assert_eq!(api.sh("flood", &script).await.code, Some(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let o = api.sh("flood", "cat /tmp/flood.out").await;
        if o.stdout.contains("holding") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{o:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let o = api.sh("flood", "cat /tmp/flood.out").await;
    let held: usize = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("holding "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(held >= 500, "the flood opened too few connections: {o:?}");
    let during = fds();
    assert!(
        during < before + 64,
        "the server holds {during} fds (was {before}) while a sprite floods its inside API"
    );
    assert_eq!(
        api.exec("quiet", &["echo", "alive"]).await.stdout,
        "alive\n"
    );
    let (st, _) = api.json(reqwest::Method::GET, "/v1/sprites", None).await;
    assert!(st.is_success());
}

/// A sprite sees itself in /proc (through lxcfs): its memory limit, its own uptime.
#[tokio::test]
async fn a_sprite_sees_its_own_memory_and_uptime() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create_with(serde_json::json!({"name": "me", "config": {"ram_mb": 512}}))
        .await;
    let o = api
        .sh(
            "me",
            "free -b | awk '/^Mem:/{print $2}'; cut -d' ' -f1 /proc/uptime; uptime",
        )
        .await;
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"536870912"), "free -b: {o:?}");
    let up: f64 = lines[1].parse().unwrap();
    let host_up: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        up < 60.0 && up < host_up,
        "a new sprite's uptime is {up} s: {o:?}"
    );
    assert!(lines[2].contains("load average"), "{o:?}");
    // A process using memory shows up in the sprite's own "used".
    let o = api
        .sh(
            "me",
            "python3 -c \"b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); import subprocess; print(subprocess.run(['free','-m'],capture_output=True,text=True).stdout)\"",
        )
        .await;
    let used: u64 = o
        .stdout
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{o:?}"));
    assert!((200..512).contains(&used), "used {used} MiB: {o:?}");
}

/// `cpus` caps a sprite's CPU time (a CFS quota of that many CPUs).
#[tokio::test]
async fn a_sprite_has_the_cpus_it_asked_for() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let v = api
        .create_with(serde_json::json!({"name": "one", "config": {"cpus": 1}}))
        .await;
    let id = v["id"].as_str().unwrap();
    let quota_file = cgroup_file(&s, id, "cpu.max", "cpu/cpu.cfs_quota_us");
    let want = if cgroup_v2() {
        "100000 100000"
    } else {
        "100000"
    };
    assert_eq!(std::fs::read_to_string(quota_file).unwrap().trim(), want);
    // The sprite's processes are in that cgroup (seen from the host: the sprite has its
    // own cgroup namespace).
    let pid = s.agent_pid(id).expect("the agent's pid");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.lines()
            .any(|l| (l.contains(":cpu:") || l.starts_with("0::")) && l.ends_with(id)),
        "{cg}"
    );
    // And the sprite counts the CPUs it has, as `nproc` and build tools read them.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let o = api.exec("one", &["nproc"]).await;
        assert_eq!(o.stdout.trim(), "1", "{o:?}");
    }
}

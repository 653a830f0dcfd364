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
    // Root inside maps to an unprivileged host range.
    let o = api.sh("one", "cat /proc/self/uid_map").await;
    let fields: Vec<u64> = o
        .stdout
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(fields[0], 0);
    assert!(
        fields[1] >= 1_000_000_000,
        "sprite root is host uid {}",
        fields[1]
    );
    assert_eq!(fields[2], 65536);
    let o2 = api.sh("two", "cat /proc/self/uid_map").await;
    assert_ne!(o.stdout, o2.stdout, "each sprite has its own uid range");

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

#[tokio::test]
async fn cgroup_limits_apply() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let (st, v) = api
        .json(
            reqwest::Method::POST,
            "/v1/sprites",
            Some(serde_json::json!({"name": "small", "config": {"ram_mb": 64}})),
        )
        .await;
    assert_eq!(st, reqwest::StatusCode::CREATED, "{v}");
    assert_eq!(v["config"]["ram_mb"], 64);
    let id = v["id"].as_str().unwrap();
    let instance = sprites_testing::instance_name(&s.data_dir);
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let (mem, pids) = if v2 {
        (
            format!("/sys/fs/cgroup/sprites/{instance}/{id}/memory.max"),
            format!("/sys/fs/cgroup/sprites/{instance}/{id}/pids.max"),
        )
    } else {
        (
            format!("/sys/fs/cgroup/memory/sprites/{instance}/{id}/memory.limit_in_bytes"),
            format!("/sys/fs/cgroup/pids/sprites/{instance}/{id}/pids.max"),
        )
    };
    assert_eq!(
        std::fs::read_to_string(mem).unwrap().trim(),
        (64u64 << 20).to_string()
    );
    assert_eq!(std::fs::read_to_string(pids).unwrap().trim(), "4096");
    // Allocating past the limit gets the process killed, not the host's memory.
    let o = api
        .exec(
            "small",
            &[
                "python3",
                "-c",
                "b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096]); print('survived')",
            ],
        )
        .await;
    assert!(!o.stdout.contains("survived"), "{o:?}");
    assert_ne!(o.code, Some(0));
    // The sprite itself keeps working.
    assert_eq!(
        api.exec("small", &["echo", "alive"]).await.stdout,
        "alive\n"
    );
}

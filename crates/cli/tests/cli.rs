//! The `sprite` CLI against a real spritesd, as a person would use it.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sprites_testing::TestServer;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(s: &TestServer, args: &[&str]) -> String {
    let o = s.run_cli(args).unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "sprite {args:?} failed: {err}");
    out
}

/// One readable line on stderr, no panic, non-zero exit.
fn fails(s: &TestServer, args: &[&str]) -> String {
    let o = s.run_cli(args).unwrap();
    let (_, err) = text(&o);
    assert!(!o.status.success(), "sprite {args:?} should fail");
    assert_eq!(o.status.code(), Some(1), "sprite {args:?}: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn everyday_commands() {
    let s = TestServer::start().unwrap();
    let err = fails(&s, &["list"]);
    assert!(err.contains("not logged in"), "{err}");
    let out = ok(&s, &["auth", "setup", "--token", &s.token]);
    assert!(out.contains("as org personal"), "{out}");
    let cfg = std::fs::read_to_string(s.home.join(".sprites/sprites.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(v["current_selection"]["org"], "personal");
    assert_eq!(
        v["urls"][&s.url]["orgs"]["personal"]["api_token"],
        s.token.as_str()
    );

    ok(&s, &["create", "box", "--skip-console"]);
    assert!(ok(&s, &["list"]).contains("box\trunning"));
    assert_eq!(ok(&s, &["exec", "-s", "box", "--", "hostname"]), "box\n");
    let o = s
        .run_cli(&[
            "exec",
            "-s",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 5",
        ])
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "remote exit code passes through");
    assert_eq!(text(&o), ("out\n".into(), "err\n".into()));
    let o = s
        .run_cli(&[
            "exec",
            "-s",
            "box",
            "--env",
            "A=1,B=two",
            "--dir",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $A $B $(pwd)",
        ])
        .unwrap();
    assert_eq!(text(&o).0, "1 two /tmp\n");
    let o = s
        .run_cli(&[
            "exec",
            "-s",
            "box",
            "--http-post",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
    assert_eq!(o.status.code(), Some(3));

    // stdin is piped through.
    let mut child = s
        .cli()
        .args(["exec", "-s", "box", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&vec![b'x'; 100_000])
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "100000");

    // `use` writes .sprite; commands pick it up.
    ok(&s, &["use", "box"]);
    let local: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.home.join(".sprite")).unwrap()).unwrap();
    assert_eq!(local["sprite"], "box");
    assert_eq!(ok(&s, &["exec", "--", "whoami"]), "sprite\n");
    let out = ok(&s, &["url"]);
    assert!(
        out.contains(&format!(
            "box-{}.sprites.localhost",
            s.token.split('/').nth(1).unwrap()
        )) && out.contains("Auth: sprite"),
        "{out}"
    );
    assert!(ok(&s, &["url", "update", "--auth", "public"]).contains("Auth: public"));
    assert!(ok(&s, &["url", "update", "--auth", "default"]).contains("Auth: sprite"));
    fails(&s, &["url", "update", "--auth", "everyone"]);
    let out = ok(&s, &["api", "/sprites"]);
    assert!(out.contains("\"sprites\""), "{out}");
    let out = ok(&s, &["api", "-s", "box", "/exec"]);
    assert!(out.contains("\"sessions\""), "{out}");

    let err = fails(&s, &["exec", "-s", "nope", "--", "true"]);
    assert!(err.contains("sprite \"nope\" not found"), "{err}");
    fails(&s, &["create", "Bad_Name", "--skip-console"]);
    let err = fails(&s, &["destroy", "box"]);
    assert!(err.contains("--force"), "{err}");
    ok(&s, &["destroy", "box", "--force"]);
    assert!(!ok(&s, &["list"]).contains("box"));

    // A wrong token is one clear line too.
    let o = s
        .cli()
        .env("SPRITE_TOKEN", "personal/x/y/z")
        .env("HOME", s.home.join("empty"))
        .args(["list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("rejected the token"), "{:?}", text(&o));

    // login reads the token from stdin; org list; logout.
    let home2 = s.home.join("h2");
    std::fs::create_dir_all(&home2).unwrap();
    let mut c = s
        .cli()
        .env("HOME", &home2)
        .arg("login")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{}", s.token).unwrap();
    assert!(c.wait_with_output().unwrap().status.success());
    let o = s
        .cli()
        .env("HOME", &home2)
        .args(["org", "list"])
        .output()
        .unwrap();
    assert!(text(&o).0.contains("personal (current)"));
    let o = s
        .cli()
        .env("HOME", &home2)
        .args(["logout"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!home2.join(".sprites").exists());
}

fn tmux(args: &[&str]) -> String {
    let o = std::process::Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_screen(session: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(needle) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sprite console` in a real terminal: type, read the screen, detach, list, reattach.
#[test]
fn console_detach_and_reattach_in_a_terminal() {
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        panic!("tmux is needed for this test (scripts/setup.sh installs it)");
    }
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    ok(&s, &["create", "term", "--skip-console"]);
    let session = format!("sprites-test-{}", std::process::id());
    let sprite = sprites_testing::bin_dir().join("sprite");
    let env = format!(
        "HOME={} SPRITES_API_URL={} TERM=xterm-256color",
        s.home.display(),
        s.url
    );
    let cmdline = format!(
        "env {env} {} console -s term; echo CONSOLE-EXIT=$?; sleep 30",
        sprite.display()
    );
    let guard = terminal(&session, 30, &cmdline);
    wait_screen(&session, "sprite@term");
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "echo typed-$((20+22)); stty size",
        "Enter",
    ]);
    wait_screen(&session, "typed-42");
    // The local terminal's size reaches the PTY.
    wait_screen(&session, "30 120");
    // Ctrl+\ detaches and says how to come back.
    tmux(&["send-keys", "-t", &session, "C-\\"]);
    let screen = wait_screen(&session, "CONSOLE-EXIT=0");
    assert!(screen.contains("sprite attach -s term"), "{screen}");
    let list = ok(&s, &["sessions", "list", "-s", "term"]);
    assert!(
        list.contains("yes"),
        "the TTY session is still there: {list}"
    );
    // Reattach in a new terminal: the scrollback comes back.
    let session2 = format!("{session}-b");
    let cmdline = format!(
        "env {env} {} attach -s term; echo ATTACH-EXIT=$?; sleep 30",
        sprite.display()
    );
    let _guard2 = terminal(&session2, 30, &cmdline);
    wait_screen(&session2, "typed-42");
    tmux(&["send-keys", "-t", &session2, "exit 3", "Enter"]);
    wait_screen(&session2, "ATTACH-EXIT=3");
    drop(guard);
}

/// A detached tmux session `name`, 120 columns by `rows`, running `cmdline`; killed on drop.
fn terminal(name: &str, rows: u16, cmdline: &str) -> TmuxGuard {
    tmux(&[
        "new-session",
        "-d",
        "-s",
        name,
        "-x",
        "120",
        "-y",
        &rows.to_string(),
        cmdline,
    ]);
    TmuxGuard(name.to_string())
}

struct TmuxGuard(String);
impl Drop for TmuxGuard {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.0]);
    }
}

#[test]
fn checkpoint_commands() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    ok(&s, &["create", "ck", "--skip-console"]);
    ok(&s, &["exec", "-s", "ck", "--", "sh", "-c", "echo v0 > ~/f"]);
    let out = ok(
        &s,
        &[
            "checkpoint",
            "create",
            "-s",
            "ck",
            "--comment",
            "before change",
        ],
    );
    assert_eq!(out, "Checkpoint created: v0\n");
    ok(&s, &["exec", "-s", "ck", "--", "sh", "-c", "echo v1 > ~/f"]);
    assert_eq!(
        ok(&s, &["checkpoint", "create", "-s", "ck"]),
        "Checkpoint created: v1\n"
    );
    let list = ok(&s, &["checkpoints", "ls", "-s", "ck"]);
    let ids: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["Current", "v1", "v0"], "{list}");
    assert!(list.contains("before change"), "{list}");
    let info = ok(&s, &["checkpoint", "info", "-s", "ck", "v1"]);
    assert!(
        info.contains("ID:       v1") && info.contains("Source:   v0"),
        "{info}"
    );

    let out = ok(&s, &["restore", "-s", "ck", "v0"]);
    assert_eq!(out, "Restore from v0 complete\n");
    assert_eq!(
        ok(&s, &["exec", "-s", "ck", "--", "cat", "/home/sprite/f"]),
        "v0\n"
    );
    ok(&s, &["checkpoint", "restore", "-s", "ck", "v1"]);
    assert_eq!(
        ok(&s, &["exec", "-s", "ck", "--", "cat", "/home/sprite/f"]),
        "v1\n"
    );

    let err = fails(&s, &["checkpoint", "delete", "-s", "ck", "v1"]);
    assert!(err.contains("active checkpoint"), "{err}");
    assert_eq!(
        ok(&s, &["checkpoint", "rm", "-s", "ck", "v0"]),
        "Deleted checkpoint v0\n"
    );
    let err = fails(&s, &["checkpoint", "info", "-s", "ck", "v0"]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(&s, &["restore", "-s", "ck", "v42"]);
    assert!(err.contains("not found"), "{err}");
}

/// (relative path, kind, mode, contents or link target) of everything under `root`, sorted.
fn tree(root: &std::path::Path) -> Vec<(String, char, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.push((rel, 'l', 0, target.into_os_string().into_encoded_bytes()));
            } else if m.is_dir() {
                out.push((rel, 'd', mode, Vec::new()));
                stack.push(p);
            } else {
                out.push((rel, 'f', mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cp_and_exec_file() {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    ok(&s, &["create", "cpbox", "--skip-console"]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::create_dir_all(src.join("deep/er")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha").unwrap();
    std::fs::write(src.join("bin/run.sh"), "#!/bin/sh\necho ran \"$1\"\n").unwrap();
    std::fs::set_permissions(
        src.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(src.join("deep/er/blob"), &blob).unwrap();
    std::fs::set_permissions(
        src.join("deep/er/blob"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("../a.txt", src.join("bin/link")).unwrap();
    let src_s = src.to_str().unwrap();

    // A tree up, checked in the sprite, and back down byte for byte.
    ok(&s, &["cp", "-s", "cpbox", src_s, ":/home/sprite/src"]);
    let o = ok(
        &s,
        &[
            "exec", "-s", "cpbox", "--", "sh", "-c",
            "cat src/a.txt; stat -c ' %a %U' src/bin/run.sh; readlink src/bin/link; src/bin/run.sh x",
        ],
    );
    assert_eq!(o, "alpha 755 sprite\n../a.txt\nran x\n");
    let back = local.path().join("back");
    ok(
        &s,
        &[
            "cp",
            "-s",
            "cpbox",
            ":/home/sprite/src",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(tree(&back), tree(&src), "the tree came back identical");
    // Into an existing directory, under the source's name (local and remote alike).
    ok(&s, &["cp", "-s", "cpbox", src_s, ":/tmp"]);
    ok(
        &s,
        &["cp", "-s", "cpbox", ":/tmp/src", back.to_str().unwrap()],
    );
    assert_eq!(tree(&back.join("src")), tree(&src));

    // Single files both ways, with relative remote paths from the sprite user's home.
    ok(
        &s,
        &[
            "cp",
            "-s",
            "cpbox",
            src.join("deep/er/blob").to_str().unwrap(),
            ":b.bin",
        ],
    );
    let o = ok(
        &s,
        &[
            "exec",
            "-s",
            "cpbox",
            "--",
            "stat",
            "-c",
            "%s %a",
            "/home/sprite/b.bin",
        ],
    );
    assert_eq!(o, "300000 600\n");
    let h = local.path().join("h");
    ok(
        &s,
        &["cp", "-s", "cpbox", ":/etc/hostname", h.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(&h).unwrap(),
        ok(&s, &["exec", "-s", "cpbox", "--", "cat", "/etc/hostname"])
    );
    ok(
        &s,
        &[
            "cp",
            "-s",
            "cpbox",
            ":b.bin",
            local.path().to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(local.path().join("b.bin")).unwrap(), blob);

    let err = fails(&s, &["cp", "-s", "cpbox", src_s, "/tmp/x"]);
    assert!(err.contains("neither path"), "{err}");
    let err = fails(&s, &["cp", "-s", "cpbox", ":/nope", "/tmp/x"]);
    assert!(err.contains("/nope: no such file"), "{err}");
    let err = fails(&s, &["cp", "-s", "cpbox", src_s, ":/etc/src"]);
    assert!(err.contains("Permission denied"), "{err}");

    // exec --file uploads first; relative targets land in --dir.
    let o = ok(
        &s,
        &[
            "exec",
            "-s",
            "cpbox",
            "--dir",
            "/tmp",
            "--file",
            &format!("{}:/tmp/up/run.sh", src.join("bin/run.sh").display()),
            "--file",
            &format!("{}:notes.txt", src.join("a.txt").display()),
            "--",
            "sh",
            "-c",
            "/tmp/up/run.sh y && cat notes.txt",
        ],
    );
    assert_eq!(o, "ran y\nalpha");
    let err = fails(
        &s,
        &["exec", "-s", "cpbox", "--file", "nocolon", "--", "true"],
    );
    assert!(err.contains("LOCAL:REMOTE"), "{err}");
    let err = fails(
        &s,
        &[
            "exec",
            "-s",
            "cpbox",
            "--file",
            "/no/such:/tmp/x",
            "--",
            "true",
        ],
    );
    assert!(err.contains("cannot read /no/such"), "{err}");
}

/// `sprite completion bash` is a script bash really completes with: subcommands, their
/// flags; the other shells get theirs.
#[test]
fn shell_completion_scripts() {
    let sprite = sprites_testing::bin_dir().join("sprite");
    let script = |shell: &str| {
        let o = std::process::Command::new(&sprite)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}: {o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("sprite.bash");
    std::fs::write(&bash, script("bash")).unwrap();
    let complete = |words: &str| {
        let cword = words.split(' ').count() - 1;
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _sprite sprite; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                bash.display()
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let words = complete("sprite chec");
    assert!(words.lines().any(|w| w == "checkpoint"), "{words}");
    let words = complete("sprite checkpoint list --");
    assert!(words.lines().any(|w| w == "--include-auto"), "{words}");
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        assert!(script(shell).contains("checkpoint"), "{shell}");
    }
    let o = std::process::Command::new(&sprite)
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// `sprite list -w`: the sprites now, then each change as it happens, line by line in a pipe.
#[test]
fn list_watch_prints_changes_as_they_happen() {
    use std::io::BufRead;
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    ok(&s, &["create", "w-one", "--skip-console"]);
    ok(&s, &["create", "elsewhere", "--skip-console"]);
    let mut child = s
        .cli()
        .args(["list", "-w", "--prefix", "w-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A watch never ends by itself: if a line never comes, the test fails instead of hanging.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
    });
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "w-one\trunning");
    ok(&s, &["create", "w-two", "--skip-console"]);
    let next = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(next, "w-two\trunning");
}

#[test]
fn connectors_and_labels() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    ok(&s, &["create", "ai-1", "--skip-console"]);
    let key = "sk-cli-test-7f3a9b2c1d0e";
    // The key comes on stdin (or from a file), never as an argument.
    let mut child = s
        .cli()
        .args([
            "connectors",
            "create",
            "--provider",
            "anthropic",
            "--label",
            "ai",
            "--block",
            "/admin*",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("Created connector conn_") && out.contains("labels ai"),
        "{out}"
    );
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("conn_"))
        .unwrap()
        .to_string();
    let out = ok(&s, &["connectors", "list"]);
    assert!(
        out.contains(&id) && out.contains("anthropic") && out.contains("labels ai"),
        "{out}"
    );
    let out = ok(&s, &["connectors", "get", &id]);
    assert!(
        out.contains("blocked:   /admin*") && out.contains("$SPRITES_GATEWAY_URL"),
        "{out}"
    );
    assert!(!out.contains(key) && !ok(&s, &["connectors", "get", &id, "--json"]).contains(key));
    // Who may use it follows the sprite's labels.
    assert!(ok(&s, &["connectors", "sprites", &id]).contains("No sprite"));
    assert_eq!(
        ok(&s, &["labels", "-s", "ai-1", "add", "ai", "gpu"]),
        "ai\ngpu\n"
    );
    assert_eq!(ok(&s, &["connectors", "sprites", &id]), "ai-1\tai,gpu\n");
    assert_eq!(ok(&s, &["labels", "-s", "ai-1", "remove", "gpu"]), "ai\n");
    assert_eq!(ok(&s, &["labels", "-s", "ai-1"]), "ai\n");
    // Changing only the flags given keeps the rest; --replace replaces all.
    let out = ok(&s, &["connectors", "update", &id, "--prefix", "ai-"]);
    assert!(
        out.contains("names starting \"ai-\" and labels ai"),
        "{out}"
    );
    let out = ok(
        &s,
        &["connectors", "update", &id, "--replace", "--allow-all"],
    );
    assert!(out.contains("every sprite"), "{out}");
    // With a terminal-less empty stdin and no file: a clear error, nothing stored.
    let err = fails(&s, &["connectors", "create", "--provider", "openai"]);
    assert!(err.contains("empty"), "{err}");
    let err = fails(
        &s,
        &[
            "connectors",
            "create",
            "--provider",
            "nope",
            "--api-key-file",
            "/etc/hostname",
        ],
    );
    assert!(err.contains("unknown provider"), "{err}");
    let err = fails(&s, &["connectors", "get", "conn_missing"]);
    assert!(err.contains("not found"), "{err}");
    assert!(ok(&s, &["connectors", "delete", &id]).contains("Deleted"));
    assert!(ok(&s, &["connectors", "list"]).contains("No connectors yet"));
}

#[test]
fn mcp_endpoint_tokens_and_grants() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    let out = ok(&s, &["mcp"]);
    assert!(
        out.contains(&format!("{}/mcp", s.url)) && out.contains("claude mcp add"),
        "{out}"
    );
    // The token is the only line on stdout, so it can be captured.
    let o = s
        .run_cli(&["mcp", "token", "--prefix", "bot-", "--max", "2"])
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let token = out.trim().to_string();
    assert!(
        token.starts_with("mcp_at_") && out.lines().count() == 1,
        "{out}"
    );
    assert!(err.contains("bot-* sprites, at most 2"), "{err}");
    // It works on /mcp.
    let r = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", &format!("authorization: Bearer {token}"), "-H", "content-type: application/json", "-H", "accept: application/json, text/event-stream", "-d", r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#, &format!("{}/mcp", s.url)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "200");
    let list = ok(&s, &["mcp", "grants"]);
    let id = list
        .split_whitespace()
        .find(|w| w.starts_with("mcpg_"))
        .expect("a grant")
        .to_string();
    assert!(
        list.contains("bot-* sprites, at most 2") && !list.contains("never"),
        "{list}"
    );
    assert!(ok(&s, &["mcp", "grants", "revoke", &id]).contains("Revoked"));
    assert!(ok(&s, &["mcp", "grants"]).contains("No MCP grants"));
    let err = fails(&s, &["mcp", "grants", "revoke", &id]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(&s, &["mcp", "token", "--prefix", "Bad Prefix"]);
    assert!(err.contains("prefix"), "{err}");
}

#[test]
fn forks_templates_and_sleep_from_the_cli() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    ok(&s, &["create", "src", "--skip-console"]);
    ok(
        &s,
        &["exec", "-s", "src", "--", "bash", "-c", "echo base > ~/f"],
    );
    let out = ok(&s, &["checkpoint", "create", "-s", "src"]);
    let v = out
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() > 1 && w.starts_with('v') && w[1..].bytes().all(|b| b.is_ascii_digit()))
        .expect("a checkpoint id")
        .to_string();
    ok(
        &s,
        &["exec", "-s", "src", "--", "bash", "-c", "echo later > ~/f"],
    );
    ok(
        &s,
        &[
            "create",
            "old",
            "--from",
            &format!("src:{v}"),
            "--skip-console",
        ],
    );
    assert_eq!(
        ok(&s, &["exec", "-s", "old", "--", "cat", "/home/sprite/f"]),
        "base\n"
    );
    ok(&s, &["create", "now", "--from", "src", "--skip-console"]);
    assert_eq!(
        ok(&s, &["exec", "-s", "now", "--", "cat", "/home/sprite/f"]),
        "later\n"
    );
    assert!(ok(
        &s,
        &["templates", "create", "gold", "--from", &format!("src:{v}")]
    )
    .contains("Template gold"));
    assert!(ok(&s, &["templates", "list"]).starts_with("gold\tfrom src:"));
    ok(
        &s,
        &["create", "stamped", "--template", "gold", "--skip-console"],
    );
    assert_eq!(
        ok(
            &s,
            &["exec", "-s", "stamped", "--", "cat", "/home/sprite/f"]
        ),
        "base\n"
    );
    assert!(ok(&s, &["sleep", "-s", "stamped", "--cold"]).contains("stamped is cold"));
    let out = ok(
        &s,
        &[
            "update",
            "-s",
            "stamped",
            "--warm-after",
            "30s",
            "--cold-after",
            "1h",
        ],
    );
    assert_eq!(out, "stamped: warm after 30s, cold after 1h\n");
    assert!(
        ok(&s, &["update", "-s", "stamped", "--default-idle"]).contains("the server's idle times")
    );
    let err = fails(&s, &["update", "-s", "stamped", "--warm-after", "never"]);
    assert!(err.contains("warm_after"), "{err}");
    let err = fails(&s, &["create", "x", "--from", "missing", "--skip-console"]);
    assert!(err.contains("not found"), "{err}");
    assert!(ok(&s, &["templates", "delete", "gold"]).contains("Deleted"));
    let err = fails(&s, &["templates", "delete", "gold"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn org_tokens_from_the_cli() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    let o = s
        .run_cli(&["org", "tokens", "create", "--description", "deploy"])
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let token = out.trim().to_string();
    assert_eq!(token.split('/').count(), 4, "{out}");
    let id = token.split('/').nth(2).unwrap().to_string();
    let list = ok(&s, &["org", "tokens", "list"]);
    assert!(list.contains(&id) && list.contains("deploy"), "{list}");
    assert!(ok(&s, &["org", "tokens", "revoke", &id]).contains("Revoked"));
    let err = fails(&s, &["org", "tokens", "revoke", &id]);
    assert!(err.contains("not found"), "{err}");
}

/// `sprite upgrade` and `install.sh` get the server's own CLI build, checked by SHA-256.
#[test]
fn upgrade_and_install_script_use_the_servers_build() {
    let s = TestServer::start().unwrap();
    let original = std::fs::read(sprites_testing::bin_dir().join("sprite")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // An older-looking copy: the same program with bytes after its end (it still runs).
    let copy = tmp.path().join("bin/sprite");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let mut changed = original.clone();
    changed.extend_from_slice(b"not the server's build");
    std::fs::write(&copy, &changed).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let copy_cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(&copy);
        c.env("HOME", &s.home)
            .env("SPRITES_API_URL", &s.url)
            .args(args)
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let o = copy_cmd(&["upgrade", "--check"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("up to date"), "{}", text(&o).0);
    let o = copy_cmd(&["upgrade"]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        changed,
        "same version: nothing replaced"
    );
    let o = copy_cmd(&["upgrade", "--force"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        original,
        "replaced by the server's build"
    );
    assert!(copy_cmd(&["--version"]).status.success());
    let leftovers: Vec<_> = std::fs::read_dir(copy.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["sprite"], "no temporary file left");
    for (args, want) in [
        (&["upgrade", "--channel", "rc"][..], "release channel only"),
        (&["upgrade", "--version", "9.9.9"][..], "offers CLI version"),
    ] {
        let o = copy_cmd(args);
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(want) && err.trim_end().lines().count() == 1,
            "{err}"
        );
    }

    // curl <server>/install.sh | sh, as the docs' install line.
    let dir = tmp.path().join("inst");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("curl -fsSL {}/install.sh | sh", s.url))
        .env("HOME", tmp.path())
        .env("SPRITE_INSTALL_DIR", &dir)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "install.sh: {out}{err}");
    assert_eq!(std::fs::read(dir.join("sprite")).unwrap(), original);
    assert!(out.contains("add it to your PATH"), "{out}");
    assert!(out.contains(&format!("sprite login {}", s.url)), "{out}");
}

/// A large binary output (and stderr beside it) reaches the pipe whole and in order.
#[test]
fn exec_streams_large_output_whole() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    ok(&s, &["create", "big", "--skip-console"]);
    ok(
        &s,
        &[
            "exec",
            "-s",
            "big",
            "--",
            "sh",
            "-c",
            "head -c 48M /dev/urandom > /tmp/r",
        ],
    );
    let want = ok(&s, &["exec", "-s", "big", "--", "sha256sum", "/tmp/r"]);
    let o = s
        .run_cli(&[
            "exec",
            "-s",
            "big",
            "--",
            "sh",
            "-c",
            "cat /tmp/r; echo done >&2",
        ])
        .unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout.len(), 48 << 20);
    use sha2::Digest;
    let got: String = sha2::Sha256::digest(&o.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(want.split_whitespace().next(), Some(got.as_str()));
    assert_eq!(text(&o).1, "done\n");
}

/// The exit code table of the CLI reference, one row at a time.
#[test]
fn exit_codes_follow_the_reference_table() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    ok(&s, &["create", "codes", "--skip-console"]);
    let code = |args: &[&str]| s.run_cli(args).unwrap().status.code();
    // 0: success.
    assert_eq!(code(&["exec", "-s", "codes", "--", "true"]), Some(0));
    // 1: general error (here a sprite that does not exist), with one readable line.
    let err = fails(&s, &["exec", "-s", "nosuch", "--", "true"]);
    assert!(err.contains("nosuch"), "{err}");
    // 2: command not found (of the CLI itself).
    let o = s.run_cli(&["no-such-command"]).unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    // 126: the command cannot execute (not executable).
    ok(
        &s,
        &[
            "exec",
            "-s",
            "codes",
            "--",
            "sh",
            "-c",
            "echo data > /tmp/plain",
        ],
    );
    assert_eq!(
        code(&["exec", "-s", "codes", "--", "/tmp/plain"]),
        Some(126)
    );
    // 127: the command is not found in the sprite.
    assert_eq!(
        code(&["exec", "-s", "codes", "--", "no-such-program"]),
        Some(127)
    );
    // 128+: terminated by a signal (TERM = 15).
    assert_eq!(
        code(&["exec", "-s", "codes", "--", "sh", "-c", "kill -TERM $$"]),
        Some(128 + 15)
    );
    // And a command's own code passes through.
    assert_eq!(
        code(&["exec", "-s", "codes", "--", "sh", "-c", "exit 42"]),
        Some(42)
    );
}

/// Prompts on a terminal (`sprite create` and `sprite use` with no name), a clear error in a
/// pipe; `use --unset`; `exec -detachable` as the docs write it; progress only on a terminal.
#[test]
fn prompts_detachable_sessions_and_progress() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    // In a pipe: no prompt, one readable line.
    let err = fails(&s, &["create"]);
    assert!(err.contains("sprite create NAME"), "{err}");
    let err = fails(&s, &["use"]);
    assert!(err.contains("sprite use NAME"), "{err}");

    let session = format!("sprites-prompt-{}", std::process::id());
    let work = s.home.join("proj");
    std::fs::create_dir_all(&work).unwrap();
    let sprite = sprites_testing::bin_dir().join("sprite");
    let cmdline = format!(
        "cd {} && export HOME={} SPRITES_API_URL={} TERM=xterm && {sp} create --skip-console; \
         {sp} create --skip-console other; {sp} use; echo USE-EXIT=$?; \
         {sp} checkpoint create -s prompted; echo CK-EXIT=$?; sleep 30",
        work.display(),
        s.home.display(),
        s.url,
        sp = sprite.display()
    );
    let _guard = terminal(&session, 40, &cmdline);
    wait_screen(&session, "Name of the new sprite:");
    tmux(&["send-keys", "-t", &session, "prompted", "Enter"]);
    wait_screen(&session, "Created sprite prompted");
    let screen = wait_screen(&session, "Use which sprite? [1-2]");
    assert!(
        screen.contains("other") && screen.contains("prompted"),
        "{screen}"
    );
    // The list is sorted by name: 1) other 2) prompted.
    tmux(&["send-keys", "-t", &session, "2", "Enter"]);
    wait_screen(&session, "USE-EXIT=0");
    let local = std::fs::read_to_string(work.join(".sprite")).unwrap();
    assert!(local.contains("\"prompted\""), "{local}");
    wait_screen(&session, "CK-EXIT=0");

    // In a pipe a checkpoint prints its result only, no progress.
    let o = s
        .run_cli(&["checkpoint", "create", "-s", "prompted"])
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("Checkpoint created: v"), "{out}");
    assert_eq!(err, "", "nothing on stderr in a pipe");

    // `use --unset` forgets the directory's sprite.
    let o = s
        .cli()
        .current_dir(&work)
        .args(["use", "--unset"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!work.join(".sprite").exists());

    // `-detachable "cmd string"`, Go-style as the docs write it: returns at once, the
    // session keeps running and serving.
    let out = ok(
        &s,
        &[
            "exec",
            "-s",
            "prompted",
            "-detachable",
            "python3 -m http.server 8089 --bind 127.0.0.1",
        ],
    );
    assert!(out.starts_with("Started session "), "{out}");
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    let probe = "for i in $(seq 100); do python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:8089/\")' 2>/dev/null && echo up && break; sleep 0.1; done";
    assert_eq!(
        ok(&s, &["exec", "-s", "prompted", "--", "sh", "-c", probe]),
        "up\n"
    );
    let list = ok(&s, &["sessions", "list", "-s", "prompted"]);
    assert!(list.contains(&id) && list.contains("http.server"), "{list}");
    ok(&s, &["sessions", "kill", "-s", "prompted", &id]);
}

/// `sprite org auth -o ALIAS:ORG URL` saves an alias of the URL; `-o ALIAS:ORG` then reaches
/// it whatever the environment says; `SPRITE_URL` wins over `SPRITES_API_URL`.
#[test]
fn url_aliases_and_sprite_url() {
    let s = TestServer::start().unwrap();
    let auth = |args: &[&str], token: &str| {
        let mut c = s
            .cli()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{token}\n").as_bytes())
            .unwrap();
        c.wait_with_output().unwrap()
    };
    let o = auth(&["org", "auth", "-o", "home:other", &s.url], &s.token);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("not \"other\""), "{}", text(&o).1);
    let o = auth(&["org", "auth", "-o", "home:personal", &s.url], &s.token);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("-o home:personal"), "{}", text(&o).0);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.home.join(".sprites/sprites.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["url_aliases"]["home"], s.url.as_str());

    ok(&s, &["create", "aliased", "--skip-console"]);
    // Elsewhere the environment points at nothing; the alias still reaches the server.
    let list = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut c = s.cli();
        c.env("SPRITES_API_URL", "http://127.0.0.1:9");
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.args(args).stdin(Stdio::null()).output().unwrap()
    };
    let o = list(&[], &["list", "-o", "home:personal"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("aliased"));
    let o = list(&[], &["list", "-o", "nope:personal"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("saved alias"), "{}", text(&o).1);
    let o = list(&[("SPRITE_URL", &s.url)], &["list"]);
    assert!(o.status.success(), "SPRITE_URL first: {}", text(&o).1);
    assert!(text(&o).0.contains("aliased"));
    // And `org auth ALIAS` logs in to the aliased URL again.
    let o = auth(&["org", "auth", "home"], &s.token);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains(&s.url), "{}", text(&o).0);
}

/// `sprite org keyring enable|disable` with a real Secret Service (gnome-keyring on a private
/// session bus): tokens leave the config file, commands still work, later logins go to the
/// keyring, and disable brings them back. Without a keyring: one clear line, nothing moved.
#[test]
fn tokens_in_the_system_keyring() {
    let s = TestServer::start().unwrap();
    ok(&s, &["auth", "setup", "--token", &s.token]);
    let cfg_path = s.home.join(".sprites/sprites.json");
    let o = s
        .cli()
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .args(["org", "keyring", "enable"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no system keyring") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(std::fs::read_to_string(&cfg_path)
        .unwrap()
        .contains(&s.token));

    let other = s.create_token("keyorg").unwrap();
    let sp = sprites_testing::bin_dir().join("sprite");
    let script = format!(
        "printf 'test-password' | gnome-keyring-daemon --unlock --components=secrets >/dev/null
         gnome-keyring-daemon --start --components=secrets >/dev/null
         # The daemon unlocks its new collection a moment after it answers (\"Cannot create an
         # item in a locked collection\" until then); a failed enable moves nothing.
         ok=; for i in $(seq 100); do
           if {sp} org keyring enable 2>/dev/null; then ok=1; break; fi; sleep 0.1
         done
         [ -n \"$ok\" ] || {{ {sp} org keyring enable; exit 10; }}
         grep -c api_token ~/.sprites/sprites.json; grep -c keyring_key ~/.sprites/sprites.json
         {sp} list >/dev/null && echo LISTED
         {sp} auth setup --token '{other}' >/dev/null || exit 11
         grep -c api_token ~/.sprites/sprites.json
         {sp} list -o personal >/dev/null && echo LISTED-AGAIN
         {sp} org keyring disable || exit 12
         grep -c api_token ~/.sprites/sprites.json
         exit 0",
        sp = sp.display()
    );
    let o = std::process::Command::new("dbus-run-session")
        .args(["--", "sh", "-c", &script])
        .env("HOME", &s.home)
        .env("SPRITES_API_URL", &s.url)
        .env_remove("SPRITE_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("1 token(s) moved into the system keyring"),
        "{out}"
    );
    assert_eq!(&lines[1..3], ["0", "1"], "no token left in the file: {out}");
    assert_eq!(lines[3], "LISTED", "{out}");
    assert_eq!(
        lines[4], "0",
        "a login after enable goes to the keyring: {out}"
    );
    assert_eq!(lines[5], "LISTED-AGAIN", "{out}");
    assert!(lines[6].starts_with("2 token(s) moved back"), "{out}");
    assert_eq!(lines[7], "2", "{out}");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(cfg.contains(&s.token) && cfg.contains(&other), "{cfg}");
}

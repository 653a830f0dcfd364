//! A sprite is the machine the docs promise: the quickstart and "Your Environment" commands
//! through the CLI on the full image, and base image versions (a sprite keeps its base until
//! it is upgraded).

use std::process::Output;

use sprites_testing::{image_variant, TestServer};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `script` in sprite `name` through `sprite exec`, asserting success; stdout and stderr.
fn sh(s: &TestServer, name: &str, script: &str) -> String {
    let o = s
        .run_cli(&["exec", "-s", name, "--", "bash", "-c", script])
        .unwrap();
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "{script}: exit {:?}\n{out}\n{err}",
        o.status
    );
    out + &err
}

fn server_on(dir: &std::path::Path) -> TestServer {
    let s = TestServer::start_with(&["--image-dir", dir.to_str().unwrap()]).unwrap();
    let o = s.run_cli(&["auth", "setup", "--token", &s.token]).unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    s
}

fn create(s: &TestServer, name: &str) {
    let o = s.run_cli(&["create", name, "--skip-console"]).unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn the_docs_environment_works_in_a_full_sprite() {
    let dir = image_variant("full", "full", &[]).expect("the full image");
    let s = server_on(&dir);
    create(&s, "env");

    // The quickstart's first command.
    let out = sh(
        &s,
        "env",
        "node --version && python3 --version && go version",
    );
    assert!(
        out.contains("v22.") && out.contains("Python 3.") && out.contains("go1."),
        "{out}"
    );

    // Every language and tool of "Your Environment" answers its version command.
    for (cmd, want) in [
        ("python --version", "Python 3"),
        ("pip --version", "pip "),
        ("npm --version", "10."),
        ("ruby --version", "ruby 3"),
        ("gem --version", "3."),
        ("rustc --version", "rustc 1."),
        ("cargo --version", "cargo 1."),
        ("elixir --version", "Elixir 1."),
        (
            "erl -noshell -eval 'io:format(\"~s~n\", [erlang:system_info(otp_release)]), halt().'",
            "2",
        ),
        ("java -version 2>&1", "openjdk"),
        ("javac -version 2>&1", "javac "),
        ("bun --version", "1."),
        ("deno --version", "deno 2"),
        ("claude --version", "Claude Code"),
        ("gemini --version", "0."),
        ("codex --version", "codex"),
        ("git --version", "git version"),
        ("curl --version", "curl "),
        ("wget --version", "GNU Wget"),
        ("vim --version", "VIM"),
        ("nano --version", "nano"),
        ("jq --version", "jq-"),
        ("rg --version", "ripgrep"),
        ("sqlite3 --version", "3."),
        ("psql --version", "psql (PostgreSQL)"),
        ("tmux -V", "tmux"),
        ("gcc --version", "gcc"),
        ("make --version", "GNU Make"),
    ] {
        let out = sh(&s, "env", cmd);
        assert!(out.contains(want), "{cmd}: {out}");
    }
    // sshd is installed but not running, and holds no host keys baked into the image.
    let out = sh(
        &s,
        "env",
        "test -x /usr/sbin/sshd && ! pgrep -x sshd && ls /etc/ssh/ | grep -c host_ || true",
    );
    assert_eq!(out.trim(), "0", "{out}");

    // pip installs from PyPI without the PEP 668 error, and later commands import it.
    let out = sh(&s, "env", "pip install -q requests 2>&1; echo pip-exit=$?");
    assert!(out.contains("pip-exit=0"), "{out}");
    assert!(!out.contains("externally-managed"), "{out}");
    let out = sh(
        &s,
        "env",
        "python -c 'import requests; print(requests.__name__)'",
    );
    assert_eq!(out.trim(), "requests");

    // npm -g without sudo, then the installed command runs.
    let out = sh(&s, "env", "npm install -g --silent cowsay && cowsay moo");
    assert!(out.contains("moo"), "{out}");

    // cargo install from crates.io, then the binary is on $PATH.
    let out = sh(&s, "env", "cargo install -q helloworld@0.1.0 && helloworld");
    assert!(out.contains("Hello, world!"), "{out}");

    // go build of a program (the Go module proxy may be out of reach, so no downloads).
    let out = sh(
        &s,
        "env",
        "mkdir -p ~/hi && cd ~/hi && printf 'package main\\nimport \"fmt\"\\nfunc main() { fmt.Println(\"hi from go\") }\\n' > main.go && go mod init hi >/dev/null 2>&1; go build -o hi . && ./hi",
    );
    assert!(out.contains("hi from go"), "{out}");

    // gem install from rubygems.org where the host reaches it.
    let o = s
        .run_cli(&[
            "exec",
            "-s",
            "env",
            "--",
            "curl",
            "-sfm",
            "5",
            "-o",
            "/dev/null",
            "https://rubygems.org/",
        ])
        .unwrap();
    if o.status.success() {
        let out = sh(
            &s,
            "env",
            "gem install rake && ~/.local/share/gem/ruby/*/bin/rake --version",
        );
        assert!(out.contains("rake"), "{out}");
    } else {
        eprintln!("skipping gem install: rubygems.org is not reachable from this host");
    }

    // What a developer expects of the shell.
    let out = sh(
        &s,
        "env",
        "echo $HOME $USER $SHELL; locale | grep LANG=; date +%Z; echo $PATH",
    );
    assert!(out.contains("/home/sprite sprite /bin/bash"), "{out}");
    assert!(out.contains("UTF-8") && out.contains("UTC"), "{out}");
    for p in ["/.local/bin", "/.cargo/bin", "/go/bin"] {
        assert!(out.contains(p), "{p} not in PATH: {out}");
    }
    let out = sh(
        &s,
        "env",
        "grep -E '^(ID|VERSION_CODENAME|VARIANT_ID)=' /etc/os-release",
    );
    assert!(
        out.contains("ID=debian") && out.contains("VARIANT_ID=sprite-full"),
        "{out}"
    );
}

#[test]
fn a_sprite_keeps_its_base_until_it_is_upgraded() {
    let dir = image_variant("versions", "slim", &[]).expect("the slim image");
    let s = server_on(&dir);
    create(&s, "old");
    let base = |name: &str| {
        let o = s.run_cli(&["image", "-s", name]).unwrap();
        assert!(o.status.success(), "{:?}", text(&o));
        text(&o).0.trim().to_string()
    };
    let first = base("old");
    let out = sh(
        &s,
        "old",
        "echo kept > ~/mine; grep IMAGE_VERSION /etc/os-release",
    );
    assert_eq!(out.trim(), format!("IMAGE_VERSION={first}"));
    let o = s.run_cli(&["checkpoint", "create", "-s", "old"]).unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let (out, err) = text(&o);
    let ckpt = (out + &err)
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() > 1 && w.starts_with('v') && w[1..].bytes().all(|b| b.is_ascii_digit()))
        .expect("the checkpoint's id")
        .to_string();

    // A new base (one more layer) is built while the sprite runs: the sprite keeps its own.
    image_variant("versions", "slim", &["cowsay"]).expect("the new base");
    assert_eq!(base("old"), first);
    let out = sh(
        &s,
        "old",
        "cat ~/mine; test -e /usr/games/cowsay && echo has-cowsay || echo no-cowsay",
    );
    assert_eq!(out, "kept\nno-cowsay\n");
    // A restart boots it on its own base too.
    let o = s
        .run_cli(&["api", "/sprites/old/restart", "-X", "POST"])
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(
        sh(&s, "old", "test -e /usr/games/cowsay || echo no-cowsay"),
        "no-cowsay\n"
    );

    // New sprites get the new base.
    create(&s, "new");
    let second = base("new");
    assert_ne!(second, first);
    assert!(sh(&s, "new", "/usr/games/cowsay moo").contains("moo"));

    // Upgrade moves the old sprite, keeping what it wrote.
    let o = s.run_cli(&["image", "upgrade", "-s", "old"]).unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(&format!("moved from base {first} to {second}")),
        "{out}"
    );
    assert_eq!(base("old"), second);
    let out = sh(
        &s,
        "old",
        "cat ~/mine; /usr/games/cowsay hi | grep -c hi; grep IMAGE_VERSION /etc/os-release",
    );
    assert_eq!(out, format!("kept\n1\nIMAGE_VERSION={second}\n"));
    let o = s.run_cli(&["image", "upgrade", "-s", "old"]).unwrap();
    assert!(
        text(&o).0.contains("already on the newest base"),
        "{:?}",
        text(&o)
    );

    // Restoring the checkpoint made on the first base brings the sprite back onto it.
    let o = s.run_cli(&["restore", "-s", "old", &ckpt]).unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(base("old"), first);
    assert_eq!(
        sh(
            &s,
            "old",
            "cat ~/mine; test -e /usr/games/cowsay || echo no-cowsay"
        ),
        "kept\nno-cowsay\n"
    );

    // Both bases are in use (old's disk and checkpoint, new): neither is removed at a restart.
    let mut s = s;
    s.restart().unwrap();
    for id in [&first, &second] {
        assert!(
            dir.join("bases").join(id).join("rootfs/bin/sh").exists(),
            "{id} removed"
        );
    }
    assert_eq!(sh(&s, "old", "cat ~/mine"), "kept\n");
}

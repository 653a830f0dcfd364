//! `spritesd install-service`: the unit it writes is valid for systemd (checked by
//! `systemd-analyze verify`), keeps sprites alive across a stop, and bad serve arguments are
//! refused before anything is written.

use std::process::Command;

fn spritesd() -> Command {
    Command::new(sprites_testing::bin_dir().join("spritesd"))
}

#[test]
fn the_unit_is_valid_and_bad_arguments_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = spritesd()
        .args([
            "install-service",
            "--no-start",
            "--name",
            "sprites-test",
            "--unit-dir",
        ])
        .arg(dir.path())
        .args([
            "--",
            "--listen",
            "0.0.0.0:7780",
            "--data-dir",
            "/srv/my sprites",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = dir.path().join("sprites-test.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let bin = sprites_testing::bin_dir()
        .join("spritesd")
        .canonicalize()
        .unwrap();
    assert!(
        text.contains(&format!(
            "ExecStart={} serve --listen 0.0.0.0:7780 --data-dir \"/srv/my sprites\"\n",
            bin.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("\nKillMode=process\n"),
        "sprites must outlive a stop"
    );
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let v = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        assert!(
            v.status.success() && v.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }

    let other = tempfile::tempdir().unwrap();
    let out = spritesd()
        .args(["install-service", "--no-start", "--unit-dir"])
        .arg(other.path())
        .args(["--", "--no-such-flag"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one readable line: {err}");
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0);
}

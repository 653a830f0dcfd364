//! Fetches the browser libraries the console embeds (xterm.js and its fit addon) from the npm
//! registry at the versions `web/package-lock.json` pins, into OUT_DIR; nothing of them is in
//! the repository. `SPRITES_CONSOLE_NODE_MODULES` points at an existing `node_modules` instead
//! (an offline build).

use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: &[&str] = &[
    "@xterm/xterm/lib/xterm.js",
    "@xterm/xterm/css/xterm.css",
    "@xterm/addon-fit/lib/addon-fit.js",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed=web/package.json");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-env-changed=SPRITES_CONSOLE_NODE_MODULES");
    let modules = match std::env::var_os("SPRITES_CONSOLE_NODE_MODULES") {
        Some(dir) => PathBuf::from(dir),
        None => fetch(&manifest.join("web"), &out.join("web")),
    };
    for f in FILES {
        let src = modules.join(f);
        let name = Path::new(f).file_name().expect("a file name");
        std::fs::copy(&src, out.join(name)).unwrap_or_else(|e| {
            panic!("the console needs {}: {e}", src.display());
        });
    }
}

/// `npm ci` into `dest` unless it already holds this lock file's packages.
fn fetch(web: &Path, dest: &Path) -> PathBuf {
    let lock = std::fs::read(web.join("package-lock.json")).expect("web/package-lock.json");
    let done = dest.join("installed.lock");
    let modules = dest.join("node_modules");
    if std::fs::read(&done).ok().as_deref() == Some(&lock[..]) && modules.is_dir() {
        return modules;
    }
    std::fs::create_dir_all(dest).expect("OUT_DIR is writable");
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(web.join(f), dest.join(f)).expect("copy the package files");
    }
    let status = Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
        ])
        .current_dir(dest)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`npm ci` for the console's browser libraries failed ({s}); the build needs the npm registry once, or SPRITES_CONSOLE_NODE_MODULES set to a node_modules holding @xterm/xterm and @xterm/addon-fit"),
        Err(e) => panic!("the console's browser libraries come from npm, which could not run ({e}): install Node.js and npm (Debian: apt install npm), or set SPRITES_CONSOLE_NODE_MODULES"),
    }
    std::fs::write(&done, &lock).expect("OUT_DIR is writable");
    modules
}

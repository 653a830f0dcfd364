//! `sprite-agent`: PID 1 inside every sprite.
//!
//! PID 1 itself only reaps orphans and forwards signals; it forks the agent proper, which
//! serves the per-sprite API (exec now; fs, services, ports later) over HTTP/1.1 on the
//! listening socket the launcher left on fd 3. When the agent ends, PID 1 ends every process
//! and flushes the disk, so the sprite stops as one unit.
//!
//! Architecture invariant: this binary links no host crate; it knows the host only through
//! `sprites-agent-protocol` and the public wire types of `sprites-api`.

mod exec;
mod fsapi;
mod fstar;
mod hostcall;
mod init;
mod jail;
mod ports;
mod proxy;
mod server;
mod services;
mod session;
mod spawn;
mod sprite_env;
mod tasks;
mod ws;

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    if argv0.rsplit('/').next() == Some("sprite-env") {
        sprite_env::main(std::env::args().skip(1).collect());
    }
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("init") => init::main(),
        Some("serve") => server::main(),
        Some("version") | Some("--version") => {
            println!("sprite-agent {}", env!("CARGO_PKG_VERSION"))
        }
        _ => {
            eprintln!("usage: sprite-agent init|serve|version");
            std::process::exit(2)
        }
    }
}

//! Standalone launcher (`sprite-launch <launch.json>`), for embedders and this crate's tests.
//! `spritesd` runs the same code as `spritesd __launch`.

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: sprite-launch <launch.json>");
        std::process::exit(2)
    };
    sprites_runtime_namespace::launcher::main(std::path::Path::new(&path))
}

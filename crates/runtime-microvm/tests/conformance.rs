//! The shared backend conformance suite against real microVMs, under TCG (software
//! emulation) so it runs on any host, these CI machines included.

use std::sync::Arc;

use sprites_runtime::{conformance, Backend, SpriteSpec};
use sprites_runtime_microvm::{Accel, MicroVmBackend, MicroVmConfig};
use sprites_storage::disk::DiskFactory;
use sprites_storage::guest::GuestArtifacts;

fn vsock_bin() -> std::path::PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/root/.cargo/bin"])
    {
        let p = std::path::Path::new(dir).join("vhost-device-vsock");
        if p.exists() {
            return p;
        }
    }
    panic!("vhost-device-vsock not found: run scripts/test.sh or `cargo install vhost-device-vsock --locked`");
}

struct Env {
    backend: Arc<MicroVmBackend>,
    dir: tempfile::TempDir,
    disks: DiskFactory,
}

fn env() -> Env {
    sprites_testing::ensure_image().expect("base image");
    let image_dir = sprites_testing::image_dir();
    let guest = GuestArtifacts::new(&image_dir);
    if !guest.is_ready() {
        guest.build().expect("building the guest");
    }
    let dir = tempfile::Builder::new()
        .prefix("vm")
        .tempdir_in("/tmp")
        .unwrap();
    let backend = MicroVmBackend::new(MicroVmConfig {
        run_root: dir.path().join("run"),
        image_dir: image_dir.clone(),
        agent_bin: sprites_testing::bin_dir().join("sprite-agent"),
        accel: Accel::Tcg,
        vsock_bin: vsock_bin(),
        network: None,
        memory_cap_mib: 512,
        vcpus: 1,
    })
    .expect("backend");
    Env {
        backend: Arc::new(backend),
        disks: DiskFactory::new(&image_dir),
        dir,
    }
}

impl Env {
    fn spec(&self, name: &str) -> SpriteSpec {
        let disk = self.dir.path().join(format!("{name}.ext4"));
        self.disks.create(&disk).unwrap();
        SpriteSpec {
            id: format!("sprite-vm-{name}-{}", std::process::id()),
            hostname: name.into(),
            disk,
            uid_base: 1_600_000_000,
            memory_limit: 512 << 20,
            pids_limit: 512,
            disk_limit: None,
            cpu_limit: None,
            env: [("CONFORMANCE".to_string(), "yes".to_string())].into(),
            host_dir: None,
            base: None,
        }
    }
}

#[tokio::test]
async fn microvm_backend_conforms_under_tcg() {
    let e = env();
    let b: &dyn Backend = e.backend.as_ref();
    let boot = e.spec("boot");
    conformance::boots_and_execs(b, &boot).await;

    // Its own kernel: the guest runs Debian's cloud kernel, not the host's.
    b.start(&boot).await.expect("start");
    let o = conformance::exec(b, &boot, &["uname", "-r"]).await;
    let host = nix::sys::utsname::uname().unwrap();
    assert!(o.stdout.contains("cloud-amd64"), "{o:?}");
    assert_ne!(o.stdout.trim(), host.release().to_string_lossy());
    b.stop(&boot).await.unwrap();

    let disk = e.spec("disk");
    conformance::disk_persists(b, &disk).await;
    let pause = e.spec("pause");
    conformance::pause_and_resume(b, &pause).await;
    let marker = e.dir.path().join("host-only-marker");
    std::fs::write(&marker, "x").unwrap();
    let iso = e.spec("iso");
    conformance::isolated_and_clean(b, &iso, &marker).await;
    for spec in [boot, disk, pause] {
        b.cleanup(&spec).await.unwrap();
    }
    // Nothing left: no QEMU or vsock process of this test, no runtime files.
    let run = e.dir.path().join("run");
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&*run.to_string_lossy()) && !c.contains("cargo"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let dirs: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir())
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}

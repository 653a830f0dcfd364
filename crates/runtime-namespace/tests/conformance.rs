//! The shared backend conformance suite against real namespace sprites.

use std::sync::Arc;

use sprites_runtime::{conformance, Backend, SpriteSpec};
use sprites_runtime_namespace::{NamespaceBackend, NamespaceConfig};
use sprites_storage::disk::DiskFactory;
use sprites_storage::image::Images;

struct Env {
    backend: Arc<NamespaceBackend>,
    dir: tempfile::TempDir,
    disks: DiskFactory,
}

fn env() -> Env {
    sprites_testing::ensure_image().expect("base image");
    let image_dir = sprites_testing::image_dir();
    let dir = tempfile::Builder::new()
        .prefix("ns")
        .tempdir_in("/tmp")
        .unwrap();
    let backend = NamespaceBackend::new(NamespaceConfig {
        run_root: dir.path().join("run"),
        base_rootfs: Images::new(&image_dir)
            .current()
            .expect("a base image")
            .rootfs(),
        agent_bin: sprites_testing::bin_dir().join("sprite-agent"),
        launcher: vec![env!("CARGO_BIN_EXE_sprite-launch").into()],
        cgroup_instance: sprites_testing::instance_name(dir.path()),
        network: None,
        pids_total: None,
        lxcfs: None,
    });
    Env {
        backend: Arc::new(backend),
        disks: DiskFactory::new(&image_dir),
        dir,
    }
}

impl Env {
    fn spec(&self, name: &str, slot: u32) -> SpriteSpec {
        let disk = self.dir.path().join(format!("{name}.ext4"));
        self.disks.create(&disk).unwrap();
        SpriteSpec {
            id: format!("sprite-conf-{name}-{}", std::process::id()),
            hostname: name.into(),
            disk,
            uid_base: 1_500_000_000 + slot * 65536,
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
async fn namespace_backend_conforms() {
    let e = env();
    let b: &dyn Backend = e.backend.as_ref();
    let boot = e.spec("boot", 0);
    conformance::boots_and_execs(b, &boot).await;
    let disk = e.spec("disk", 1);
    conformance::disk_persists(b, &disk).await;
    let pause = e.spec("pause", 2);
    conformance::pause_and_resume(b, &pause).await;
    let marker = e.dir.path().join("host-only-marker");
    std::fs::write(&marker, "x").unwrap();
    let iso = e.spec("iso", 3);
    conformance::isolated_and_clean(b, &iso, &marker).await;
    for spec in [boot, disk, pause] {
        b.cleanup(&spec).await.unwrap();
    }
}

//! The microVM guest (RFC 0001) boots under QEMU with software emulation (TCG, as on hosts
//! without usable KVM), loads its virtio drivers, and overlays a sprite disk on the base image.
//! Needs root, `qemu-system-x86` and the base image (`scripts/test.sh` provides all three).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sprites_storage::disk::DiskFactory;
use sprites_storage::guest::GuestArtifacts;
use sprites_storage::image::Images;

fn image_dir() -> std::path::PathBuf {
    std::env::var_os("SPRITES_TEST_IMAGE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/var/cache/sprites/images".into())
}

fn host_tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let mhz: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split(':').nth(1)))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000.0);
    (mhz * 1000.0) as u64
}

#[test]
fn guest_boots_under_tcg_and_overlays_the_sprite_disk() {
    let base = Images::new(image_dir()).current().unwrap_or_else(|| {
        panic!(
            "the base image is missing in {}; run scripts/test.sh (or spritesd image build)",
            image_dir().display()
        )
    });
    let guest = GuestArtifacts::new(image_dir());
    if !guest.is_ready() {
        guest.build().expect("building the guest");
    }
    assert!(guest.is_ready());
    let base_disk = GuestArtifacts::ensure_base_disk(&base.rootfs()).expect("base disk");

    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.ext4");
    DiskFactory::new(&image_dir()).create(&disk).unwrap();

    let started = Instant::now();
    let mut vm = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,accel=tcg",
            "-cpu",
            "max",
            "-m",
            "512",
            "-smp",
            "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(guest.kernel())
        .arg("-initrd")
        .arg(guest.initramfs())
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 tsc_early_khz={}",
            host_tsc_khz()
        ))
        .arg("-drive")
        .arg(format!(
            "id=base,file={},format=raw,if=none,readonly=on",
            base_disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=base,serial=base"])
        .arg("-drive")
        .arg(format!(
            "id=disk,file={},format=raw,if=none",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=disk,serial=disk"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (install qemu-system-x86)");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = vm.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = vm.kill();
            panic!("the guest did not power off in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut console = String::new();
    vm.stdout
        .take()
        .unwrap()
        .read_to_string(&mut console)
        .unwrap();
    let mut err = String::new();
    vm.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    eprintln!("guest powered off after {:?}", started.elapsed());
    assert!(status.success(), "qemu: {status} {err}\n{console}");
    assert!(
        console.contains("sprite-init: root ready, Debian 12"),
        "the overlay root shows the base image: {console}"
    );
    assert!(
        !console.contains("insmod"),
        "every module loaded: {console}"
    );
    assert!(console.contains("no agent in the initramfs"), "{console}");

    // The guest wrote the overlay's directories to the sprite disk: it was mounted read-write.
    let out = Command::new("debugfs")
        .args(["-R", "ls -l /"])
        .arg(&disk)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("upper") && listing.contains("work"),
        "{listing}"
    );
}

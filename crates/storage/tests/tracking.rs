//! Change tracking by reflink on a real XFS volume: only the chunks written since the last
//! checkpoint are read, and the result is the manifest a full read gives.

use std::os::unix::fs::FileExt;
use std::path::Path;

use sprites_storage::checkpoint::{ChunkStore, CHUNK_SIZE};
use sprites_storage::tracking::Snap;
use sprites_testing::XfsVolume;

const M: u64 = CHUNK_SIZE;

fn write_at(path: &Path, off: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn chunk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

fn all_shared(path: &Path) -> bool {
    fiemap::fiemap(path)
        .unwrap()
        .map(|e| e.unwrap())
        .all(|e| e.fe_flags.contains(fiemap::FiemapExtentFlags::SHARED))
}

#[tokio::test]
async fn only_written_chunks_are_read_and_the_manifest_matches_a_full_read() {
    let vol = XfsVolume::new(1).unwrap();
    let disk = vol.path().join("disk.ext4");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 * M)
        .unwrap();
    for c in [0u64, 5, 10, 20, 21, 22] {
        write_at(&disk, c * M, &pattern(c as u8, M as usize));
    }
    let store = ChunkStore::open(vol.path().join("objects").to_str().unwrap()).unwrap();

    // First checkpoint: no reference yet, the clone is read whole.
    let snap = Snap::take(&disk).unwrap().expect("XFS has reflinks");
    assert_eq!(snap.changes(M).unwrap(), None);
    let p = store.snapshot(snap.path(), None).await.unwrap();
    assert_eq!(p.stats.bytes_scanned, 6 * M);
    p.commit("manifests/t/v0.json").await.unwrap();
    snap.adopt("manifests/t/v0.json").unwrap();
    // The store is on the same XFS: chunk files share the disk's blocks instead of copies.
    let chunks = chunk_files(&vol.path().join("objects/chunks"));
    assert_eq!(chunks.len(), 6);
    assert!(chunks.iter().all(|c| all_shared(c)), "{chunks:?}");

    // A 4 KiB write inside chunk 5, a hole punched over chunk 10, a new chunk 40, and chunk
    // 21 rewritten with the same bytes (a change in blocks, not in content).
    write_at(&disk, 5 * M + 8192, &[0xAB; 4096]);
    {
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            (10 * M) as i64,
            M as i64,
        )
        .unwrap();
    }
    write_at(&disk, 40 * M, &pattern(40, M as usize));
    write_at(&disk, 21 * M, &pattern(21, M as usize));

    let snap = Snap::take(&disk).unwrap().unwrap();
    let changes = snap.changes(M).unwrap().expect("a reference exists");
    assert_eq!(changes.base, "manifests/t/v0.json");
    assert_eq!(changes.chunks, vec![5, 10, 21, 40]);
    let tracked = store.snapshot(snap.path(), Some(&changes)).await.unwrap();
    assert_eq!(tracked.stats.bytes_scanned, 4 * M);
    let tracked_manifest = tracked.manifest.clone();
    drop(tracked);
    let full = store.snapshot(&disk, None).await.unwrap();
    assert_eq!(tracked_manifest, full.manifest);
    assert_eq!(tracked_manifest.chunks.len(), 6);
    drop(full);

    // The reference keeps working across a restore, which rewrites the disk in place.
    let tracked = store.snapshot(snap.path(), Some(&changes)).await.unwrap();
    tracked.commit("manifests/t/v1.json").await.unwrap();
    snap.adopt("manifests/t/v1.json").unwrap();
    let v0 = store.read_manifest("manifests/t/v0.json").await.unwrap();
    // Against its reference (v1) the disk has not moved: the restore to v0 reads nothing and
    // plans from the two manifests' hashes.
    let since = sprites_storage::tracking::disk_changes(&disk, M)
        .unwrap()
        .unwrap();
    assert_eq!(since.base, "manifests/t/v1.json");
    assert_eq!(since.chunks, Vec::<u64>::new());
    let st = store
        .restore_in_place(&v0, &disk, Some(&since))
        .await
        .unwrap();
    assert_eq!(
        st.bytes_scanned, 0,
        "nothing read: the disk is v1, known by hashes"
    );
    assert_eq!(st.chunks_transferred, 2, "{st:?}"); // 5 and 10 written back; 40 punched
    let f = std::fs::File::open(&disk).unwrap();
    let restored_5 = fiemap::Fiemap::new(&f)
        .map(|e| e.unwrap())
        .find(|e| e.fe_logical <= 5 * M && e.fe_logical + e.fe_length > 5 * M)
        .unwrap();
    assert!(
        restored_5
            .fe_flags
            .contains(fiemap::FiemapExtentFlags::SHARED),
        "restored chunks share the chunk file's blocks: {restored_5:?}"
    );
    let snap = Snap::take(&disk).unwrap().unwrap();
    let changes = snap.changes(M).unwrap().unwrap();
    assert_eq!(changes.base, "manifests/t/v1.json");
    let tracked = store.snapshot(snap.path(), Some(&changes)).await.unwrap();
    assert_eq!(tracked.manifest, v0);
    assert!(tracked.stats.bytes_scanned <= 4 * M, "{:?}", tracked.stats);
}

#[tokio::test]
async fn a_reference_that_is_not_the_recorded_one_is_ignored() {
    let vol = XfsVolume::new(1).unwrap();
    let disk = vol.path().join("disk.ext4");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 * M)
        .unwrap();
    write_at(&disk, 0, &pattern(1, M as usize));
    Snap::take(&disk)
        .unwrap()
        .unwrap()
        .adopt("manifests/x.json")
        .unwrap();
    // Someone replaces the reference with a plain copy: same bytes, other inode.
    let reference = vol.path().join("disk.ext4.ckpt-ref");
    std::fs::remove_file(&reference).unwrap();
    std::fs::copy(&disk, &reference).unwrap();
    let snap = Snap::take(&disk).unwrap().unwrap();
    assert_eq!(snap.changes(M).unwrap(), None);
}

#[test]
fn no_reflinks_means_no_clone() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, b"x").unwrap();
    let fs = nix::sys::statfs::statfs(dir.path())
        .unwrap()
        .filesystem_type();
    if fs != nix::sys::statfs::EXT4_SUPER_MAGIC && fs != nix::sys::statfs::TMPFS_MAGIC {
        eprintln!("/tmp is neither ext4 nor tmpfs; nothing to check");
        return;
    }
    assert!(!sprites_storage::tracking::supported(dir.path()));
    assert!(Snap::take(&disk).unwrap().is_none());
    assert!(!dir.path().join("disk.ckpt-snap").exists());
}

//! Usage scans against the real NFS server (nfs-ganesha) on trees a hostile tenant
//! plants: thousands of levels, tens of thousands of names in one directory, a
//! directory the provisioner may not read; and the pace a scan keeps. Trees are
//! planted on the exported directory on disk.
//!
//! Run under the shared lock: `flock /tmp/nfs3p-e2e.lock cargo test --test usage`.
//! `-- --ignored scan_cost` measures the cost of scanning 100 000 files (README).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nfs3_provisioner::backend::nfs3::{Nfs3Options, Nfs3Share};
use nfs3_provisioner::backend::{Pace, Share, Target};
use nfs3_provisioner::path::RelPath;

/// Bytes each thread holds and their peak, so a test on a current-thread runtime
/// measures its own walk while others run beside it.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

async fn peak_of<T>(f: impl std::future::Future<Output = T>) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f.await;
    (out, (PEAK.with(Cell::get) - base).max(0) as usize)
}

fn share_as(export: &Path, uid: u32) -> Nfs3Share {
    let target = Target {
        server: common::nfs().server.clone(),
        share: export.to_str().unwrap().to_string(),
        port: None,
        mount_port: None,
    };
    Nfs3Share::new(
        target,
        Nfs3Options {
            uid,
            gid: uid,
            ..Default::default()
        },
    )
}

fn rel(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

/// `depth` nested directories named `name` below `top`, each with one file, made
/// through descriptors (the whole path is far longer than PATH_MAX).
fn plant_chain(top: &Path, depth: usize, name: &str) {
    use rustix::fs::{Mode, OFlags, mkdirat, openat};
    fs::create_dir_all(top).unwrap();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = openat(rustix::fs::CWD, top, flags, Mode::empty()).unwrap();
    for _ in 0..depth {
        mkdirat(&fd, name, Mode::from_raw_mode(0o755)).unwrap();
        let f = openat(
            &fd,
            "f",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(f);
        fd = openat(&fd, name, flags, Mode::empty()).unwrap();
    }
}

/// `n` files of `size` bytes in `dir`, spread over subdirectories of `per_dir`.
fn plant_files(dir: &Path, n: usize, per_dir: usize, size: usize) {
    let data = vec![b'u'; size];
    for i in 0..n {
        let sub = dir.join(format!("d{:04}", i / per_dir));
        if i % per_dir == 0 {
            fs::create_dir_all(&sub).unwrap();
        }
        fs::write(sub.join(format!("file-{i:07}")), &data).unwrap();
    }
}

#[tokio::test]
async fn a_deep_tree_is_counted_in_bounded_memory() {
    const DEPTH: usize = 2500;
    const BOUND: usize = 4 << 20;
    let export = &common::nfs().export1;
    let scratch = common::scratch(export, "usage-deep");
    plant_chain(&scratch.path.join("vol"), DEPTH, &"n".repeat(200));
    let share = share_as(export, 0);
    let started = Instant::now();
    let (u, peak) =
        peak_of(share.usage(&rel(&format!("{}/vol", scratch.name)), &Pace::unlimited())).await;
    let u = u.unwrap().unwrap();
    eprintln!(
        "deep tree ({DEPTH} levels of 200-byte names): {u:?} in {:?}, peak {:.2} MiB",
        started.elapsed(),
        peak as f64 / f64::from(1 << 20)
    );
    assert_eq!(
        (u.dirs, u.files, u.unreadable),
        (DEPTH as u64, DEPTH as u64, 0)
    );
    assert!(peak < BOUND, "the walk held {peak} bytes at its peak");
}

#[tokio::test]
async fn a_wide_directory_is_counted_a_page_at_a_time() {
    const N: usize = 20_000;
    const BOUND: usize = 2 << 20;
    let export = &common::nfs().export1;
    let scratch = common::scratch(export, "usage-wide");
    // One directory of N long names: one page must never become all of them.
    let vol = scratch.path.join("vol");
    fs::create_dir_all(&vol).unwrap();
    for i in 0..N {
        fs::write(vol.join(format!("{}-{i:06}", "w".repeat(100))), b"").unwrap();
    }
    let share = share_as(export, 0);
    let (u, peak) =
        peak_of(share.usage(&rel(&format!("{}/vol", scratch.name)), &Pace::unlimited())).await;
    let u = u.unwrap().unwrap();
    eprintln!("{N} names in one directory: {u:?}, peak {peak} bytes");
    assert_eq!((u.files, u.dirs), (N as u64, 0));
    // One page of 32 KiB holds about 150 such names: far fewer calls than names.
    assert!(u.calls > 20 && u.calls < N as u64 / 50, "{u:?}");
    assert!(peak < BOUND, "the walk held {peak} bytes at its peak");
}

/// A tenant's `chmod 000` directory, and one it may read but not search: both counted
/// as unreadable; the scan goes on with the rest. The provisioner acts as uid 4242 here
/// (AUTH_SYS), as it does with `--auth-uid` on an export that squashes root.
#[tokio::test]
async fn an_unreadable_directory_is_counted_and_skipped() {
    let export = &common::nfs().export1;
    let scratch = common::scratch(export, "usage-locked");
    let vol = scratch.path.join("vol");
    for d in ["a", "locked/inner", "noexec", "z"] {
        fs::create_dir_all(vol.join(d)).unwrap();
    }
    for f in ["a/1", "locked/inner/2", "noexec/3", "z/4", "5"] {
        fs::write(vol.join(f), b"data").unwrap();
    }
    for d in [&scratch.path, &vol, &vol.join("a"), &vol.join("z")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(vol.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(vol.join("noexec"), fs::Permissions::from_mode(0o444)).unwrap();
    let share = share_as(export, 4242);
    let u = share
        .usage(&rel(&format!("{}/vol", scratch.name)), &Pace::unlimited())
        .await;
    fs::set_permissions(vol.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(vol.join("noexec"), fs::Permissions::from_mode(0o755)).unwrap();
    let u = u.unwrap().unwrap();
    assert_eq!(u.dirs, 4, "{u:?}");
    assert!(u.unreadable >= 1, "{u:?}");
    // 5, a/1 and z/4 at least; never locked/inner/2.
    assert!(u.files >= 3 && u.files <= 4, "{u:?}");
}

/// The pace holds over a real walk: calls beyond the first second's burst come at the
/// configured rate.
#[tokio::test]
async fn a_scan_keeps_its_pace() {
    let export = &common::nfs().export1;
    let scratch = common::scratch(export, "usage-pace");
    // 60 directories of one file: at least 61 READDIRPLUS calls.
    plant_files(&scratch.path.join("vol"), 60, 1, 1);
    let share = share_as(export, 0);
    let started = Instant::now();
    let u = share
        .usage(
            &rel(&format!("{}/vol", scratch.name)),
            &Pace::per_second(40),
        )
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    eprintln!("{u:?} at 40 calls/s in {took:?}");
    assert_eq!((u.files, u.dirs), (60, 60));
    // Burst of 40, the rest at 40 a second.
    let least = Duration::from_secs_f64((u.calls - 40) as f64 / 40.0);
    assert!(took >= least, "{} calls in {took:?}", u.calls);
}

/// The figures in the README: scanning 100 000 files (100 directories of 1 000, 1 KiB
/// each) without a limit and at the default pace, and how long provisioning calls on a
/// pool of their own take meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: plants 100 000 files and takes minutes"]
async fn scan_cost() {
    let export = &common::nfs().export1;
    let scratch = common::scratch(export, "usage-cost");
    let planted = Instant::now();
    plant_files(&scratch.path.join("vol"), 100_000, 1000, 1024);
    eprintln!("planted 100 000 files in {:?}", planted.elapsed());
    let dir = rel(&format!("{}/vol", scratch.name));
    let scanner = share_as(export, 0);
    let provisioning = Arc::new(share_as(export, 0));
    for (label, pace) in [
        ("no scan (baseline, 3 s)", None),
        ("unlimited", Some(Pace::unlimited())),
        ("default (100 calls/s)", Some(Pace::per_second(100))),
    ] {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let probe = tokio::spawn({
            let (share, base) = (provisioning.clone(), scratch.name.clone());
            async move {
                let mut took = Vec::new();
                let mut i = 0;
                while !*rx.borrow_and_update() {
                    let d = rel(&format!("{base}/probe-{i}"));
                    let t = Instant::now();
                    share
                        .create_dir(
                            &d,
                            nfs3_provisioner::backend::DirAttrs {
                                mode: 0o777,
                                uid: None,
                                gid: None,
                                stamp: None,
                            },
                        )
                        .await
                        .unwrap();
                    took.push(t.elapsed());
                    share.remove_tree(&d).await.unwrap();
                    i += 1;
                    let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
                }
                took
            }
        });
        let started = Instant::now();
        let u = match pace {
            Some(pace) => scanner.usage(&dir, &pace).await.unwrap().unwrap(),
            None => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                nfs3_provisioner::backend::Usage {
                    files: 100_000,
                    ..Default::default()
                }
            }
        };
        let took = started.elapsed();
        let _ = tx.send(true);
        let mut probes = probe.await.unwrap();
        probes.sort();
        eprintln!(
            "{label}: {} files, {} dirs, {} bytes in {took:?} with {} NFS calls; create_dir meanwhile: {} calls, median {:?}, max {:?}",
            u.files,
            u.dirs,
            u.bytes,
            u.calls,
            probes.len(),
            probes.get(probes.len() / 2),
            probes.last()
        );
        assert_eq!(u.files, 100_000);
    }
}

//! Faults and hostile trees against the real NFS server (nfs-ganesha), injected between
//! the real parts: a TCP proxy in front of ganesha's NFS port (`common::proxy`), a
//! root-squashing export, trees planted on the exported directories on disk.
//!
//! Run under the shared lock: `flock /tmp/nfs3p-e2e.lock cargo test --test faults`.

mod common;
// Only this binary uses the proxy; kept out of `common/mod.rs` so the others need not build it.
#[path = "common/proxy.rs"]
mod proxy;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::conformance::RWX;
use nfs3_provisioner::backend::mounted::MountedShare;
use nfs3_provisioner::backend::nfs3::{Nfs3Options, Nfs3Share};
use nfs3_provisioner::backend::{Removed, Share, Target};
use nfs3_provisioner::path::RelPath;
use proxy::Proxy;

/// Counts the bytes each thread has allocated and not freed, and the peak of that, so a
/// test on a current-thread runtime measures its own memory while others run beside it.
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

/// Peak bytes this thread held above what it held when `f` started.
async fn peak_of<T>(f: impl std::future::Future<Output = T>) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f.await;
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

const NFS_PORT: u16 = 12049;
const MOUNT_PORT: u16 = 12048;

fn target(export: &Path, port: Option<u16>) -> Target {
    Target {
        server: common::nfs().server.clone(),
        share: export.to_str().unwrap().to_string(),
        port,
        mount_port: port.map(|_| MOUNT_PORT),
    }
}

/// A share whose NFS calls go through a fresh proxy (MOUNT goes to ganesha directly).
async fn proxied(export: &Path, opts: Nfs3Options) -> (Proxy, Arc<Nfs3Share>) {
    let proxy = Proxy::start(([127, 0, 0, 1], NFS_PORT).into()).await;
    let share = Nfs3Share::new(target(export, Some(proxy.port())), opts);
    (proxy, Arc::new(share))
}

/// export1 through a fresh proxy, with `max_connections` slots and call `timeout`.
async fn proxied_export1(
    max_connections: usize,
    timeout: Duration,
) -> (PathBuf, Proxy, Arc<Nfs3Share>) {
    let export = common::nfs().export1.clone();
    let opts = Nfs3Options {
        max_connections,
        timeout,
        ..Default::default()
    };
    let (proxy, share) = proxied(&export, opts).await;
    (export, proxy, share)
}

fn rel(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

/// Waits for `cond` until `deadline`, polling; false when it never held.
async fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The root-squashing export. A ganesha started by an older `nfs.sh` (before export3
/// existed) does not serve it: then it is restarted with this tree's configuration. The
/// tests run under the shared lock, so nobody else is using the server meanwhile.
async fn export3() -> PathBuf {
    common::nfs();
    let env = common::parse_env(&common::script("nfs.sh", &["env"]));
    let dir: PathBuf = env
        .iter()
        .find(|(k, _)| k == "NFS_EXPORT3")
        .map(|(_, v)| v.into())
        .expect("nfs.sh env names NFS_EXPORT3");
    let probe = Nfs3Share::new(target(&dir, None), Nfs3Options::default());
    if probe.space().await.is_err() {
        common::script("nfs.sh", &["stop-server"]);
        common::script("nfs.sh", &["up"]);
    }
    dir
}

/// Makes `depth` nested directories named `name` below `top` on disk, through directory
/// descriptors (the whole path is far longer than PATH_MAX), with a file every 100
/// levels.
fn plant_chain(top: &Path, depth: usize, name: &str) {
    use rustix::fs::{Mode, OFlags, mkdirat, openat};
    fs::create_dir_all(top).unwrap();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = openat(rustix::fs::CWD, top, flags, Mode::empty()).unwrap();
    for level in 0..depth {
        if level % 100 == 0 {
            let f = openat(
                &fd,
                "file",
                OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            drop(f);
        }
        mkdirat(&fd, name, Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(&fd, name, flags, Mode::empty()).unwrap();
    }
}

/// A volume of `dirs` subdirectories holding `files` files each.
fn plant_wide(vol: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let sub = vol.join(format!("sub-{d:02}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..files {
            fs::write(sub.join(format!("file-{f:05}")), b"x").unwrap();
        }
    }
}

fn files_left(vol: &Path) -> usize {
    fs::read_dir(vol)
        .map(|rd| {
            rd.flatten()
                .map(|e| fs::read_dir(e.path()).map(|r| r.count()).unwrap_or(1))
                .sum()
        })
        .unwrap_or(0)
}

/// Issue 11, item 2: 2000 levels of 200-byte names. Removal memory used to grow with
/// the square of the depth (a copied path per level, about 400 MB here).
#[tokio::test]
async fn nfs3_deep_tree_is_reclaimed_with_bounded_memory() {
    const DEPTH: usize = 2000;
    const BOUND: usize = 16 << 20;
    let export = &common::nfs().export1;
    let scratch = common::scratch(export, "deep");
    let base = scratch.name.clone();
    let name = "n".repeat(200);
    plant_chain(&export.join(&base).join("vol"), DEPTH, &name);
    let share = Nfs3Share::new(target(export, None), Nfs3Options::default());
    let started = Instant::now();
    let (removed, peak) = peak_of(share.remove_tree(&rel(&format!("{base}/vol")))).await;
    eprintln!(
        "deep nfs3 tree ({DEPTH} levels of 200-byte names): removed {removed:?} in {:?}, peak allocation {:.1} MiB",
        started.elapsed(),
        peak as f64 / f64::from(1 << 20)
    );
    let removed = removed.unwrap();
    assert!(
        matches!(removed, Removed::Removed { entries } if entries > DEPTH as u64),
        "{removed:?}"
    );
    assert!(!export.join(&base).join("vol").exists());
    assert!(
        peak < BOUND,
        "removal held {peak} bytes at its peak; bound {BOUND}"
    );
    fs::remove_dir(export.join(&base)).unwrap();
}

/// Cloning a tree 2000 levels deep of 200-byte names holds a frame per level (two
/// handles, a cookie, a name), not a path per level: the copy stays below the same bound
/// as removal, and the copy's chain is as deep as the source's.
#[tokio::test]
async fn nfs3_deep_tree_is_cloned_with_bounded_memory() {
    use nfs3_provisioner::backend::CopyProgress;
    const DEPTH: usize = 2000;
    const BOUND: usize = 16 << 20;
    let export = &common::nfs().export1;
    let scratch = common::scratch(export, "deepcopy");
    let base = scratch.name.clone();
    let name = "n".repeat(200);
    plant_chain(&export.join(&base).join("vol"), DEPTH, &name);
    let share = Nfs3Share::new(target(export, None), Nfs3Options::default());
    let started = Instant::now();
    let (copied, peak) = peak_of(share.copy_tree(
        &rel(&format!("{base}/vol")),
        &rel(&format!("{base}/copy")),
        RWX,
        Arc::new(CopyProgress::default()),
    ))
    .await;
    eprintln!(
        "deep nfs3 tree ({DEPTH} levels of 200-byte names): copied {copied:?} in {:?}, peak allocation {:.1} MiB",
        started.elapsed(),
        peak as f64 / f64::from(1 << 20)
    );
    let copied = copied.unwrap();
    assert_eq!(copied.dirs, DEPTH as u64);
    assert_eq!(copied.files, DEPTH as u64 / 100);
    let depth =
        common::conformance::clone_tree::chain_depth(&export.join(&base).join("copy"), &name);
    assert_eq!(depth, DEPTH);
    assert!(
        peak < BOUND,
        "the copy held {peak} bytes at its peak; bound {BOUND}"
    );
    share.remove_tree(&rel(&base)).await.unwrap();
}

/// Issue 11, item 2, mounted backend: 20000 levels used to overflow the stack of
/// `remove_dir_all` or run out of descriptors. Symlinks on the way stay unfollowed.
#[tokio::test]
async fn mounted_deep_tree_is_reclaimed() {
    const DEPTH: usize = 20_000;
    // Memory-backed when there is one: on this VM's disk the 20000 directory removals
    // are journal-bound (about 50 s against 1 s), and the test is about the walk.
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious"), b"keep").unwrap();
    plant_chain(&root.path().join("vol"), DEPTH, "level-with-a-name");
    std::os::unix::fs::symlink(outside.path(), root.path().join("vol/out")).unwrap();

    let fds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (fds, stop) = (fds.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let n = fs::read_dir("/proc/self/fd")
                    .map(|d| d.count())
                    .unwrap_or(0);
                fds.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let share = MountedShare::new(root.path().to_path_buf());
    let started = Instant::now();
    let removed = share.remove_tree(&rel("vol")).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    let most = fds.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "deep mounted tree ({DEPTH} levels): {removed:?} in {:?}, most open descriptors seen {most}",
        started.elapsed()
    );
    assert!(
        matches!(removed, Ok(Removed::Removed { entries }) if entries > DEPTH as u64),
        "{removed:?}"
    );
    assert!(!root.path().join("vol").exists());
    assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"keep");
    // Sampled, so it can miss a short peak; the whole test binary shares the count.
    assert!(most < 512, "{most} descriptors open at once");
}

/// On a root-squashing export the copy acts as the anonymous user: what it can read is
/// copied, each owner it cannot give back is counted (not fatal), and the copies belong
/// to the anonymous user.
#[tokio::test]
async fn a_clone_on_a_squashing_export_counts_the_owners_it_cannot_set() {
    use nfs3_provisioner::backend::CopyProgress;
    use std::os::unix::fs::MetadataExt;
    let export = export3().await;
    let scratch = common::scratch(&export, "squashcopy");
    let base = scratch.name.clone();
    let vol = export.join(&base).join("vol");
    fs::create_dir_all(vol.join("sub")).unwrap();
    fs::write(vol.join("a"), b"readable by all").unwrap();
    fs::write(vol.join("sub/b"), b"also").unwrap();
    for (p, mode) in [
        (export.join(&base), 0o777),
        (vol.clone(), 0o755),
        (vol.join("sub"), 0o755),
        (vol.join("a"), 0o644),
        (vol.join("sub/b"), 0o644),
    ] {
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    for p in [vol.join("a"), vol.join("sub"), vol.join("sub/b")] {
        chown(&p, Some(4242), Some(4242)).unwrap();
    }
    let share = Nfs3Share::new(target(&export, None), Nfs3Options::default());
    let copied = share
        .copy_tree(
            &rel(&format!("{base}/vol")),
            &rel(&format!("{base}/copy")),
            RWX,
            Arc::new(CopyProgress::default()),
        )
        .await
        .expect("what is readable is copied");
    assert_eq!((copied.files, copied.dirs), (2, 1));
    assert_eq!(copied.owners_refused, 3, "{copied:?}");
    let copy = export.join(&base).join("copy");
    assert_eq!(fs::read(copy.join("sub/b")).unwrap(), b"also");
    let a = fs::metadata(copy.join("a")).unwrap();
    assert_ne!(a.uid(), 4242, "the server refused the owner");
    assert_eq!(a.mode() & 0o7777, 0o644, "the mode is still set");
}

/// Issue 11, item 3: one parallel worker fails (root_squash, and a `chmod 555`
/// directory of another uid) while its siblings are mid-call. Their connections used to
/// go back to the pool with a reply unread, and every later call on them failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_parallel_removal_leaves_the_pool_healthy() {
    let export = export3().await;
    let scratch = common::scratch(&export, "squash");
    let base = scratch.name.clone();
    let vol = export.join(&base).join("vol");
    fs::create_dir_all(&vol).unwrap();
    for d in [export.join(&base), vol.clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    plant_wide(&vol, 12, 150);
    for d in 0..12 {
        fs::set_permissions(
            vol.join(format!("sub-{d:02}")),
            fs::Permissions::from_mode(0o777),
        )
        .unwrap();
    }
    let locked = vol.join("locked");
    fs::create_dir(&locked).unwrap();
    fs::write(locked.join("kept"), b"k").unwrap();
    chown(&locked, Some(4242), Some(4242)).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();

    let share = Nfs3Share::new(
        target(&export, None),
        Nfs3Options {
            max_connections: 4,
            ..Default::default()
        },
    );
    let err = share
        .remove_tree(&rel(&format!("{base}/vol")))
        .await
        .expect_err("squashed root cannot empty a 555 directory of another uid");
    eprintln!("removal refused as it should be: {err}");
    assert!(err.is_permanent(), "access denied is permanent: {err:?}");
    assert!(locked.join("kept").exists());

    // Every pooled connection gets used: a poisoned one fails its next call.
    for i in 0..8 {
        let dir = rel(&format!("{base}/after-{i}"));
        let created = share.create_dir(&dir, RWX).await;
        assert!(
            created.is_ok(),
            "create {i} after the failed removal: {created:?}"
        );
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Issue 11, item 4: the server restarts (every connection reset) while the pool holds
/// connections, or one connection is reset in the middle of a reply: the next call
/// reconnects and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_survive_resets() {
    let (export, proxy, share) = proxied_export1(4, Duration::from_secs(5)).await;
    let scratch = common::scratch(&export, "reset");
    let base = scratch.name.clone();
    // Fill the pool: four calls at once leave four idle connections.
    let warm: Vec<_> = (0..4)
        .map(|i| {
            let share = share.clone();
            let dir = rel(&format!("{base}/warm-{i}"));
            tokio::spawn(async move { share.create_dir(&dir, RWX).await.map(|_| ()) })
        })
        .collect();
    for w in warm {
        w.await.unwrap().unwrap();
    }
    let before = proxy.accepted();
    assert!(before >= 1, "the calls went through the proxy");

    proxy.cut();
    for i in 0..4 {
        let dir = rel(&format!("{base}/after-cut-{i}"));
        let r = share.create_dir(&dir, RWX).await;
        assert!(
            r.is_ok(),
            "call {i} after every connection was reset: {r:?}"
        );
    }
    assert!(
        proxy.accepted() > before,
        "new connections replaced the reset ones"
    );

    // A server that shuts down cleanly closes its connections (FIN): pooled ones must
    // fail at once and be replaced, not wait for the call's timeout.
    let warm: Vec<_> = (0..4)
        .map(|i| {
            let share = share.clone();
            let dir = rel(&format!("{base}/warm-again-{i}"));
            tokio::spawn(async move { share.create_dir(&dir, RWX).await.map(|_| ()) })
        })
        .collect();
    for w in warm {
        w.await.unwrap().unwrap();
    }
    proxy.close_all();
    for i in 0..4 {
        let started = Instant::now();
        let r = share
            .create_dir(&rel(&format!("{base}/after-close-{i}")), RWX)
            .await;
        let took = started.elapsed();
        assert!(
            r.is_ok(),
            "call {i} after every connection was closed: {r:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "call {i} took {took:?} (timeout 5 s)"
        );
    }

    // The server is down: calls fail at once with an error worth retrying later.
    proxy.refuse(true);
    proxy.cut();
    let started = Instant::now();
    let down = share
        .create_dir(&rel(&format!("{base}/while-down")), RWX)
        .await;
    let err = down.expect_err("nothing answers");
    assert!(
        !err.is_permanent(),
        "a server that is down is transient: {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    proxy.refuse(false);
    share
        .create_dir(&rel(&format!("{base}/back-up")), RWX)
        .await
        .expect("the server is back");

    proxy.reset_mid_reply(1);
    let r = share
        .create_dir(&rel(&format!("{base}/after-short")), RWX)
        .await;
    assert!(r.is_ok(), "call after a reply cut halfway: {r:?}");
    assert_eq!(proxy.resets_pending(), 0, "the reset fired");
    assert!(export.join(&base).join("after-short").is_dir());
}

/// A stalled server: calls end with a timeout within their deadline, and once it
/// answers again the pool works (the connections that timed out are not reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_calls_time_out() {
    let timeout = Duration::from_secs(1);
    let (_, proxy, share) = proxied_export1(2, timeout).await;
    share.space().await.unwrap();
    proxy.stall(true);
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let share = share.clone();
            tokio::spawn(async move { share.space().await })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        assert!(r.is_err(), "a stalled call returned {r:?}");
    }
    let took = started.elapsed();
    eprintln!("4 calls on 2 slots against a stalled server all failed after {took:?}");
    // Two calls hold the slots for one timeout; the others wait at most one more.
    assert!(
        took < timeout * 2 + Duration::from_millis(1500),
        "took {took:?}"
    );
    proxy.stall(false);
    share
        .space()
        .await
        .expect("the server answers again and the pool recovers");
}

/// Issue 11, item 5: a long reclaim holds its slots; another reclaim waiting for one
/// gets a transient error at the deadline instead of waiting for the whole tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_waits_have_a_deadline() {
    let timeout = Duration::from_secs(1);
    let (export, proxy, share) = proxied_export1(2, timeout).await;
    let scratch = common::scratch(&export, "deadline");
    let base = scratch.name.clone();
    let big = export.join(&base).join("big");
    plant_wide(&big, 4, 150);
    share
        .create_dir(&rel(&format!("{base}/small")), RWX)
        .await
        .unwrap();
    proxy.delay(Duration::from_millis(20));

    let long = {
        let share = share.clone();
        let dir = rel(&format!("{base}/big"));
        tokio::spawn(async move { share.remove_tree(&dir).await })
    };
    let total = 4 * 150;
    assert!(
        wait_for(Duration::from_secs(20), || files_left(&big) < total).await,
        "the long reclaim started"
    );
    let started = Instant::now();
    let other = tokio::time::timeout(
        Duration::from_secs(30),
        share.remove_tree(&rel(&format!("{base}/small"))),
    )
    .await
    .expect("a slot wait longer than 30 s");
    let took = started.elapsed();
    eprintln!("second reclaim behind a long one: {other:?} after {took:?}");
    assert!(
        took < timeout * 3,
        "the second reclaim waited {took:?} for a slot"
    );
    proxy.delay(Duration::ZERO);
    long.await.unwrap().unwrap();
    // Whether it was refused at the deadline or got through, it ends done on a retry.
    if other.is_err() {
        share
            .remove_tree(&rel(&format!("{base}/small")))
            .await
            .unwrap();
    }
    assert!(!export.join(&base).join("small").exists());
}

/// Issue 11, item 5: two big reclaims in flight on a share; a new claim's directory is
/// still made within 2 s, because reclaim cannot take every connection slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_is_not_starved_by_big_reclaims() {
    const BOUND: Duration = Duration::from_secs(2);
    let (export, proxy, share) = proxied_export1(4, Duration::from_secs(10)).await;
    let scratch = common::scratch(&export, "starve");
    let base = scratch.name.clone();
    let (a, b) = (export.join(&base).join("a"), export.join(&base).join("b"));
    plant_wide(&a, 4, 250);
    plant_wide(&b, 4, 250);
    // Every reply takes 20 ms: a subtree of 250 files takes a worker over 5 s.
    proxy.delay(Duration::from_millis(20));
    let reclaims: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|v| {
            let share = share.clone();
            let dir = rel(&format!("{base}/{v}"));
            tokio::spawn(async move { share.remove_tree(&dir).await })
        })
        .collect();
    let total = 4 * 250;
    assert!(
        wait_for(Duration::from_secs(20), || files_left(&a) < total
            || files_left(&b) < total)
        .await,
        "a reclaim started"
    );
    let started = Instant::now();
    let created = tokio::time::timeout(
        Duration::from_secs(60),
        share.create_dir(&rel(&format!("{base}/new-claim")), RWX),
    )
    .await
    .expect("create_dir within 60 s");
    let took = started.elapsed();
    eprintln!("create_dir during two big reclaims: {created:?} after {took:?}");
    assert!(created.is_ok(), "{created:?}");
    assert!(took < BOUND, "create_dir took {took:?} (bound {BOUND:?})");

    proxy.delay(Duration::ZERO);
    for (r, v) in reclaims.into_iter().zip(["a", "b"]) {
        // A reclaim that waited past its slot deadline is retried, as the controller does.
        if r.await.unwrap().is_err() {
            share
                .remove_tree(&rel(&format!("{base}/{v}")))
                .await
                .unwrap();
        }
    }
    assert!(!a.exists() && !b.exists());
}

/// Issue 11, item 4: the root handle a pooled connection cached comes back STALE (the
/// export was re-created under it). The connection is dropped, the share mounted again,
/// and the call retried once on the fresh root handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_root_handle_is_replaced_by_a_fresh_mount() {
    use nfs3_client::nfs3_types::nfs3::{
        GETATTR3args, LOOKUP3args, Nfs3Result, RMDIR3args, diropargs3, nfsstat3,
    };
    use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
    use nfs3_client::tokio::TokioConnector;

    let (export, proxy, share) = proxied_export1(2, Duration::from_secs(5)).await;
    let scratch = common::scratch(&export, "stale");
    let base = scratch.name.clone();
    share.create_dir(&rel(&base), RWX).await.unwrap();

    // The share's root handle, and a handle the server calls stale: a directory that
    // was removed. Same file system, so both handles have the same length.
    let cred = auth_unix::default();
    let mounted = nfs3_client::Nfs3ConnectionBuilder::new(
        TokioConnector,
        "127.0.0.1",
        export.to_str().unwrap(),
    )
    .credential(opaque_auth::auth_unix(&cred))
    .connect_from_privileged_port(false)
    .mount_port(MOUNT_PORT)
    .nfs3_port(NFS_PORT)
    .mount()
    .await
    .unwrap();
    let root = mounted.root_nfs_fh3();
    let mut client = mounted.into_nfs3_client();
    fs::create_dir(export.join(&base).join("gone")).unwrap();
    let gone = match client
        .lookup(&LOOKUP3args {
            what: diropargs3 {
                dir: root.clone(),
                name: base.as_bytes().to_vec().into(),
            },
        })
        .await
        .unwrap()
    {
        Nfs3Result::Ok(ok) => ok.object,
        Nfs3Result::Err((s, _)) => panic!("lookup {base}: {s}"),
    };
    let parent = gone;
    let gone = match client
        .lookup(&LOOKUP3args {
            what: diropargs3 {
                dir: parent.clone(),
                name: b"gone".to_vec().into(),
            },
        })
        .await
        .unwrap()
    {
        Nfs3Result::Ok(ok) => ok.object,
        Nfs3Result::Err((s, _)) => panic!("lookup gone: {s}"),
    };
    // Removed through the server, so that its cache knows.
    let rmdir = client
        .rmdir(&RMDIR3args {
            object: diropargs3 {
                dir: parent,
                name: b"gone".to_vec().into(),
            },
        })
        .await
        .unwrap();
    assert!(matches!(rmdir, Nfs3Result::Ok(_)), "rmdir gone");
    let stale = client
        .getattr(&GETATTR3args {
            object: gone.clone(),
        })
        .await
        .unwrap();
    assert!(
        matches!(stale, Nfs3Result::Err((nfsstat3::NFS3ERR_STALE, _))),
        "the server calls a removed directory's handle stale"
    );
    assert_eq!(root.data.len(), gone.data.len());

    proxy.rewrite_open_connections(&root.data, &gone.data);
    let r = share
        .create_dir(&rel(&format!("{base}/after-stale")), RWX)
        .await;
    assert!(
        proxy.rewrites() > 0,
        "the pooled connection sent the old root"
    );
    assert!(r.is_ok(), "call after the root handle went stale: {r:?}");
    assert!(export.join(&base).join("after-stale").is_dir());
}

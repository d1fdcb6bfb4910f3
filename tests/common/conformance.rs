//! The behaviour every backend must have, run against each of them.
use nfs3_provisioner::backend::{
    BackendError, DirAttrs, Kind, Made, PARENT_MODE, Removed, Renamed, Share,
};
use nfs3_provisioner::path::RelPath;
use std::os::unix::ffi::OsStrExt;

/// Every test works under its own `base` directory, so runs on a shared export never meet.
/// The attributes most tests give a new directory: open to all, owner unchanged.
pub const RWX: DirAttrs = DirAttrs {
    mode: 0o777,
    uid: None,
    gid: None,
    stamp: None,
};

fn p(base: &str, s: &str) -> RelPath {
    RelPath::parse(&format!("{base}/{s}")).unwrap()
}

pub async fn create_is_idempotent_and_applies_attrs<S: Share>(share: &S, base: &str) {
    let attrs = DirAttrs {
        mode: 0o750,
        uid: Some(1234),
        gid: Some(2345),
        stamp: Some((1_000_000_123, 456_000_000)),
    };
    assert_eq!(
        share.create_dir(&p(base, "ns/claim"), attrs).await.unwrap(),
        Made::Created
    );
    let st = share.stat(&p(base, "ns/claim")).await.unwrap().unwrap();
    assert_eq!(
        (st.kind, st.mode & 0o7777, st.uid, st.gid),
        (Kind::Dir, 0o750, 1234, 2345)
    );
    assert_eq!(st.mtime.0, 1_000_000_123);
    assert!(
        st.mtime.1 == 456_000_000 || st.mtime.1 == 0,
        "{:?}",
        st.mtime
    );
    // The same stamp again (a retry for the same claim after a crash before the
    // attributes): it is finished, not refused.
    let retry = DirAttrs {
        mode: 0o770,
        ..attrs
    };
    assert_eq!(
        share.create_dir(&p(base, "ns/claim"), retry).await.unwrap(),
        Made::Created
    );
    let st = share.stat(&p(base, "ns/claim")).await.unwrap().unwrap();
    assert_eq!((st.mode & 0o7777, st.uid, st.gid), (0o770, 1234, 2345));
    // Another create finds it and changes nothing: not the mode, not the owner.
    let other = DirAttrs {
        mode: 0o777,
        uid: Some(1),
        gid: Some(1),
        stamp: None,
    };
    assert_eq!(
        share.create_dir(&p(base, "ns/claim"), other).await.unwrap(),
        Made::Existed(st.clone())
    );
    let again = share.stat(&p(base, "ns/claim")).await.unwrap().unwrap();
    assert_eq!(
        (again.mode & 0o7777, again.uid, again.gid),
        (0o770, 1234, 2345)
    );
    let parent = share.stat(&p(base, "ns")).await.unwrap().unwrap();
    assert_eq!(
        (parent.kind, parent.mode & 0o7777),
        (Kind::Dir, PARENT_MODE)
    );
    let wide = RWX;
    share.create_dir(&p(base, "wide"), wide).await.unwrap();
    assert_eq!(
        share.stat(&p(base, "wide")).await.unwrap().unwrap().mode & 0o7777,
        0o777
    );
    assert!(
        share
            .list(Some(&RelPath::parse(base).unwrap()))
            .await
            .unwrap()
            .contains(&"wide".to_string())
    );
}

pub async fn remove_and_rename_are_idempotent<S: Share>(share: &S, base: &str) {
    let attrs = RWX;
    share.create_dir(&p(base, "r/a"), attrs).await.unwrap();
    assert!(matches!(
        share.remove_tree(&p(base, "r/a")).await.unwrap(),
        Removed::Removed { .. }
    ));
    assert_eq!(
        share.remove_tree(&p(base, "r/a")).await.unwrap(),
        Removed::AlreadyGone
    );
    assert_eq!(
        share.remove_tree(&p(base, "never/there")).await.unwrap(),
        Removed::AlreadyGone
    );
    assert!(
        share.stat(&p(base, "r")).await.unwrap().is_some(),
        "the parent stays"
    );

    share.create_dir(&p(base, "r/b"), attrs).await.unwrap();
    assert_eq!(
        share
            .rename(&p(base, "r/b"), &p(base, "r/archived-b"))
            .await
            .unwrap(),
        Renamed::Done
    );
    assert_eq!(
        share
            .rename(&p(base, "r/b"), &p(base, "r/archived-b"))
            .await
            .unwrap(),
        Renamed::AlreadyDone
    );
    assert_eq!(
        share
            .rename(&p(base, "r/c"), &p(base, "r/archived-c"))
            .await
            .unwrap(),
        Renamed::SourceMissing
    );
    share.create_dir(&p(base, "r/b"), attrs).await.unwrap();
    assert!(matches!(
        share
            .rename(&p(base, "r/b"), &p(base, "r/archived-b"))
            .await,
        Err(BackendError::TargetExists { .. })
    ));
    assert!(
        share.stat(&p(base, "r/b")).await.unwrap().is_some(),
        "a refused rename leaves the source"
    );
}

/// `disk` is where the share's files are on this machine, to plant what a hostile or
/// careless user could leave in a volume.
pub async fn removal_never_follows_symlinks<S: Share>(
    share: &S,
    base: &str,
    disk: &std::path::Path,
) {
    use std::fs;
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious"), b"keep").unwrap();
    let disk = disk.join(base);
    let vol = disk.join("vol");
    fs::create_dir_all(vol.join("a/b/c")).unwrap();
    fs::write(vol.join("a/b/c/deep.txt"), b"x").unwrap();
    fs::create_dir(vol.join("many")).unwrap();
    // Enough names to need several READDIRPLUS pages.
    for i in 0..700 {
        fs::write(
            vol.join(format!("many/file-with-a-longish-name-{i:04}")),
            b"y",
        )
        .unwrap();
    }
    // Many subtrees side by side: the NFS backend removes these in parallel.
    for i in 0..40 {
        fs::create_dir_all(vol.join(format!("wide-{i:02}/inner"))).unwrap();
        fs::write(vol.join(format!("wide-{i:02}/inner/f")), b"w").unwrap();
        std::os::unix::fs::symlink(outside.path(), vol.join(format!("wide-{i:02}/out"))).unwrap();
    }
    std::os::unix::fs::symlink(outside.path(), vol.join("link-out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("precious"), vol.join("a/file-link")).unwrap();
    fs::write(
        vol.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name")),
        b"z",
    )
    .unwrap();

    let removed = share.remove_tree(&p(base, "vol")).await.unwrap();
    assert!(
        matches!(removed, Removed::Removed { entries } if entries >= 700),
        "{removed:?}"
    );
    assert!(!vol.exists());
    assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"keep");

    // A symlink planted as a parent must not redirect creation or removal.
    std::os::unix::fs::symlink(outside.path(), disk.join("evil")).unwrap();
    let attrs = RWX;
    assert!(matches!(
        share.create_dir(&p(base, "evil/x"), attrs).await,
        Err(BackendError::Symlink { .. })
    ));
    assert!(!outside.path().join("x").exists());
    fs::create_dir(outside.path().join("y")).unwrap();
    assert!(matches!(
        share.remove_tree(&p(base, "evil/y")).await,
        Err(BackendError::Symlink { .. })
    ));
    assert!(outside.path().join("y").exists());
    // A symlink as the volume itself is removed as an entry, its target kept.
    assert_eq!(
        share.remove_tree(&p(base, "evil")).await.unwrap(),
        Removed::Removed { entries: 1 }
    );
    assert!(outside.path().join("y").exists());
}

pub async fn space_is_reported<S: Share>(share: &S) {
    let s = share.space().await.unwrap();
    assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes, "{s:?}");
}

/// What the clone tests plant and compare: a source tree of every kind of entry, with
/// owners, modes and times to keep, links that point outside, and a deep chain.
pub mod clone_tree {
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::Path;

    use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Timespec, Timestamps};

    pub const DEEP: usize = 2000;
    /// Regular files planted by [`plant`], hard links counted once.
    pub const FILES: u64 = 2 + 1 + 1 + 1 + 1 + 700 + 31 + DEEP as u64 / 100;

    fn times(path: &Path, atime: i64, mtime: i64, nsec: i64) {
        let t = Timestamps {
            last_access: Timespec {
                tv_sec: atime,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: mtime,
                tv_nsec: nsec,
            },
        };
        rustix::fs::utimensat(CWD, path, &t, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    fn own(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    }

    /// Plants the tree at `src` (which must not exist); `outside` is a directory the
    /// copy must never reach through the links planted here.
    pub fn plant(src: &Path, outside: &Path) {
        fs::create_dir_all(src).unwrap();
        fs::write(src.join("a.txt"), b"hello").unwrap();
        own(&src.join("a.txt"), 1234, 2345);
        fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o4640)).unwrap();
        times(
            &src.join("a.txt"),
            1_600_000_000,
            1_500_000_000,
            123_456_789,
        );
        let big: Vec<u8> = (0..300_001u32).map(|i| (i * 31 % 251) as u8).collect();
        fs::write(src.join("big.bin"), &big).unwrap();
        fs::set_permissions(src.join("big.bin"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        fs::write(src.join(OsStr::from_bytes(b"bad-\xff-name")), b"z").unwrap();
        fs::create_dir(src.join("ro")).unwrap();
        fs::write(src.join("ro/f"), b"in a read-only directory").unwrap();
        // Two names of one file, in different directories.
        fs::write(src.join("h1"), b"linked").unwrap();
        fs::hard_link(src.join("h1"), src.join("ro/h2")).unwrap();
        fs::create_dir(src.join("sub")).unwrap();
        symlink("../a.txt", src.join("sub/rel")).unwrap();
        symlink(outside, src.join("sub/out")).unwrap();
        symlink("../../../../../..", src.join("up")).unwrap();
        own(&src.join("sub/rel"), 3333, 4444);
        times(&src.join("sub/rel"), 1_300_000_000, 1_300_000_000, 0);
        rustix::fs::mknodat(
            CWD,
            src.join("pipe"),
            FileType::Fifo,
            Mode::from_raw_mode(0o620),
            0,
        )
        .unwrap();
        // Files and directories mixed over several READDIRPLUS pages, so a listing
        // is left at a directory and taken up again from its cookie.
        fs::create_dir(src.join("many")).unwrap();
        for i in 0..700 {
            let f = src.join(format!("many/file-with-a-longish-name-{i:04}"));
            fs::write(&f, format!("{i}")).unwrap();
            if i % 23 == 0 {
                let d = src.join(format!("many/dir-{i:04}"));
                fs::create_dir(&d).unwrap();
                fs::write(d.join("inner"), b"i").unwrap();
            }
        }
        plant_chain(&src.join("deep"), DEEP, "d");
        fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        own(&src.join("sub"), 1000, 1000);
        times(&src.join("sub"), 1_200_000_000, 1_200_000_000, 0);
        times(&src.join("ro"), 1_100_000_000, 1_100_000_000, 5);
    }

    /// `depth` nested directories named `name`, a file every hundred levels.
    pub fn plant_chain(top: &Path, depth: usize, name: &str) {
        fs::create_dir_all(top).unwrap();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rustix::fs::openat(CWD, top, flags, Mode::empty()).unwrap();
        for level in 0..depth {
            if level % 100 == 0 {
                let f = rustix::fs::openat(
                    &fd,
                    "file",
                    OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .unwrap();
                drop(f);
            }
            rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, name, flags, Mode::empty()).unwrap();
        }
    }

    /// How many levels of `name` lie below `top`.
    pub fn chain_depth(top: &Path, name: &str) -> usize {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rustix::fs::openat(CWD, top, flags, Mode::empty()).unwrap();
        let mut n = 0;
        while let Ok(next) = rustix::fs::openat(&fd, name, flags, Mode::empty()) {
            fd = next;
            n += 1;
        }
        n
    }

    /// Compares `dst` with `src` entry by entry, never following a link: kind, mode,
    /// owner (unless `owners` is false), mtime (of links too if `link_times`), content,
    /// link text. Skips `deep`.
    pub fn compare(src: &Path, dst: &Path, owners: bool, link_times: bool) {
        let (s, d) = (
            fs::symlink_metadata(src).unwrap(),
            fs::symlink_metadata(dst).unwrap_or_else(|e| panic!("{dst:?}: {e}")),
        );
        let what = format!("{dst:?}");
        assert_eq!(s.file_type(), d.file_type(), "{what}");
        if !s.file_type().is_symlink() {
            assert_eq!(s.mode() & 0o7777, d.mode() & 0o7777, "mode of {what}");
        }
        if owners {
            assert_eq!((s.uid(), s.gid()), (d.uid(), d.gid()), "owner of {what}");
        }
        if !s.file_type().is_symlink() || link_times {
            assert_eq!(
                (s.mtime(), s.mtime_nsec()),
                (d.mtime(), d.mtime_nsec()),
                "mtime of {what}"
            );
        }
        if s.file_type().is_file() {
            assert_eq!(fs::read(src).unwrap(), fs::read(dst).unwrap(), "{what}");
        } else if s.file_type().is_symlink() {
            assert_eq!(fs::read_link(src).unwrap(), fs::read_link(dst).unwrap());
        } else if s.is_dir() {
            let names = |p: &Path| {
                let mut v: Vec<_> = fs::read_dir(p)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                v.sort();
                v
            };
            assert_eq!(names(src), names(dst), "{what}");
            for n in names(src) {
                if n != "deep" {
                    compare(&src.join(&n), &dst.join(&n), owners, link_times);
                }
            }
        }
    }
}

/// Copies a planted tree and compares it entry by entry; links stay links (also one
/// pointing outside the share, whose target is never read), hard links stay linked,
/// FIFOs are made again, 2000 levels deep are copied; a second copy onto the same target
/// and a cancelled copy are refused. `link_times`: whether the backend can set a
/// symlink's own times (nfs-ganesha's VFS answers SETATTR on a link without doing so).
pub async fn copy_is_faithful_and_never_follows<S: Share>(
    share: &S,
    base: &str,
    disk: &std::path::Path,
    link_times: bool,
) {
    use nfs3_provisioner::backend::{Copied, CopyProgress};
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"keep").unwrap();
    let src = disk.join(base).join("src");
    clone_tree::plant(&src, outside.path());
    let top = DirAttrs {
        mode: 0o751,
        uid: Some(4321),
        gid: Some(5432),
        stamp: Some((1_000_000_123, 456_000_000)),
    };
    let progress = Arc::new(CopyProgress::default());
    let copied = share
        .copy_tree(&p(base, "src"), &p(base, "dst"), top, progress.clone())
        .await
        .unwrap();
    let dst = disk.join(base).join("dst");
    // Before anything reads it (relatime).
    let a = std::fs::symlink_metadata(dst.join("a.txt")).unwrap();
    assert_eq!(a.atime(), 1_600_000_000, "atime kept");
    clone_tree::compare(&src.join("a.txt"), &dst.join("a.txt"), true, true);
    for entry in std::fs::read_dir(&src).unwrap() {
        let n = entry.unwrap().file_name();
        if n != "deep" {
            clone_tree::compare(&src.join(&n), &dst.join(&n), true, link_times);
        }
    }
    assert_eq!(
        clone_tree::chain_depth(&dst.join("deep"), "d"),
        clone_tree::DEEP
    );
    let (h1, h2) = (
        std::fs::metadata(dst.join("h1")).unwrap(),
        std::fs::metadata(dst.join("ro/h2")).unwrap(),
    );
    assert_eq!(h1.ino(), h2.ino(), "hard links stay linked");
    let root = std::fs::metadata(&dst).unwrap();
    assert_eq!(
        (root.mode() & 0o7777, root.uid(), root.gid(), root.mtime()),
        (0o751, 4321, 5432, 1_000_000_123),
        "the top gets the attributes asked for, the stamp last"
    );
    assert_eq!(
        std::fs::read_link(dst.join("sub/out")).unwrap(),
        outside.path()
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    let dirs = 4 + 31 + clone_tree::DEEP as u64;
    assert_eq!(
        Copied {
            bytes: copied.bytes,
            ..copied
        },
        Copied {
            files: clone_tree::FILES,
            dirs,
            symlinks: 3,
            fifos: 1,
            bytes: copied.bytes,
            hard_links: 1,
            ..Default::default()
        }
    );
    assert_eq!(copied.bytes, progress.bytes());
    assert!(copied.bytes > 300_000, "{copied:?}");
    assert_eq!(
        progress.entries(),
        copied.files + copied.dirs + copied.symlinks + copied.fifos + copied.hard_links
    );

    // The target is never reused, and a cancelled copy stops.
    let again = share
        .copy_tree(&p(base, "src"), &p(base, "dst"), top, Arc::default())
        .await;
    assert!(
        matches!(again, Err(BackendError::TargetExists { .. })),
        "{again:?}"
    );
    let stopped = Arc::new(CopyProgress::default());
    stopped.cancel();
    let cut = share
        .copy_tree(&p(base, "src"), &p(base, "cut"), top, stopped)
        .await;
    assert!(
        matches!(cut, Err(BackendError::Cancelled { .. })),
        "{cut:?}"
    );
    // A symlink as the source is refused, not followed.
    let through = share
        .copy_tree(
            &p(base, "src/sub/out"),
            &p(base, "via"),
            top,
            Arc::default(),
        )
        .await;
    assert!(
        matches!(through, Err(BackendError::Symlink { .. })),
        "{through:?}"
    );
    assert!(!disk.join(base).join("via").exists());
}

/// Small files (the provisioner's records): exclusive create, exact read back, refusals
/// of what is not a regular file, a size bound on reading. `disk` as above.
pub async fn small_files_are_exclusive_and_bounded<S: Share>(
    share: &S,
    base: &str,
    disk: &std::path::Path,
) {
    use nfs3_provisioner::backend::Written;
    use std::os::unix::fs::PermissionsExt;
    share.create_dir(&p(base, "files"), RWX).await.unwrap();
    let f = p(base, "files/record");
    assert_eq!(share.read_file(&f, 1024).await.unwrap(), None);
    // Larger than one READ/WRITE chunk, so both loops go round.
    let body: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        share.write_file(&f, &body, 0o600).await.unwrap(),
        Written::Created
    );
    assert_eq!(share.read_file(&f, 100_000).await.unwrap().unwrap(), body);
    let on_disk = std::fs::metadata(disk.join(base).join("files/record")).unwrap();
    assert_eq!(on_disk.permissions().mode() & 0o777, 0o600);
    // A second writer finds it and changes nothing.
    assert_eq!(
        share.write_file(&f, b"other", 0o600).await.unwrap(),
        Written::Existed
    );
    assert_eq!(share.read_file(&f, 100_000).await.unwrap().unwrap(), body);
    assert!(matches!(
        share.read_file(&f, 1000).await,
        Err(BackendError::TooLarge { .. })
    ));
    // Removed like any entry.
    assert_eq!(
        share.remove_tree(&f).await.unwrap(),
        Removed::Removed { entries: 1 }
    );
    assert_eq!(share.read_file(&f, 1024).await.unwrap(), None);
    // Not a file, or a link to one: refused, never followed.
    assert!(matches!(
        share.read_file(&p(base, "files"), 1024).await,
        Err(BackendError::NotAFile { .. })
    ));
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        disk.join(base).join("files/link"),
    )
    .unwrap();
    assert!(matches!(
        share.read_file(&p(base, "files/link"), 1024).await,
        Err(BackendError::Symlink { .. })
    ));
    assert_eq!(
        share
            .write_file(&p(base, "files/link"), b"x", 0o600)
            .await
            .unwrap(),
        Written::Existed
    );
    assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
    // The parent must exist.
    assert!(
        share
            .write_file(&p(base, "nowhere/record"), b"x", 0o600)
            .await
            .is_err()
    );
}

/// Usage counts what the volume holds and nothing a link points to: not a directory
/// outside, not the volume again through a loop. `disk` as above.
pub async fn usage_never_follows_symlinks<S: Share>(share: &S, base: &str, disk: &std::path::Path) {
    use nfs3_provisioner::backend::Pace;
    use std::fs;
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("huge"), vec![7u8; 4 << 20]).unwrap();
    let vol = disk.join(base).join("usage");
    fs::create_dir_all(vol.join("a/b/c")).unwrap();
    fs::create_dir_all(vol.join("many")).unwrap();
    fs::create_dir_all(vol.join("empty")).unwrap();
    fs::write(vol.join("a/b/c/deep"), b"deep").unwrap();
    fs::write(vol.join("big"), vec![1u8; 1 << 20]).unwrap();
    // Several READDIRPLUS pages, and subdirectories between them.
    for i in 0..700 {
        fs::write(vol.join(format!("many/file-{i:04}")), b"0123456789").unwrap();
        if i % 100 == 0 {
            fs::create_dir(vol.join(format!("many/sub-{i:04}"))).unwrap();
            fs::write(vol.join(format!("many/sub-{i:04}/x")), b"x").unwrap();
        }
    }
    std::os::unix::fs::symlink(outside.path(), vol.join("link-out")).unwrap();
    std::os::unix::fs::symlink(".", vol.join("a/loop")).unwrap();
    std::os::unix::fs::symlink("../..", vol.join("a/b/up")).unwrap();

    let u = share
        .usage(&p(base, "usage"), &Pace::unlimited())
        .await
        .unwrap()
        .expect("the volume exists");
    // a, a/b, a/b/c, many, 7 × many/sub-*, empty.
    assert_eq!(u.dirs, 12, "{u:?}");
    // deep, big, 700 + 7 files in many, three links.
    assert_eq!(u.files, 1 + 1 + 707 + 3, "{u:?}");
    assert_eq!(u.unreadable, 0, "{u:?}");
    let data = (1 << 20) + 7000 + 7 + 4;
    assert!(u.apparent_bytes >= data, "{u:?}");
    // The 4 MiB outside were never reached.
    assert!(u.apparent_bytes < data + (1 << 20), "{u:?}");
    assert!(u.bytes >= 1 << 20 && u.bytes < 4 << 20, "{u:?}");
    assert!(u.calls > 1, "{u:?}");

    assert_eq!(
        share
            .usage(&p(base, "no-such-volume"), &Pace::unlimited())
            .await
            .unwrap(),
        None
    );
    std::os::unix::fs::symlink(outside.path(), disk.join(base).join("usage-link")).unwrap();
    assert!(matches!(
        share
            .usage(&p(base, "usage-link"), &Pace::unlimited())
            .await,
        Err(BackendError::Symlink { .. })
    ));
}

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

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

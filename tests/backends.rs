//! The storage backends against the same behaviour: `mounted` on a local directory,
//! `nfs3` against a real NFS server (nfs-ganesha) whose exported directory the test
//! inspects and plants on disk.

mod common;

use std::time::Duration;

use common::conformance;
use common::conformance::RWX;
use nfs3_provisioner::backend::mounted::MountedShare;
use nfs3_provisioner::backend::nfs3::{Nfs3Options, Nfs3Share};
use nfs3_provisioner::backend::{BackendError, Share, Target};
use nfs3_provisioner::path::RelPath;

fn nfs_share(share: &str, opts: Nfs3Options) -> Nfs3Share {
    let target = Target {
        server: common::nfs().server.clone(),
        share: share.to_string(),
        port: None,
        mount_port: None,
    };
    Nfs3Share::new(target, opts)
}

fn export1() -> Nfs3Share {
    let env = common::nfs();
    nfs_share(env.export1.to_str().unwrap(), Nfs3Options::default())
}

#[tokio::test]
async fn mounted_backend_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let share = MountedShare::new(dir.path().to_path_buf());
    conformance::create_is_idempotent_and_applies_attrs(&share, "t").await;
    conformance::remove_and_rename_are_idempotent(&share, "t").await;
    conformance::space_is_reported(&share).await;
    conformance::removal_never_follows_symlinks(&share, "t", dir.path()).await;
    conformance::small_files_are_exclusive_and_bounded(&share, "t", dir.path()).await;
    conformance::usage_never_follows_symlinks(&share, "t", dir.path()).await;
}

#[tokio::test]
async fn mounted_backend_copies_trees() {
    let dir = tempfile::tempdir().unwrap();
    let share = MountedShare::new(dir.path().to_path_buf());
    conformance::copy_is_faithful_and_never_follows(&share, "c", dir.path(), true).await;
}

#[tokio::test]
async fn nfs3_backend_copies_trees() {
    let share = export1();
    let scratch = common::scratch(&common::nfs().export1, "copy");
    std::fs::create_dir(&scratch.path).unwrap();
    let disk = &common::nfs().export1;
    conformance::copy_is_faithful_and_never_follows(&share, &scratch.name, disk, false).await;
}

#[tokio::test]
async fn nfs3_backend_conformance() {
    let share = export1();
    let scratch = common::scratch(&common::nfs().export1, "backend");
    let base = scratch.name.clone();
    conformance::create_is_idempotent_and_applies_attrs(&share, &base).await;
    conformance::remove_and_rename_are_idempotent(&share, &base).await;
    conformance::space_is_reported(&share).await;
    conformance::removal_never_follows_symlinks(&share, &base, &common::nfs().export1).await;
    conformance::small_files_are_exclusive_and_bounded(&share, &base, &common::nfs().export1).await;
    conformance::usage_never_follows_symlinks(&share, &base, &common::nfs().export1).await;
    share
        .remove_tree(&RelPath::parse(&base).unwrap())
        .await
        .unwrap();
    assert!(!common::nfs().export1.join(&base).exists());
}

fn on_host(server: &str, share: &str) -> Nfs3Share {
    let target = Target {
        server: server.into(),
        share: share.into(),
        port: None,
        mount_port: None,
    };
    Nfs3Share::new(target, Nfs3Options::default())
}

/// A host name reaches the same export as the address it resolves to: what is made
/// through one is seen through the other (and on disk); a name that does not resolve is
/// a `Resolve` error, not a connection to somewhere else.
#[tokio::test]
async fn nfs3_hostnames_are_resolved() {
    let env = common::nfs();
    let export = env.export1.to_str().unwrap();
    assert_eq!(
        env.server, "127.0.0.1",
        "the test server listens on loopback"
    );
    let (by_name, by_ip) = (on_host("localhost", export), on_host(&env.server, export));
    let scratch = common::scratch(&env.export1, "resolve");
    let at = |p: &str| RelPath::parse(&format!("{}/{p}", scratch.name)).unwrap();
    by_name.create_dir(&at("by-name"), RWX).await.unwrap();
    assert!(scratch.path.join("by-name").is_dir(), "made on the export");
    assert!(by_ip.stat(&at("by-name")).await.unwrap().is_some());
    by_ip.create_dir(&at("by-ip"), RWX).await.unwrap();
    let top = RelPath::parse(&scratch.name).unwrap();
    let mut seen = by_name.list(Some(&top)).await.unwrap();
    seen.sort();
    assert_eq!(seen, ["by-ip", "by-name"]);

    let err = on_host("no-such-host.invalid", "/x")
        .space()
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Resolve { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
}

#[tokio::test]
async fn nfs3_errors_say_what_is_wrong() {
    let missing = nfs_share("/no/such/export", Nfs3Options::default());
    let err = missing.space().await.unwrap_err();
    assert!(matches!(err, BackendError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("/no/such/export"), "{err}");

    // Nothing listens on this portmapper port: refused at once, with a hint.
    let opts = Nfs3Options {
        portmapper_port: 1,
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let err = nfs_share(common::nfs().export1.to_str().unwrap(), opts)
        .space()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("running"), "{err}");
}

/// Many callers at once share a bounded pool; every call completes and nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs3_concurrent_creates_and_removes() {
    let share = std::sync::Arc::new(nfs_share(
        common::nfs().export1.to_str().unwrap(),
        Nfs3Options {
            max_connections: 4,
            ..Default::default()
        },
    ));
    let scratch = common::scratch(&common::nfs().export1, "concurrent");
    let base = scratch.name.clone();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (share, dir) = (
            share.clone(),
            RelPath::parse(&format!("{base}/ns/d{i}")).unwrap(),
        );
        tasks.push(tokio::spawn(
            async move { share.create_dir(&dir, RWX).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let on_disk = std::fs::read_dir(common::nfs().export1.join(&base).join("ns"))
        .unwrap()
        .count();
    assert_eq!(on_disk, 64);
    share
        .remove_tree(&RelPath::parse(&base).unwrap())
        .await
        .unwrap();
    assert!(!common::nfs().export1.join(&base).exists());
}

/// A server that stops answering: calls fail within the timeout instead of hanging.
#[tokio::test]
async fn nfs3_calls_time_out_on_a_hung_server() {
    // A listener that accepts and never answers stands in for a hung server.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hung.local_addr().unwrap().port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let target = Target {
        server: "127.0.0.1".into(),
        share: common::nfs().export1.to_str().unwrap().into(),
        port: Some(port),
        mount_port: Some(port),
    };
    let share = Nfs3Share::new(
        target,
        Nfs3Options {
            timeout: Duration::from_millis(500),
            ..Default::default()
        },
    );
    let started = std::time::Instant::now();
    let err = share.space().await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    keep.abort();
}

/// Clone throughput against the server's own `cp -a` of the same trees: 10 000 files of
/// 1 KiB in 100 directories, and one 200 MB file. Run by hand (it writes about 1 GB):
/// `cargo test --test backends -- --ignored --nocapture copy_throughput`.
#[tokio::test]
#[ignore]
async fn nfs3_copy_throughput() {
    use nfs3_provisioner::backend::{CopyProgress, DirAttrs};
    use std::sync::Arc;
    use std::time::Instant;
    let export = &common::nfs().export1;
    let scratch = common::scratch(export, "throughput");
    let small = scratch.path.join("small");
    for d in 0..100 {
        let dir = small.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f:03}")), vec![b'a'; 1024]).unwrap();
        }
    }
    let big = scratch.path.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(big.join("blob")).unwrap();
        for _ in 0..200 {
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let sync = || {
        std::process::Command::new("sync").status().unwrap();
    };
    sync();
    let top = DirAttrs {
        mode: 0o755,
        uid: None,
        gid: None,
        stamp: Some((1_000_000_000, 1)),
    };
    let share = export1();
    for (what, files, bytes) in [
        ("small", 10_000u64, 10_000u64 * 1024),
        ("big", 1, 200 << 20),
    ] {
        let started = Instant::now();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(scratch.path.join(what))
            .arg(scratch.path.join(format!("{what}-cp")))
            .status()
            .unwrap();
        assert!(status.success());
        let cp = started.elapsed().as_secs_f64();
        sync();
        let cp_sync = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let copied = share
            .copy_tree(
                &RelPath::parse(&format!("{}/{what}", scratch.name)).unwrap(),
                &RelPath::parse(&format!("{}/{what}-nfs", scratch.name)).unwrap(),
                top,
                Arc::new(CopyProgress::default()),
            )
            .await
            .unwrap();
        let nfs = started.elapsed().as_secs_f64();
        assert_eq!(copied.files, files);
        assert_eq!(copied.bytes, bytes);
        let mb = bytes as f64 / 1e6;
        eprintln!(
            "{what}: {files} files, {mb:.1} MB | NFSv3 copy_tree {nfs:.2} s = {:.1} MB/s, {:.0} files/s | cp -a {cp:.2} s = {:.1} MB/s, {:.0} files/s (with sync {cp_sync:.2} s)",
            mb / nfs,
            files as f64 / nfs,
            mb / cp,
            files as f64 / cp,
        );
    }
}

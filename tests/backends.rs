//! The storage backends against the same behaviour: `mounted` on a local directory,
//! `nfs3` against a real NFS server (nfs-ganesha) whose exported directory the test
//! inspects and plants on disk.

mod common;

use std::time::Duration;

use common::conformance;
use nfs3_provisioner::backend::mounted::MountedShare;
use nfs3_provisioner::backend::nfs3::{Nfs3Options, Nfs3Share};
use nfs3_provisioner::backend::{BackendError, DirAttrs, Share, Target};
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
}

#[tokio::test]
async fn nfs3_backend_conformance() {
    let share = export1();
    let base = common::unique("backend");
    conformance::create_is_idempotent_and_applies_attrs(&share, &base).await;
    conformance::remove_and_rename_are_idempotent(&share, &base).await;
    conformance::space_is_reported(&share).await;
    conformance::removal_never_follows_symlinks(&share, &base, &common::nfs().export1).await;
    share
        .remove_tree(&RelPath::parse(&base).unwrap())
        .await
        .unwrap();
    assert!(!common::nfs().export1.join(&base).exists());
}

#[tokio::test]
async fn nfs3_hostnames_are_resolved() {
    let env = common::nfs();
    let target = Target {
        server: "localhost".into(),
        share: env.export1.to_str().unwrap().into(),
        port: None,
        mount_port: None,
    };
    let share = Nfs3Share::new(target, Nfs3Options::default());
    share
        .space()
        .await
        .expect("localhost resolves to the loopback server");
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

    let target = Target {
        server: "no-such-host.invalid".into(),
        share: "/x".into(),
        port: None,
        mount_port: None,
    };
    let err = Nfs3Share::new(target, Nfs3Options::default())
        .space()
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Resolve { .. }), "{err:?}");
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
    let base = common::unique("concurrent");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (share, dir) = (
            share.clone(),
            RelPath::parse(&format!("{base}/ns/d{i}")).unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            share
                .create_dir(
                    &dir,
                    DirAttrs {
                        mode: 0o777,
                        uid: None,
                        gid: None,
                        stamp: None,
                    },
                )
                .await
        }));
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

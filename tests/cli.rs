//! The operator commands, run as a user would run them, against the real NFS server.

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nfs3-provisioner"))
}

#[test]
fn check_passes_on_a_healthy_export_and_leaves_nothing_behind() {
    let env = common::nfs();
    let before: Vec<_> = std::fs::read_dir(&env.export2)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let out = bin()
        .args([
            "check",
            "--server",
            &env.server,
            "--share",
            env.export2.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "mount and FSSTAT",
        "create a directory",
        "chmod and chown",
        "rename it",
        "remove it",
        "all checks passed",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
    assert!(text.contains("free of"), "space is reported:\n{text}");
    let probes: Vec<_> = std::fs::read_dir(&env.export2)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !before.contains(n) && n.to_string_lossy().contains("nfs3-provisioner-check"))
        .collect();
    assert!(probes.is_empty(), "probe directories left: {probes:?}");
}

#[test]
fn check_explains_a_missing_export_and_fails() {
    let env = common::nfs();
    let out = bin()
        .args([
            "check",
            "--server",
            &env.server,
            "--share",
            "/no/such/export",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("FAIL") && text.contains("/no/such/export"),
        "{text}"
    );
    assert!(
        text.contains("no such export"),
        "the hint names the likely cause:\n{text}"
    );
}

#[test]
fn check_explains_an_unreachable_server() {
    common::nfs();
    let out = bin()
        .args([
            "check",
            "--server",
            "127.0.0.1",
            "--share",
            "/x",
            "--portmapper-port",
            "1",
            "--nfs-timeout-seconds",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("FAIL"), "{text}");
}

#[test]
fn bad_flags_are_refused_with_usage() {
    let out = bin().args(["run", "--backend", "nfs4"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nfs4") && err.contains("nfs3"), "{err}");
}

//! What the integration tests share: the real NFS server and, for the end-to-end tests,
//! the real control plane, both started by the scripts in `tests/e2e/`.
#![allow(dead_code)] // each test crate uses its own part of this module

pub mod cluster;
pub mod conformance;
pub mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct NfsEnv {
    pub server: String,
    pub export1: PathBuf,
    pub export2: PathBuf,
    /// Small tmpfs filesystems of their own (64 and 128 MiB) where the machine lets
    /// `nfs.sh` mount them, plain directories otherwise.
    pub export4: PathBuf,
    pub export5: PathBuf,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a script under `tests/e2e/` and returns its stdout; a failure stops the test
/// with the script's own explanation.
pub fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new(repo().join("tests/e2e").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run tests/e2e/{name}: {e}"));
    assert!(
        out.status.success(),
        "tests/e2e/{name} {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `export K=V` lines into pairs.
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.trim_matches(|c| c == '"' || c == '\'').to_string(),
            )
        })
        .collect()
}

fn lookup(env: &[(String, String)], key: &str) -> String {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{key} missing from the script's env output"))
}

/// The NFS server, started once per test binary (`nfs.sh up` is idempotent and
/// serialised, so parallel test binaries share one server).
pub fn nfs() -> &'static NfsEnv {
    static ENV: OnceLock<NfsEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        script("nfs.sh", &["up"]);
        let env = parse_env(&script("nfs.sh", &["env"]));
        NfsEnv {
            server: lookup(&env, "NFS_SERVER"),
            export1: lookup(&env, "NFS_EXPORT1").into(),
            export2: lookup(&env, "NFS_EXPORT2").into(),
            export4: lookup(&env, "NFS_EXPORT4").into(),
            export5: lookup(&env, "NFS_EXPORT5").into(),
        }
    })
}

/// A directory name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A name of the test's own below an export (the test makes the directory); whatever is
/// there is removed when the test ends, passed or failed.
pub struct Scratch {
    pub name: String,
    pub path: PathBuf,
}

pub fn scratch(export: &Path, prefix: &str) -> Scratch {
    let name = unique(prefix);
    Scratch {
        path: export.join(&name),
        name,
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

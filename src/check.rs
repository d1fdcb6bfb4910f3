//! The `check` command: can this provisioner work on that share? It goes through every
//! operation provisioning and reclaim use, on a probe directory, and says what failed.

use std::process::ExitCode;

use crate::backend::nfs3::Nfs3Share;
use crate::backend::{BackendError, DirAttrs, Share, Target};
use crate::config::CheckArgs;
use crate::error::BoxError;
use crate::path::{RelPath, normalize_share};
use crate::units::human_size;

pub async fn check(args: CheckArgs) -> Result<ExitCode, BoxError> {
    let share = normalize_share(&args.share).map_err(|e| format!("share {:?}: {e}", args.share))?;
    let target = Target {
        server: args.server.clone(),
        share,
        port: None,
        mount_port: None,
    };
    let nfs = Nfs3Share::new(target.clone(), args.nfs.options());
    println!(
        "checking {target} over NFSv3 (uid {}, gid {})",
        args.nfs.auth_uid, args.nfs.auth_gid
    );
    let ok = probe(&nfs).await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report<T>(what: &str, r: &Result<T, BackendError>) -> bool {
    match r {
        Ok(_) => println!("  ok    {what}"),
        Err(e) => println!("  FAIL  {what}: {e}"),
    }
    r.is_ok()
}

/// Runs the probe on any share; true when every step worked.
pub async fn probe<S: Share>(share: &S) -> bool {
    let space = share.space().await;
    if !report("mount and FSSTAT", &space) {
        return false;
    }
    if let Ok(s) = space {
        println!(
            "        space: {} free of {} ({} available to this uid)",
            human_size(s.free_bytes),
            human_size(s.total_bytes),
            human_size(s.avail_bytes)
        );
    }
    let listed = share.list(None).await;
    if !report("list the share root (READDIRPLUS)", &listed) {
        return false;
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (Ok(dir), Ok(renamed)) = (
        RelPath::parse(&format!(".nfs3-provisioner-check-{id}")),
        RelPath::parse(&format!(".nfs3-provisioner-check-{id}-renamed")),
    ) else {
        return false;
    };
    // One create does what provisioning does: make the directory, then chmod, chown and
    // stamp it in one SETATTR.
    let stamp = (1_000_000_000, 0);
    let mut ok = report(
        "create a directory, chmod and chown it, set its mtime",
        &share
            .create_dir(
                &dir,
                DirAttrs {
                    mode: 0o777,
                    uid: Some(65534),
                    gid: Some(65534),
                    stamp: Some(stamp),
                },
            )
            .await,
    );
    if ok {
        let st = share.stat(&dir).await;
        if let Ok(Some(st)) = &st
            && (st.uid != 65534 || st.mode & 0o777 != 0o777)
        {
            println!(
                "  FAIL  attributes did not stick (uid {}, mode {:o}): is root squashed?",
                st.uid,
                st.mode & 0o7777
            );
            ok = false;
        } else if let Ok(Some(st)) = &st
            && st.mtime.0 != stamp.0
        {
            println!(
                "  FAIL  the modification time did not stick (got {}): retries after a crash will refuse their own directory",
                st.mtime.0
            );
            ok = false;
        }
        ok &= report("rename it (archive)", &share.rename(&dir, &renamed).await);
        ok &= report("remove it (delete)", &share.remove_tree(&renamed).await);
        // Whatever failed above, leave nothing behind.
        let _ = share.remove_tree(&dir).await;
    }
    println!(
        "{}",
        if ok {
            "all checks passed"
        } else {
            "some checks failed"
        }
    );
    ok
}

//! The `run` command: connect to the cluster, serve health and metrics, and run the
//! controllers, only while holding the Lease when leader election is on.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Reporter;
use tracing::{info, warn};

use crate::backend::{BackendConfig, Share, Shares, Target};
use crate::config::{BackendKind, RunArgs};
use crate::controller::{self, Context};
use crate::http::{self, Readiness};
use crate::leader;
use crate::metrics;
use crate::params::Defaults;
use crate::path::normalize_share;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub async fn run(args: RunArgs) -> Result<ExitCode, BoxError> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let defaults = Defaults {
        server: args.nfs_server.clone(),
        share: args.nfs_path.clone(),
    };
    let default_target = default_target(&defaults)?;
    let backend = match args.backend {
        BackendKind::Nfs3 => BackendConfig::Nfs3(args.nfs.options()),
        BackendKind::Mounted => BackendConfig::Mounted {
            root: args.mount_root.clone(),
            served: default_target.clone(),
        },
    };
    let ready = Arc::new(Readiness::default());
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("nfs3-provisioner-{}", uuid::Uuid::new_v4()));
    info!(provisioner = args.provisioner_name, identity, backend = ?args.backend, "starting");

    let http_ready = ready.clone();
    let addr = args.http_addr;
    tokio::spawn(async move {
        if let Err(e) = http::serve(addr, http_ready).await {
            warn!(error = %e, %addr, "health and metrics server failed");
        }
    });
    tokio::spawn(watch_default_share(
        Shares::new(backend.clone()),
        default_target,
        ready.clone(),
    ));

    let make_ctx = {
        let (client, args, defaults) = (client.clone(), args.clone(), defaults.clone());
        move |backend: BackendConfig| {
            let (client, args, defaults) = (client.clone(), args.clone(), defaults.clone());
            move |classes, volumes| {
                Context::new(
                    client,
                    Reporter {
                        controller: "nfs3-provisioner".into(),
                        instance: Some(identity_of(&args)),
                    },
                    args.provisioner_name.clone(),
                    defaults,
                    Shares::new(backend),
                    classes,
                    volumes,
                )
            }
        }
    };

    if !args.leader_elect {
        metrics::set_leader(true);
        controller::run(
            client,
            make_ctx(backend),
            args.concurrency,
            ready,
            shutdown_signal(),
        )
        .await;
        return Ok(ExitCode::SUCCESS);
    }

    let lease = leader::Lease {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: identity.clone(),
        duration_seconds: args.lease_duration_seconds,
    };
    let mut leading = leader::elect(client.clone(), &lease)
        .await
        .map_err(|e| format!("leader election: {e}"))?;
    // A standby is healthy and ready to take over; only the holder works.
    ready.set_synced(true);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        metrics::set_leader(false);
        tokio::select! {
            _ = &mut stop => break,
            changed = leading.wait_for(|held| *held) => {
                if changed.is_err() {
                    return Err("leader election stopped".into());
                }
            }
        }
        info!(lease = lease.name, "acquired the lease; acting");
        metrics::set_leader(true);
        ready.set_synced(false);
        let mut lost = leading.clone();
        let lost = async move {
            let _ = lost.wait_for(|held| !*held).await;
        };
        let work = controller::run(
            client.clone(),
            make_ctx(backend.clone()),
            args.concurrency,
            ready.clone(),
            std::future::pending(),
        );
        tokio::select! {
            _ = work => {}
            // Dropping the controllers aborts their reconciles at once: another replica
            // may already act, and every step is idempotent if it repeats one.
            _ = lost => warn!("lost the lease; stopped acting"),
            _ = &mut stop => break,
        }
        ready.set_synced(true);
    }
    info!("shutting down");
    Ok(ExitCode::SUCCESS)
}

fn identity_of(args: &RunArgs) -> String {
    args.pod_name
        .clone()
        .unwrap_or_else(|| "nfs3-provisioner".into())
}

fn default_target(defaults: &Defaults) -> Result<Option<Target>, BoxError> {
    match (&defaults.server, &defaults.share) {
        (Some(server), Some(share)) => Ok(Some(Target {
            server: server.clone(),
            share: normalize_share(share).map_err(|e| format!("NFS_PATH {share:?}: {e}"))?,
            port: None,
            mount_port: None,
        })),
        _ => Ok(None),
    }
}

/// Keeps `/readyz` honest about the default share, checked every 30 s.
async fn watch_default_share(shares: Shares, target: Option<Target>, ready: Arc<Readiness>) {
    let Some(target) = target else {
        ready.no_share_to_check();
        return;
    };
    loop {
        let ok = match shares.get(&target) {
            Ok(share) => match share.space().await {
                Ok(_) => true,
                Err(e) => {
                    warn!(share = %target, error = %e, "default share not reachable");
                    false
                }
            },
            Err(e) => {
                warn!(share = %target, error = %e, "default share not usable");
                false
            }
        };
        ready.set_share(ok);
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    info!("signal received; finishing work under way");
}

//! The `run` command: connect to the cluster, serve health and metrics, and run the
//! controllers, only while holding the Lease when leader election is on.
//!
//! On SIGTERM or SIGINT no new work is taken, reconciles under way may finish for
//! `--shutdown-timeout-seconds`, then the Lease is released (so a standby takes over
//! at its next poll, about a second) and the process exits. A holder that cannot renew
//! within the renew deadline stops its controllers at once and competes again.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backend::{BackendConfig, Share, Shares, Target};
use crate::config::{BackendKind, RunArgs};
use crate::controller::{self, Context, UsageScan};
use crate::error::BoxError;
use crate::health::{Readiness, Role};
use crate::http;
use crate::leader::{ElectorThread, LeaseConfig, State};
use crate::metrics;
use crate::params::Defaults;
use crate::path::normalize_share;

pub async fn run(args: RunArgs) -> Result<ExitCode, BoxError> {
    // Listening on the signals from the start: a SIGTERM that comes while we connect
    // must not kill the process with the default action.
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let defaults = Defaults {
        server: args.nfs_server.clone(),
        share: args.nfs_path.clone(),
    };
    let default_target = default_target(&defaults)?;
    let adoption = args.adopt.adoption()?;
    if let Some(a) = &adoption {
        info!(adopted = ?a.provisioners, server = a.server, share = a.share, "reclaiming the released volumes of the adopted provisioners");
    }
    let backend = match args.backend {
        BackendKind::Nfs3 => BackendConfig::Nfs3(args.nfs.options()),
        BackendKind::Mounted => BackendConfig::Mounted {
            root: args.mount_root.clone(),
            served: default_target.clone(),
        },
    };
    let role = if args.leader_elect {
        Role::Standby
    } else {
        Role::Single
    };
    let ready = Arc::new(Readiness::new(role));
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("nfs3-provisioner-{}", uuid::Uuid::new_v4()));
    info!(provisioner = args.provisioner_name, identity, backend = ?args.backend, "starting");

    let listener = http::bind(args.http_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.http_addr))?;
    tokio::spawn(http::serve(listener, ready.clone()));
    tokio::spawn(watch_default_share(
        Shares::new(backend.clone()),
        default_target.clone(),
        ready.clone(),
    ));

    let usage_scan = (!args.usage_scan_interval.is_zero()).then(|| UsageScan {
        interval: args.usage_scan_interval,
        calls_per_second: args.usage_scan_calls_per_second,
        backend: UsageScan::own_backend(&backend),
        shares: default_target.iter().cloned().collect(),
    });
    let make_ctx = {
        let (client, args, defaults) = (client.clone(), args.clone(), defaults.clone());
        move |backend: BackendConfig| {
            let (client, args, defaults) = (client.clone(), args.clone(), defaults.clone());
            let adoption = adoption.clone();
            let usage_scan = usage_scan.clone();
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
                .with_adoption(adoption)
                .with_max_clones(args.max_concurrent_clones)
                .with_archive_retention_interval(args.archive_retention_interval)
                .with_usage_scan(usage_scan.clone())
            }
        }
    };
    let drain_limit = Duration::from_secs(args.shutdown_timeout_seconds);
    let start_controllers = || {
        let (drain_tx, drain_rx) = watch::channel(false);
        let work = controller::run(
            client.clone(),
            make_ctx(backend.clone()),
            args.concurrency,
            ready.clone(),
            drained_on(drain_rx),
        );
        (work, drain_tx)
    };

    if !args.leader_elect {
        metrics::set_leader(true);
        let (work, drain) = start_controllers();
        tokio::pin!(work);
        tokio::select! {
            _ = &mut work => return Err("the controllers stopped on their own".into()),
            _ = &mut stop => {}
        }
        let _ = drain.send(true);
        finish(work, drain_limit).await;
        metrics::set_leader(false);
        info!("shutting down");
        return Ok(ExitCode::SUCCESS);
    }

    let on_look = {
        let ready = ready.clone();
        move |holder: Option<&str>| ready.lease_read(holder)
    };
    let mut elector = ElectorThread::spawn(
        LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(args.lease_duration_seconds),
        },
        on_look,
    )
    .map_err(|e| format!("cannot start leader election: {e}"))?;
    info!(lease = args.lease_name, timing = ?elector.timing(), "competing for the Lease");
    let mut failed = None;
    loop {
        metrics::set_leader(false);
        ready.set_role(Role::Standby);
        let mut state = elector.state.clone();
        let term = tokio::select! {
            _ = &mut stop => break,
            r = state.wait_for(|s| matches!(s, State::Leading(_))) => match r.map(|s| *s) {
                Ok(State::Leading(term)) => term,
                _ => {
                    failed = Some("leader election stopped");
                    break;
                }
            },
        };
        info!(lease = args.lease_name, "holding the Lease; acting");
        ready.set_role(Role::Leader);
        metrics::set_leader(true);
        let (work, drain) = start_controllers();
        // Boxed, not pinned on the stack, so that dropping it really ends it.
        let mut work = Box::pin(work);
        let mut state = elector.state.clone();
        let lost = async move {
            let _ = state.wait_for(|s| *s != State::Leading(term)).await;
        };
        tokio::pin!(lost);
        // Biased: when the process gets the CPU back after a stall, a lost Lease is
        // seen before the controllers take one more step.
        let outcome = tokio::select! {
            biased;
            _ = &mut lost => Outcome::Lost,
            _ = &mut stop => {
                let _ = drain.send(true);
                // The elector keeps renewing while reconciles finish: the Lease must
                // not lapse under work that is still writing.
                tokio::select! {
                    biased;
                    _ = &mut lost => Outcome::LostWhileDraining,
                    _ = finish(&mut work, drain_limit) => Outcome::Exit,
                }
            }
            _ = &mut work => Outcome::Stopped,
        };
        // Dropping the controllers aborts whatever still runs: once the Lease is not
        // ours another replica may act, and every step is idempotent if it repeats one.
        drop(work);
        metrics::set_leader(false);
        match outcome {
            Outcome::Lost => {
                warn!("stopped acting; competing again");
                continue;
            }
            Outcome::LostWhileDraining => warn!("lost the Lease while finishing work"),
            Outcome::Exit => {}
            Outcome::Stopped => failed = Some("the controllers stopped on their own"),
        }
        break;
    }
    match elector.release().await {
        Ok(true) => info!(lease = args.lease_name, "released the Lease"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "could not release the Lease; it expires on its own"),
    }
    if let Some(why) = failed {
        return Err(why.into());
    }
    info!("shutting down");
    Ok(ExitCode::SUCCESS)
}

/// How one term as leader ended.
#[derive(Debug)]
enum Outcome {
    /// Renewal failed or another replica holds the Lease: stop at once.
    Lost,
    LostWhileDraining,
    /// Asked to exit, reconciles finished (or their time ran out).
    Exit,
    Stopped,
}

async fn drained_on(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Waits for the controllers to finish the reconciles under way, for at most `limit`.
async fn finish(work: impl std::future::Future<Output = ()>, limit: Duration) {
    let started = std::time::Instant::now();
    match tokio::time::timeout(limit, work).await {
        Ok(()) => info!(took = ?started.elapsed(), "work under way finished"),
        Err(_) => warn!(
            ?limit,
            "work still under way at the shutdown deadline; leaving it (each step can be repeated)"
        ),
    }
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

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, BoxError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "signal received; finishing work under way");
    })
}

//! Wiring: the shared [`Context`], and [`run`], which starts the caches ([`cache`]) and
//! the two controllers: one provisions claims ([`provision`]) and grows bound ones
//! ([`expand`]), one reclaims released volumes ([`reclaim`]). Events are in [`events`],
//! retries and backoff in [`retry`]; the background usage scan in [`usage`].

mod adopt;
mod archives;
mod cache;
pub mod cached_volume;
mod clone;
mod directories;
mod events;
mod expand;
mod placement;
mod provision;
mod reclaim;
mod restore;
mod retention;
mod retry;
mod usage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::info;

use crate::backend::Shares;
use crate::params::Defaults;
use crate::plan::adopt::Adoption;
use cache::{CLAIM_PAGE_SIZE, Served, cached, streams_lists, strip, strip_claim, synced};
use cached_volume::CachedVolume;
pub(crate) use retry::Reclaimed;
use retry::error_policy;
pub use retry::{Error, backoff_delay};
pub use usage::UsageScan;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub provisioner: String,
    pub defaults: Defaults,
    pub shares: Shares,
    pub classes: Store<StorageClass>,
    pub volumes: Store<CachedVolume>,
    /// Another provisioner's volumes reclaimed as it would have (`--adopt-provisioned-by`).
    pub adoption: Option<Adoption>,
    directories: directories::Directories,
    /// Consecutive failures per object uid and when the last one was, for exponential
    /// backoff that never gives up. Entries of objects that stopped failing without
    /// succeeding (deleted meanwhile) are dropped after [`FAILURE_MEMORY`].
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// PV uids this process has just reclaimed, and how far. Deleting the PV brings one
    /// more event for it (deletion timestamp set, our finalizer still on) from before
    /// the finalizer went; this spares running the idempotent steps again for it.
    reclaimed: Mutex<HashMap<String, (Instant, Reclaimed)>>,
    /// The export chosen for each claim of a class over several exports.
    placements: placement::Placements,
    /// Clone copies under way, by claim uid (see [`clone`]).
    clones: clone::Clones,
    /// Pause between passes of archive retention.
    archive_retention_interval: std::time::Duration,
    /// The background usage scan (`usage.rs`), when it is on.
    usage_scan: Option<UsageScan>,
}

impl Context {
    pub fn new(
        client: Client,
        reporter: Reporter,
        provisioner: String,
        defaults: Defaults,
        shares: Shares,
        classes: Store<StorageClass>,
        volumes: Store<CachedVolume>,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            provisioner,
            defaults,
            shares,
            classes,
            volumes,
            adoption: None,
            directories: Default::default(),
            failures: Mutex::new(HashMap::new()),
            reclaimed: Mutex::new(HashMap::new()),
            placements: Default::default(),
            clones: clone::Clones::default(),
            archive_retention_interval: retention::DEFAULT_INTERVAL,
            usage_scan: None,
        }
    }

    /// How many clone copies may run at once.
    pub fn with_max_clones(mut self, max: usize) -> Self {
        self.clones = clone::Clones::new(max);
        self
    }
}

impl Context {
    pub fn with_archive_retention_interval(mut self, every: std::time::Duration) -> Self {
        self.archive_retention_interval = every;
        self
    }

    pub fn with_adoption(mut self, adoption: Option<Adoption>) -> Self {
        self.adoption = adoption;
        self
    }

    /// The provisioner names whose PVs the cache keeps whole: ours and the adopted ones.
    fn kept_whole(&self) -> Vec<String> {
        let mut names = vec![self.provisioner.clone()];
        if let Some(a) = &self.adoption {
            names.extend(a.provisioners.iter().cloned());
        }
        names
    }

    /// Turns the usage scan on (`Some`) for as long as the controllers run.
    pub fn with_usage_scan(mut self, scan: Option<UsageScan>) -> Self {
        self.usage_scan = scan;
        self
    }
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    ctx_parts: impl FnOnce(Store<StorageClass>, Store<CachedVolume>) -> Context,
    concurrency: u16,
    ready: Arc<crate::health::Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let streaming = streams_lists(&client).await;
    // Classes and PVs are made by the cluster's admins: listed from the API server's
    // cache, whole, unless it can stream them.
    let admin_made = || {
        if streaming {
            watcher::Config::default().streaming_lists()
        } else {
            watcher::Config::default().any_semantic()
        }
    };
    let (classes, class_events) = cached(
        Api::<StorageClass>::all(client.clone()),
        admin_made(),
        strip,
    );
    // The provisioner's name is in the context, made once the stores exist; the streams
    // run only after that. Until it is set, nothing is cut.
    let provisioner = Arc::new(std::sync::OnceLock::<Vec<String>>::new());
    let (volumes, volume_events) =
        cached(Api::<CachedVolume>::all(client.clone()), admin_made(), {
            let provisioner = provisioner.clone();
            move |pv: &mut CachedVolume| {
                strip(pv);
                if let Some(p) = provisioner.get() {
                    pv.strip_foreign(p);
                }
            }
        });
    let served = Arc::new(RwLock::new(Served::default()));
    // Claims are made by tenants, up to about 1.5 MB each: streamed one at a time where
    // the API server can, otherwise listed in small pages (the API server ignores page
    // sizes for lists from its cache); each is stripped before the next is read, so a
    // tenant's bloated claims never sit in memory together.
    let tenant_made = if streaming {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default().page_size(CLAIM_PAGE_SIZE)
    };
    let (claims, claim_events) = cached(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        tenant_made,
        {
            let served = served.clone();
            move |pvc: &mut PersistentVolumeClaim| {
                strip_claim(pvc, &served.read().unwrap_or_else(|p| p.into_inner()));
            }
        },
    );
    let ctx = Arc::new(ctx_parts(classes.clone(), volumes.clone()));
    let _ = provisioner.set(ctx.kept_whole());
    // Stops with this function, or when its future is dropped (the Lease lost).
    let _usage_scan = usage::start(ctx.clone());
    let config = ControllerConfig::default().concurrency(concurrency);

    // A new or changed class may make waiting claims provisionable: look at all again.
    // The store already holds the change when its event comes through here.
    let class_changed = class_events.filter_map({
        let (classes, provisioner) = (classes.clone(), ctx.provisioner.clone());
        move |r| {
            if r.is_ok() {
                served
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .update(&classes.state(), &provisioner);
            }
            async move { r.ok().map(|_| ()) }
        }
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let claims_ctl = Controller::for_stream(claim_events, claims.clone())
        .with_config(config.clone())
        .reconcile_all_on(class_changed)
        .graceful_shutdown_on(wait(shutdown_rx.clone()))
        .run(provision::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let volumes_ctl = Controller::for_stream(volume_events, volumes.clone())
        .with_config(config)
        .graceful_shutdown_on(wait(shutdown_rx))
        .run(reclaim::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});

    let (c1, v1, k1) = (classes.clone(), volumes.clone(), claims.clone());
    let readiness = tokio::spawn(async move {
        let (a, b, c) = tokio::join!(synced(&c1), synced(&v1), synced(&k1));
        if a.is_ok() && b.is_ok() && c.is_ok() {
            info!(
                classes = c1.state().len(),
                volumes = v1.state().len(),
                claims = k1.state().len(),
                "caches synced"
            );
            ready.set_synced(true);
        }
    });
    // Only while these controllers run: on the leader alone.
    let retention = tokio::spawn(retention::run(ctx.clone(), wait(shutdown_tx.subscribe())));
    let controllers = async { tokio::join!(claims_ctl, volumes_ctl) };
    tokio::pin!(controllers);
    tokio::select! {
        _ = &mut controllers => {}
        _ = shutdown => {
            // Stop taking new work and let reconciles under way finish.
            let _ = shutdown_tx.send(true);
            controllers.await;
        }
    }
    readiness.abort();
    retention.abort();
    info!("controllers stopped");
}

/// Cuts `s` to at most `max` bytes, at a character boundary; true if it cut.
pub(crate) fn cut_to(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    true
}

pub(crate) fn name_of<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", obj.meta().name.as_deref().unwrap_or("")),
        None => obj.meta().name.clone().unwrap_or_default(),
    }
}

pub(crate) fn uid_of<K: ResourceExt>(obj: &K) -> String {
    obj.uid().unwrap_or_default()
}

// The reconcilers against a scripted API server, in src/controller/tests/.
#[cfg(test)]
mod tests {
    mod adopting;
    mod expanding;
    mod harness;
    mod placement;
    mod provisioning;
    mod reclaiming;
    mod restoring;
}

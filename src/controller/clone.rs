//! Clones: a claim whose `dataSource` names another claim gets its directory filled
//! with a copy of that claim's volume before its PV is created.
//!
//! The copy can take hours, so it does not hold the claim controller's worker: it runs
//! as a task of its own, one per claim uid, at most `--max-concurrent-clones` at once,
//! and the claim is requeued every few seconds until it is done. It copies into a
//! staging directory, `.nfs3-provisioner/clones/<claim uid>` at the share root, which
//! gets the claim's stamp last of all; only then is it renamed into place and the PV
//! created, so a half-filled volume is never bound. After a crash, a staging directory
//! with the stamp is whole and is renamed; one without is removed (the uid in its name
//! makes it ours) and the copy starts again. The source is checked against the API
//! server before the copy, every [`WATCH`] while it runs (a source claim or volume going
//! away stops it, and the staging directory is removed), and once more before the
//! rename, so a copy is only ever of a volume still bound to its claim when it finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::cached_volume::CachedVolume;
use super::{Context, Error, name_of, uid_of};
use crate::backend::metadata::metadata_dir;
use crate::backend::{
    AnyShare, BackendError, Copied, CopyProgress, DirAttrs, PARENT_MODE, Renamed, Share, stamped,
};
use crate::metrics;
use crate::path::RelPath;
use crate::plan::clone::{CloneRefusal, CloneSource, check_source, requested};
use crate::plan::record::Recorded;
use crate::plan::{PlanError, ProvisionPlan};

/// Where copies are staged, never a volume's directory: a subdirectory of the share's metadata directory (`path::METADATA_DIR`) for staging.
pub const CLONES: &str = "clones";
/// How often a running copy checks that its source and its claim are still there.
const WATCH: Duration = Duration::from_secs(5);
/// How often the claim of a running copy comes back to look at it.
const POLL: Duration = Duration::from_secs(2);
/// A finished copy nobody came back for (its claim deleted) is forgotten after this.
const FORGET: Duration = Duration::from_secs(3600);
/// Deadline of each API read made for a clone.
const API_DEADLINE: Duration = Duration::from_secs(20);

/// The copies under way or finished and not yet taken up, by claim uid.
pub struct Clones {
    limit: Arc<Semaphore>,
    tasks: Mutex<HashMap<String, Task>>,
}

struct Task {
    progress: Arc<CopyProgress>,
    started: Instant,
    handle: tokio::task::JoinHandle<Result<Copied, BackendError>>,
}

impl Clones {
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            limit: Arc::new(Semaphore::new(max_concurrent.max(1))),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for Clones {
    fn default() -> Self {
        Self::new(2)
    }
}

/// What the provision reconciler does next with a clone's claim.
enum Next {
    /// The directory holds the copy: make sure of it and create the PV.
    Ready,
    /// The copy runs (or waits for a slot): look again later.
    Poll,
    /// The source cannot be copied (any more): tell the user, try again later.
    Refused(String),
}

/// For a claim that names a source: `None` once its directory is in place (the caller
/// goes on to make sure of it and create the PV), otherwise what the reconcile returns.
pub(super) async fn fill(
    pvc: &PersistentVolumeClaim,
    volume: &ProvisionPlan,
    ctx: &Context,
) -> Result<Option<Action>, Error> {
    let Ok(Some(source)) = requested(pvc) else {
        return Ok(None);
    };
    let uid = uid_of(pvc);
    match step(pvc, volume, &source, &uid, ctx).await {
        Ok(Next::Ready) => Ok(None),
        Ok(Next::Poll) => Ok(Some(Action::requeue(POLL))),
        Ok(Next::Refused(why)) => {
            ctx.publish(pvc, EventType::Warning, "ProvisioningFailed", why)
                .await;
            metrics::provisioned(Duration::ZERO, false);
            // The source may yet be bound, or come back under the same name.
            Ok(Some(Action::requeue(ctx.backoff(&uid))))
        }
        Err(e) => Err(e),
    }
}

async fn step(
    pvc: &PersistentVolumeClaim,
    volume: &ProvisionPlan,
    source: &str,
    uid: &str,
    ctx: &Context,
) -> Result<Next, Error> {
    let share = ctx.shares.get(&volume.target)?;
    let stamp = volume.attrs.stamp;
    if let Some(st) = share.stat(&volume.directory).await? {
        if stamp.is_some_and(|s| stamped(s, st.mtime)) {
            // Renamed into place by an earlier attempt, which stopped before the PV.
            return Ok(Next::Ready);
        }
        return Ok(Next::Refused(
            PlanError::ExistingDirectory {
                path: volume.full_path(),
            }
            .to_string(),
        ));
    }
    let staging = staging_dir(uid)?;
    enum Found {
        Running,
        Finished(Task),
        Nothing,
    }
    let found = {
        let mut tasks = ctx.clones.lock();
        match tasks.get(uid) {
            Some(t) if !t.handle.is_finished() => {
                debug!(
                    claim = name_of(pvc),
                    entries = t.progress.entries(),
                    bytes = t.progress.bytes(),
                    "clone copy under way"
                );
                Found::Running
            }
            Some(_) => tasks.remove(uid).map_or(Found::Nothing, Found::Finished),
            None => Found::Nothing,
        }
    };
    let task = match found {
        Found::Running => return Ok(Next::Poll),
        Found::Nothing => return start(pvc, volume, source, uid, &share, &staging, ctx).await,
        Found::Finished(task) => task,
    };
    let took = task.started.elapsed();
    let result = task.handle.await.unwrap_or_else(|e| {
        Err(BackendError::Io {
            op: "copy",
            path: staging.to_string(),
            source: std::io::Error::other(e),
        })
    });
    match result {
        Ok(copied) => {
            if let Err(refusal) = current_source(pvc, source, volume, ctx).await? {
                // Gone or rebound while the copy ran: what was copied may be partial.
                discard(&share, &staging).await;
                return Ok(Next::Refused(PlanError::Clone(refusal).to_string()));
            }
            let secs = took.as_secs_f64().max(0.001);
            ctx.publish(
                pvc,
                EventType::Normal,
                "CloneCompleted",
                format!(
                    "copied claim {source:?}: {copied} in {:.1} s ({:.1} MB/s)",
                    took.as_secs_f64(),
                    copied.bytes as f64 / 1e6 / secs
                ),
            )
            .await;
            info!(claim = name_of(pvc), %copied, ?took, "clone copied");
            place(&share, &staging, volume).await
        }
        Err(e) => {
            warn!(claim = name_of(pvc), error = %e, "clone copy failed");
            discard(&share, &staging).await;
            if let Err(refusal) = current_source(pvc, source, volume, ctx).await? {
                return Ok(Next::Refused(PlanError::Clone(refusal).to_string()));
            }
            Err(e.into())
        }
    }
}

fn staging_dir(uid: &str) -> Result<RelPath, Error> {
    RelPath::metadata(&[CLONES, uid])
        .map_err(|e| Error::Refused(format!("cannot stage a clone for uid {uid:?}: {e}")))
}

/// Starts the copy, unless a whole one from before a restart is there already.
async fn start(
    pvc: &PersistentVolumeClaim,
    volume: &ProvisionPlan,
    source: &str,
    uid: &str,
    share: &AnyShare,
    staging: &RelPath,
    ctx: &Context,
) -> Result<Next, Error> {
    let from = match current_source(pvc, source, volume, ctx).await? {
        Ok(s) => s,
        Err(refusal) => {
            discard(share, staging).await;
            return Ok(Next::Refused(PlanError::Clone(refusal).to_string()));
        }
    };
    if let Some(st) = share.stat(staging).await? {
        if volume.attrs.stamp.is_some_and(|s| stamped(s, st.mtime)) {
            // Finished before a restart, not yet renamed: the stamp is set last.
            return place(share, staging, volume).await;
        }
        // Cut short by a crash: ours (the claim's uid names it), and started again.
        info!(claim = name_of(pvc), staging = %staging, "removing an unfinished clone copy");
        share.remove_tree(staging).await?;
    }
    metadata_dir(share, CLONES).await?;
    let progress = Arc::new(CopyProgress::default());
    let handle = tokio::spawn(run(
        Job {
            share: share.clone(),
            from,
            staging: staging.clone(),
            top: volume.attrs,
            progress: progress.clone(),
            client: ctx.client.clone(),
            volumes: ctx.volumes.clone(),
            claim: pvc.clone(),
            target: volume.target.clone(),
            provisioner: ctx.provisioner.clone(),
        },
        ctx.clones.limit.clone(),
    ));
    {
        let mut tasks = ctx.clones.lock();
        // Copies of claims deleted meanwhile stop by themselves and are never taken up.
        tasks.retain(|_, t| !t.handle.is_finished() || t.started.elapsed() < FORGET);
        let started = Instant::now();
        tasks.insert(
            uid.to_string(),
            Task {
                progress,
                started,
                handle,
            },
        );
    }
    ctx.publish(
        pvc,
        EventType::Normal,
        "CloneStarted",
        format!("copying the volume of claim {source:?} into a new volume"),
    )
    .await;
    Ok(Next::Poll)
}

fn parent_of(path: &RelPath) -> Option<RelPath> {
    let segments = path.parent_segments();
    if segments.is_empty() {
        return None;
    }
    RelPath::parse(&segments.join("/")).ok()
}

fn private_dir() -> DirAttrs {
    DirAttrs {
        mode: 0o700,
        uid: None,
        gid: None,
        stamp: None,
    }
}

/// Renames the whole copy into place (making the directory's parents first).
async fn place(share: &AnyShare, staging: &RelPath, volume: &ProvisionPlan) -> Result<Next, Error> {
    if let Some(parent) = parent_of(&volume.directory) {
        let attrs = DirAttrs {
            mode: PARENT_MODE,
            ..private_dir()
        };
        share.create_dir(&parent, attrs).await?;
    }
    match share.rename(staging, &volume.directory).await? {
        Renamed::Done | Renamed::AlreadyDone => Ok(Next::Ready),
        // Neither there: removed meanwhile; the next pass copies again.
        Renamed::SourceMissing => Ok(Next::Poll),
    }
}

async fn discard(share: &AnyShare, staging: &RelPath) {
    if let Err(e) = share.remove_tree(staging).await {
        warn!(staging = %staging, error = %e, "could not remove a clone's staging directory; the next attempt removes it");
    }
}

/// The source as the API server has it now, checked.
async fn current_source(
    pvc: &PersistentVolumeClaim,
    source: &str,
    volume: &ProvisionPlan,
    ctx: &Context,
) -> Result<Result<CloneSource, CloneRefusal>, Error> {
    look_up(
        &ctx.client,
        &ctx.volumes,
        pvc,
        source,
        &volume.target,
        &ctx.provisioner,
    )
    .await
}

/// The export a clone's source volume is on, so that a class over several exports puts
/// the clone there: copies are made within one share. `None` when the claim asks for no
/// clone or its source cannot be copied (or read) now; placement then goes on as for any
/// claim, and the clone's own checks explain a refusal.
pub(super) async fn source_export(
    pvc: &PersistentVolumeClaim,
    ctx: &Context,
) -> Option<crate::backend::Target> {
    let source = requested(pvc).ok().flatten()?;
    let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let claim = tokio::time::timeout(API_DEADLINE, claims.get_opt(&source))
        .await
        .ok()?
        .ok()??;
    let bound = claim.spec.as_ref()?.volume_name.clone()?;
    let pv = ctx.volumes.get(&ObjectRef::new(&bound))?.to_volume();
    let there = Recorded::from_pv(&pv).ok()?.target();
    // The same rules as the copy itself, checked on the source's own export.
    check_source(
        pvc,
        &source,
        Some(&claim),
        Some(&pv),
        &there,
        &ctx.provisioner,
    )
    .ok()
    .map(|s| s.target)
}

/// The source claim is read from the API server; its volume from the cache, which holds
/// our PVs whole (and the provisioner may not read single PVs).
async fn look_up(
    client: &kube::Client,
    volumes: &Store<CachedVolume>,
    pvc: &PersistentVolumeClaim,
    source: &str,
    target: &crate::backend::Target,
    provisioner: &str,
) -> Result<Result<CloneSource, CloneRefusal>, Error> {
    let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let deadline = |what: &str| {
        Error::Kube(kube::Error::Service(
            format!("no answer reading {what} within {API_DEADLINE:?}").into(),
        ))
    };
    let claim = tokio::time::timeout(API_DEADLINE, claims.get_opt(source))
        .await
        .map_err(|_| deadline("the source claim"))??;
    let bound = claim
        .as_ref()
        .and_then(|c| c.spec.as_ref()?.volume_name.clone())
        .filter(|v| !v.is_empty());
    let pv = bound.and_then(|name| volumes.get(&ObjectRef::new(&name)));
    let pv = pv.map(|v| v.to_volume());
    Ok(check_source(
        pvc,
        source,
        claim.as_ref(),
        pv.as_ref(),
        target,
        provisioner,
    ))
}

/// Everything a copy task needs, owned.
struct Job {
    share: AnyShare,
    from: CloneSource,
    staging: RelPath,
    top: DirAttrs,
    progress: Arc<CopyProgress>,
    client: kube::Client,
    volumes: Store<CachedVolume>,
    claim: PersistentVolumeClaim,
    target: crate::backend::Target,
    provisioner: String,
}

async fn run(job: Job, limit: Arc<Semaphore>) -> Result<Copied, BackendError> {
    // Waiting for a slot is part of the task: the reconcile never waits for one.
    let _slot = limit.acquire_owned().await;
    let _busy = metrics::in_flight("clone");
    let copy = job.share.copy_tree(
        &job.from.directory,
        &job.staging,
        job.top,
        job.progress.clone(),
    );
    tokio::pin!(copy);
    let result = loop {
        tokio::select! {
            r = &mut copy => break r,
            () = tokio::time::sleep(WATCH) => {
                if !still_wanted(&job).await {
                    job.progress.cancel();
                }
            }
        }
    };
    if result.is_err() {
        // Partial: never left for anyone to take for a whole copy.
        discard(&job.share, &job.staging).await;
    }
    metrics::clone_finished(result.is_ok());
    result
}

/// False when the new claim is gone or the source can no longer be copied; an API
/// server that does not answer stops nothing (the check before the rename still runs).
async fn still_wanted(job: &Job) -> bool {
    let ns = job.claim.metadata.namespace.as_deref().unwrap_or_default();
    let name = job.claim.metadata.name.as_deref().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(job.client.clone(), ns);
    match tokio::time::timeout(API_DEADLINE, claims.get_opt(name)).await {
        Ok(Ok(None)) => return false,
        Ok(Ok(Some(c))) if c.metadata.uid != job.claim.metadata.uid => return false,
        Ok(Ok(Some(c))) if c.metadata.deletion_timestamp.is_some() => return false,
        _ => {}
    }
    !matches!(
        look_up(
            &job.client,
            &job.volumes,
            &job.claim,
            &job.from.claim,
            &job.target,
            &job.provisioner
        )
        .await,
        Ok(Err(_))
    )
}

//! Released volume in, directory deleted, archived or kept, PV and finalizer gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::cached_volume::CachedVolume;
use super::{Context, Error, Reclaimed, adopt, directories, name_of, uid_of};
use crate::backend::{Removed, Renamed, Share};
use crate::metrics;
use crate::plan::release::CoUser;
use crate::plan::{self, FINALIZER, PvDecision, ReclaimPlan, ReclaimStep};

#[instrument(skip_all, fields(pv = %name_of(cached.as_ref())))]
pub async fn reconcile(cached: Arc<CachedVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.directories.seen(&name_of(cached.as_ref()));
    let pv = cached.to_volume();
    match adopt::decide(&pv, &ctx) {
        PvDecision::Skip(why) => {
            debug!(why, "nothing to do");
            Ok(Action::await_change())
        }
        PvDecision::Reclaim => {
            if claim_still_exists(&pv, &ctx).await? {
                // The phase says Released but the claim is there: the cache is ahead of
                // or behind the truth. Never delete on an ambiguous state.
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            reclaim_data(&pv, &ctx).await?;
            let uid = uid_of(&pv);
            ctx.mark_reclaimed(&uid, Reclaimed::Data);
            let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let name = name_of(&pv);
            match api.delete(&name, &DeleteParams::default()).await {
                // Still there (held by finalizers): let go of ours now rather than on
                // the next event, so the object goes as soon as the others let go.
                Ok(either) => {
                    if let Some(deleted) = either.left() {
                        release_finalizer(&deleted, &ctx).await?;
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            ctx.mark_reclaimed(&uid, Reclaimed::Finalizer);
            ctx.succeeded(&uid);
            Ok(Action::await_change())
        }
        PvDecision::ReleaseFinalizer { reclaim_first } => {
            let uid = uid_of(&pv);
            let done = ctx.reclaimed(&uid);
            if done == Some(Reclaimed::Finalizer) {
                debug!("our finalizer is already released; this event predates that");
                return Ok(Action::await_change());
            }
            if reclaim_first && done.is_none() {
                if claim_still_exists(&pv, &ctx).await? {
                    return Ok(Action::requeue(Duration::from_secs(30)));
                }
                reclaim_data(&pv, &ctx).await?;
                ctx.mark_reclaimed(&uid, Reclaimed::Data);
            }
            release_finalizer(&pv, &ctx).await?;
            ctx.mark_reclaimed(&uid, Reclaimed::Finalizer);
            ctx.succeeded(&uid);
            Ok(Action::await_change())
        }
    }
}

/// Asks the API server, not the cache: a claim with the recorded uid still there means
/// the volume is not free, whatever the phase says.
async fn claim_still_exists(pv: &PersistentVolume, ctx: &Context) -> Result<bool, Error> {
    let Some(cref) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Ok(false);
    };
    let (Some(ns), Some(name)) = (cref.namespace.as_deref(), cref.name.as_deref()) else {
        return Ok(false);
    };
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(name).await? {
        Some(claim) => {
            let same = claim.metadata.uid.is_some() && claim.metadata.uid == cref.uid;
            if same {
                warn!(
                    claim = format!("{ns}/{name}"),
                    "volume is Released but its claim still exists; waiting"
                );
            }
            Ok(same)
        }
        None => Ok(false),
    }
}

/// Does what the recorded onDelete says. Idempotent: run again after a crash, it finds
/// the work done and succeeds.
async fn reclaim_data(pv: &PersistentVolume, ctx: &Context) -> Result<(), Error> {
    let started = Instant::now();
    let _busy = metrics::in_flight("delete");
    let pvs = ctx.volumes.state();
    let others = || {
        pvs.iter()
            .filter_map(|v| {
                Some(CoUser {
                    name: v.metadata.name.as_deref()?,
                    path: v.nfs_path()?,
                    releasing: directories::releasing(v),
                    // Only our own and adopted PVs' wishes count; others' data stays
                    // for their owner.
                    on_delete: (plan::record::provisioned_by(&v.metadata)
                        == Some(ctx.provisioner.as_str()))
                    .then(|| plan::record::recorded_on_delete(&v.metadata))
                    .flatten()
                    .or_else(|| adopt::co_user_wish(v, ctx)),
                })
            })
            .collect()
    };
    let plan = match adopt::plan(pv, ctx, others) {
        Ok(p) => p,
        Err(msg) => {
            ctx.publish(pv, EventType::Warning, "VolumeFailedDelete", msg.clone())
                .await;
            metrics::deleted("refused", started.elapsed(), false);
            return Err(Error::Refused(msg));
        }
    };
    let action = plan.on_delete.as_str();
    let result = match super::archives::before_reclaim(pv, &plan, ctx).await {
        Ok(()) => act(&plan, ctx).await,
        Err(e) => Err(e),
    };
    if let Err(Error::Waiting(why)) = &result {
        // Nothing failed: another volume of the same directory goes first.
        debug!(why, "waiting");
        return result.map(|_| ());
    }
    metrics::deleted(action, started.elapsed(), result.is_ok());
    match result {
        Ok(what) => {
            info!(action, path = plan.full_path(), what, took = ?started.elapsed(), "reclaimed");
            Ok(())
        }
        Err(e) => {
            ctx.publish(
                pv,
                EventType::Warning,
                "VolumeFailedDelete",
                format!("{action} of {}: {e}; {}", plan.directory, e.retry_note()),
            )
            .await;
            Err(e)
        }
    }
}

async fn act(plan: &ReclaimPlan, ctx: &Context) -> Result<&'static str, Error> {
    let full = plan.full_path();
    match &plan.step {
        ReclaimStep::Retain => Ok("retained"),
        // Retried with backoff: the last of the users to be released reclaims it.
        ReclaimStep::LeaveToLive(users) => Err(Error::InUse(format!(
            "directory {full} is also used by PersistentVolume(s) {}; leaving it in place until they are released",
            users.join(", ")
        ))),
        ReclaimStep::WaitFor(first) => Err(Error::Waiting(format!(
            "directory {full} is shared with released volume(s) {} that are reclaimed first",
            first.join(", ")
        ))),
        ReclaimStep::Delete => {
            let share = ctx.shares.get(&plan.target)?;
            Ok(match share.remove_tree(&plan.directory).await? {
                Removed::Removed { .. } => "deleted",
                Removed::AlreadyGone => "already gone",
            })
        }
        ReclaimStep::Archive { to } => {
            let share = ctx.shares.get(&plan.target)?;
            Ok(match share.rename(&plan.directory, to).await? {
                Renamed::Done => "archived",
                Renamed::AlreadyDone => "already archived",
                Renamed::SourceMissing => "nothing to archive",
            })
        }
    }
}

/// Removes our finalizer only. A strategic-merge delete of that one list item cannot
/// overwrite a concurrent change to the other finalizers (the PV protection controller
/// removes its own at the same moment) and needs no resourceVersion, so it never
/// conflicts: one request, where a compare-and-swap would often take three.
async fn release_finalizer(pv: &PersistentVolume, ctx: &Context) -> Result<(), Error> {
    let ours = |f: &Vec<String>| f.iter().any(|x| x == FINALIZER);
    if !pv.metadata.finalizers.as_ref().is_some_and(ours) {
        return Ok(());
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let patch = json!({ "metadata": { "$deleteFromPrimitiveList/finalizers": [FINALIZER] } });
    match api
        .patch(
            &name_of(pv),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

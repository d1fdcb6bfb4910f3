//! Growing a bound claim's volume: the claim watch hands every claim that names a
//! volume here (`provision::reconcile`); [`plan::expand`] decides, this carries it out
//! on the API server as the CSI external-resizer does for a volume with nothing to grow
//! on a node: claim status "resizing", PV capacity, claim status "resized", with events.
//! Every write carries the resourceVersion it was decided on, so a claim grown again or
//! deleted meanwhile, or a PV changed, is decided again and nothing is ever shrunk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, instrument};

use super::{Context, Error, name_of, uid_of};
use crate::metrics;
use crate::plan::expand::{self as decide, ExpandDecision, ExpandPlan};
use crate::plan::{self};

/// How soon a claim whose volume is not cached yet, or whose write met a newer version,
/// is looked at again: nothing else brings it back (the PV's events run reclaim).
const SOON: Duration = Duration::from_secs(2);

#[instrument(skip_all, fields(claim = %name_of(pvc.as_ref())))]
pub async fn reconcile(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let class = plan::class_name(&pvc).and_then(|n| ctx.classes.get(&ObjectRef::new(n)));
    // The claim and its class first: for nearly every claim that ends it, and the
    // volume is looked up only for one that asks for more.
    let mut decision = decide::decide_expansion(&pvc, class.as_deref(), None, &ctx.provisioner);
    if matches!(decision, ExpandDecision::Wait(_)) {
        let pv = cached_volume(&pvc, &ctx);
        decision = decide::decide_expansion(&pvc, class.as_deref(), pv.as_ref(), &ctx.provisioner);
    }
    match decision {
        ExpandDecision::Skip(why) => {
            debug!(why, "not expanding");
            Ok(Action::await_change())
        }
        ExpandDecision::Wait(why) => {
            debug!(why, "expansion waits");
            Ok(Action::requeue(SOON))
        }
        ExpandDecision::Refuse(e) => {
            // Only a change to the claim can fix this; its watch event brings it back.
            ctx.publish(
                pvc.as_ref(),
                EventType::Warning,
                "VolumeResizeFailed",
                format!("cannot expand the volume: {e}"),
            )
            .await;
            metrics::expanded(Duration::ZERO, false);
            Ok(Action::await_change())
        }
        ExpandDecision::Expand(_) => {
            let Some(class) = class else {
                return Ok(Action::await_change());
            };
            match expand(&pvc, &class, ctx).await {
                Ok(action) => Ok(action),
                // A race with the tenant or the binder: decided again soon, no warning.
                Err(Outcome::Conflict) => Ok(Action::requeue(SOON)),
                Err(Outcome::Gone) => Ok(Action::await_change()),
                Err(Outcome::Failed(e)) => Err(e),
            }
        }
    }
}

fn cached_volume(pvc: &PersistentVolumeClaim, ctx: &Context) -> Option<PersistentVolume> {
    let name = pvc.spec.as_ref()?.volume_name.as_deref()?;
    Some(ctx.volumes.get(&ObjectRef::new(name))?.to_volume())
}

enum Outcome {
    /// The claim or the PV changed since it was read.
    Conflict,
    /// The claim is gone, or no longer one to grow.
    Gone,
    Failed(Error),
}

impl From<kube::Error> for Outcome {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 409 => Outcome::Conflict,
            kube::Error::Api(s) if s.code == 404 => Outcome::Gone,
            _ => Outcome::Failed(e.into()),
        }
    }
}

async fn expand(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    ctx: Arc<Context>,
) -> Result<Action, Outcome> {
    let started = Instant::now();
    let _busy = metrics::in_flight("expand");
    let name = pvc.metadata.name.as_deref().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(
        ctx.client.clone(),
        pvc.metadata.namespace.as_deref().unwrap_or_default(),
    );
    // The cache keeps no conditions and may lag: decide again on the claim as the API
    // server holds it, with the volume as cached (its writes carry its version).
    let Some(fresh) = claims.get_opt(name).await? else {
        return Err(Outcome::Gone);
    };
    if fresh.metadata.uid != pvc.metadata.uid {
        return Err(Outcome::Gone);
    }
    let pv = cached_volume(&fresh, &ctx);
    let plan = match decide::decide_expansion(&fresh, Some(class), pv.as_ref(), &ctx.provisioner) {
        ExpandDecision::Expand(plan) => plan,
        // Anything else comes back through the claim's own event.
        other => {
            debug!(decision = ?other, "decided otherwise on the claim as it is now");
            return Err(Outcome::Gone);
        }
    };
    let pv_version = pv
        .and_then(|v| v.metadata.resource_version)
        .unwrap_or_default();
    let announce = ctx.publish(
        pvc,
        EventType::Normal,
        "Resizing",
        format!("External resizer is resizing volume {}", plan.pv),
    );
    let ((), result) = tokio::join!(announce, grow(&claims, fresh, &plan, &pv_version, &ctx));
    match result {
        Ok(()) => {
            metrics::expanded(started.elapsed(), true);
            ctx.succeeded(&uid_of(pvc));
            info!(pv = plan.pv, size = plan.size, took = ?started.elapsed(), "expanded");
            ctx.publish_detached(
                pvc,
                EventType::Normal,
                "VolumeResizeSuccessful",
                "Resize volume succeeded".to_string(),
            );
            Ok(Action::await_change())
        }
        Err(Outcome::Failed(e)) => {
            metrics::expanded(started.elapsed(), false);
            ctx.publish(
                pvc,
                EventType::Warning,
                "VolumeResizeFailed",
                format!(
                    "resize of volume {} to {} failed: {e}; {}",
                    plan.pv,
                    plan.size,
                    e.retry_note()
                ),
            )
            .await;
            Err(Outcome::Failed(e))
        }
        Err(other) => Err(other),
    }
}

/// The three writes, each skipped when an earlier attempt already made it: so a restart
/// between any two finishes the job.
async fn grow(
    claims: &Api<PersistentVolumeClaim>,
    mut claim: PersistentVolumeClaim,
    plan: &ExpandPlan,
    pv_version: &str,
    ctx: &Context,
) -> Result<(), Outcome> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let params = PatchParams::default();
    if !decide::in_progress(&claim, &plan.size) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let patch = decide::status_resizing(&claim, &plan.size, now);
        claim = claims
            .patch_status(&name, &params, &Patch::Merge(&patch))
            .await?;
    }
    if plan.grow_pv {
        if pv_version.is_empty() {
            // Without a version the write could land on a newer, bigger PV and shrink it.
            return Err(Outcome::Failed(Error::Refused(format!(
                "volume {} has no resourceVersion in the cache",
                plan.pv
            ))));
        }
        let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
        volumes
            .patch(
                &plan.pv,
                &params,
                &Patch::Merge(&decide::pv_patch(plan, pv_version)),
            )
            .await?;
    }
    claims
        .patch_status(
            &name,
            &params,
            &Patch::Merge(&decide::status_resized(&claim, &plan.size)),
        )
        .await?;
    Ok(())
}

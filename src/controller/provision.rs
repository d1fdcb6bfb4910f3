//! Claim in, directory and PV out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, instrument};

use super::directories::Reservation;
use super::{Context, Error, name_of, uid_of};
use crate::backend::{Made, Share};
use crate::metrics;
use crate::plan::{self, ClaimDecision};

/// Longest wait before a claim refused for another volume's directory looks again.
const CONFLICT_RETRY: Duration = Duration::from_secs(30);

#[instrument(skip_all, fields(claim = %name_of(pvc.as_ref())))]
pub async fn reconcile(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // A claim that names a volume is never provisioned again; it may be growing.
    if plan::expand::is_bound(&pvc) {
        return super::expand::reconcile(pvc, ctx).await;
    }
    let class = plan::class_name(&pvc).and_then(|n| ctx.classes.get(&ObjectRef::new(n)));
    match plan::decide_claim(&pvc, class.as_deref(), &ctx.provisioner) {
        ClaimDecision::Skip(why) | ClaimDecision::Wait(why) => {
            debug!(why, "not provisioning");
            Ok(Action::await_change())
        }
        ClaimDecision::Refuse(err) => {
            // Only a change to the claim can fix this; its watch event brings it back.
            ctx.publish(
                pvc.as_ref(),
                EventType::Warning,
                "ProvisioningFailed",
                err.to_string(),
            )
            .await;
            metrics::provisioned(Default::default(), false);
            Ok(Action::await_change())
        }
        ClaimDecision::Provision => {
            let class = class.expect("decide_claim provisions only with a class");
            provision(&pvc, &class, &ctx).await
        }
    }
}

async fn provision(
    pvc: &PersistentVolumeClaim,
    class: &k8s_openapi::api::storage::v1::StorageClass,
    ctx: &Context,
) -> Result<Action, Error> {
    let started = Instant::now();
    let _busy = metrics::in_flight("provision");
    let pv_name = match plan::volume_name(pvc) {
        Ok(n) => n,
        Err(e) => return Err(Error::Refused(e.to_string())),
    };
    if ctx.volumes.get(&ObjectRef::new(&pv_name)).is_some() {
        debug!(pv = pv_name, "volume exists; the control plane binds it");
        return Ok(Action::await_change());
    }
    let fresh;
    let pvc = if needs_fresh_copy(pvc, class) {
        // Cached before its class was known, and stripped of what the class's template
        // now reads: read it once from the API server.
        let api: Api<PersistentVolumeClaim> = Api::namespaced(
            ctx.client.clone(),
            pvc.metadata.namespace.as_deref().unwrap_or_default(),
        );
        match api
            .get_opt(pvc.metadata.name.as_deref().unwrap_or_default())
            .await?
        {
            // The claim may have changed since it was cached (bound by the binder to a
            // static PV, being deleted): decide again on what the API server holds now;
            // its watch event brings any other outcome back through `reconcile`.
            Some(c)
                if c.metadata.uid == pvc.metadata.uid
                    && matches!(
                        plan::decide_claim(&c, Some(class), &ctx.provisioner),
                        ClaimDecision::Provision
                    ) =>
            {
                fresh = c;
                &fresh
            }
            _ => return Ok(Action::await_change()),
        }
    } else {
        pvc
    };
    let mut volume = match plan::plan_volume(pvc, class, &ctx.defaults, &ctx.provisioner) {
        Ok(v) => v,
        Err(e) => {
            // Bad class parameters or a hostile template: nothing is touched. A change to
            // the claim or the class brings it back.
            ctx.publish(pvc, EventType::Warning, "ProvisioningFailed", e.to_string())
                .await;
            metrics::provisioned(started.elapsed(), false);
            return Ok(Action::await_change());
        }
    };
    // Before the directory is reserved: the export decides the path.
    if let Some(stop) = super::placement::place(pvc, class, &mut volume, ctx).await {
        return Ok(stop);
    }
    // Checked against every PV and every provisioning under way, and held until our PV is
    // in the cache: two claims rendering the same directory cannot both pass.
    let reservation = match ctx.directories.reserve(&volume, &ctx.volumes) {
        Ok(r) => r,
        Err(conflict) => {
            info!(pv = pv_name, %conflict, other = conflict.other(), "directory refused");
            ctx.publish(
                pvc,
                EventType::Warning,
                "ProvisioningFailed",
                conflict.to_string(),
            )
            .await;
            metrics::provisioned(started.elapsed(), false);
            // A released volume is usually reclaimed within seconds; a live one may go
            // too (its claim deleted a moment ago), and nothing tells this claim when.
            // Capped lower than other failures: nothing else brings the claim back when
            // the other volume goes.
            return Ok(Action::requeue(if conflict.is_transient() {
                Duration::from_secs(5)
            } else {
                ctx.backoff(&uid_of(pvc)).min(CONFLICT_RETRY)
            }));
        }
    };
    // A clone's directory comes from a copy of its source, made before anything else.
    if let Some(action) = super::clone::fill(pvc, &volume, ctx).await? {
        return Ok(action);
    }
    // The event and the work go together: waiting for the event first would add an
    // API round trip to every claim's latency.
    let announce = ctx.publish(
        pvc,
        EventType::Normal,
        "Provisioning",
        format!(
            "External provisioner is provisioning volume for claim \"{}\"",
            name_of(pvc)
        ),
    );
    let ((), result) = tokio::join!(announce, create(pvc, &volume, &reservation, ctx));
    metrics::provisioned(started.elapsed(), result.is_ok());
    match result {
        Ok(()) => {
            reservation.keep();
            ctx.succeeded(&uid_of(pvc));
            ctx.placements.forget(&uid_of(pvc));
            info!(pv = pv_name, path = volume.full_path(), took = ?started.elapsed(), "provisioned");
            // The claim's owner sees this; it says no more than the claim itself shows.
            ctx.publish_detached(
                pvc,
                EventType::Normal,
                "ProvisioningSucceeded",
                format!("Successfully provisioned volume {pv_name}"),
            );
            Ok(Action::await_change())
        }
        Err(Error::Existing(msg)) => {
            ctx.publish(pvc, EventType::Warning, "ProvisioningFailed", msg)
                .await;
            Ok(Action::requeue(ctx.backoff(&uid_of(pvc))))
        }
        Err(e) => {
            ctx.publish(
                pvc,
                EventType::Warning,
                "ProvisioningFailed",
                format!(
                    "failed to provision volume with StorageClass {:?}: {e}; {}",
                    class.metadata.name.as_deref().unwrap_or(""),
                    e.retry_note()
                ),
            )
            .await;
            Err(e)
        }
    }
}

fn needs_fresh_copy(
    pvc: &PersistentVolumeClaim,
    class: &k8s_openapi::api::storage::v1::StorageClass,
) -> bool {
    let stripped = pvc
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(super::cache::ANN_STRIPPED));
    let params = class.parameters.as_ref();
    let template = params.and_then(|p| p.get("pathPattern"));
    stripped
        && template.is_some_and(|t| t.contains(".PVC.labels.") || t.contains(".PVC.annotations."))
}

async fn create(
    pvc: &PersistentVolumeClaim,
    volume: &plan::ProvisionPlan,
    reservation: &Reservation<'_>,
    ctx: &Context,
) -> Result<(), Error> {
    let share = ctx.shares.get(&volume.target)?;
    // A claim naming an archive gets it renamed into place instead of a new directory.
    let restoring = super::restore::take(&share, pvc, volume).await?;
    let made = match restoring {
        Some(_) => Made::Created,
        None => share.create_dir(&volume.directory, volume.attrs).await?,
    };
    // A directory an earlier attempt for this claim made comes back as Created: it
    // carries the claim's stamp. Anything else that exists is someone else's.
    if let Made::Existed(st) = made {
        debug!(shared = !reservation.shared_with().is_empty(), existing = ?volume.existing, mtime = ?st.mtime, "directory exists");
        volume
            .on_existing(reservation.shared_with())
            .map_err(|e| Error::Existing(e.to_string()))?;
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let created = match api.create(&PostParams::default(), &volume.pv).await {
        Ok(_) => Ok(()),
        // Same name means same claim uid: an earlier attempt (or a crash before it saw
        // the answer) already created it.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            debug!(claim = name_of(pvc), "volume already exists");
            Ok(())
        }
        Err(e) => Err(e.into()),
    };
    if let (Ok(()), Some(r)) = (&created, restoring) {
        super::restore::finish(&share, r).await;
    }
    created
}

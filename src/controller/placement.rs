//! Which export a claim's volume goes to, for classes that need a choice
//! (`plan::placement`): every export of the class is asked at once, each within
//! [`PROBE_DEADLINE`], for its free space (FSSTAT) and whether the claim's directory is
//! already there. Unreachable exports are passed over with an event on the claim; when
//! none has room (or none answers) the claim gets a `ProvisioningFailed` event, nothing
//! is created, and it is retried with backoff. The export chosen for a claim is
//! remembered, so a retry after a failure between MKDIR and the PV waits for that export
//! rather than making a second directory on another one while it is down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{debug, info};

use super::{Context, uid_of};
use crate::backend::{BackendError, Kind, Share, Target, stamped};
use crate::metrics;
use crate::plan::ProvisionPlan;
use crate::plan::placement::{self, Probe};

/// How long one export may take to answer FSSTAT and the look for the directory. A
/// server that takes longer is passed over for this claim; the claim itself waits no
/// longer than this, since the exports are asked together.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// How long the export chosen for a claim is remembered: far longer than the backoff of
/// a claim whose PV could not be created.
const MEMORY: Duration = Duration::from_secs(3600);

/// The export this process chose for each claim (by uid) whose volume is not made yet.
#[derive(Default)]
pub struct Placements {
    chosen: Mutex<HashMap<String, (Target, Instant)>>,
}

impl Placements {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Target, Instant)>> {
        self.chosen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, uid: &str, target: &Target) {
        let mut chosen = self.lock();
        let now = Instant::now();
        chosen.retain(|_, (_, at)| now.duration_since(*at) < MEMORY);
        chosen.insert(uid.to_string(), (target.clone(), now));
    }

    fn earlier(&self, uid: &str) -> Option<Target> {
        self.lock()
            .get(uid)
            .filter(|(_, at)| at.elapsed() < MEMORY)
            .map(|(t, _)| t.clone())
    }

    /// The claim's PV exists: the PV records the export from here on.
    pub fn forget(&self, uid: &str) {
        let mut chosen = self.lock();
        if !chosen.is_empty() {
            chosen.remove(uid);
        }
    }
}

/// Puts `volume` on the export the class's placement picks. `None`: go on with the
/// plan (placed, or a class with nothing to choose); `Some`: stop here with this action,
/// the claim's event already sent.
pub(super) async fn place(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    volume: &mut ProvisionPlan,
    ctx: &Context,
) -> Option<Action> {
    let class_name = class.metadata.name.as_deref().unwrap_or_default();
    let asked = placement::candidates(class, &ctx.defaults)
        .and_then(|c| Ok(c.zip(Some(placement::requested_bytes(pvc)?))));
    let (candidates, requested) = match asked {
        Ok(None) => return None,
        Ok(Some(found)) => found,
        Err(e) => {
            // Only a change to the claim or the class can fix it.
            ctx.publish(pvc, EventType::Warning, "ProvisioningFailed", e.to_string())
                .await;
            metrics::provisioned(Duration::ZERO, false);
            return Some(Action::await_change());
        }
    };
    // A clone is copied within one share: it goes to its source's export when the class
    // has it (its floors still apply), whatever the others' free space.
    let candidates = match super::clone::source_export(pvc, ctx).await {
        Some(there) => placement::pin(candidates, &there),
        None => candidates,
    };
    let probes =
        futures::future::join_all(candidates.iter().map(|c| probe(ctx, &c.target, volume))).await;
    let uid = uid_of(pvc);
    let earlier = ctx.placements.earlier(&uid);
    match placement::choose(&candidates, &probes, requested, earlier.as_ref()) {
        Ok(chosen) => {
            for (target, why) in chosen.skipped {
                info!(export = %target, why, "export passed over");
                ctx.publish_detached(
                    pvc,
                    EventType::Warning,
                    "ExportUnreachable",
                    format!(
                        "export {target} of StorageClass {class_name} does not answer ({why}); the volume goes to another export of the class"
                    ),
                );
            }
            debug!(export = %chosen.target, resumed = chosen.resumed, "placed");
            ctx.placements.remember(&uid, &chosen.target);
            volume.place(&chosen.target);
            None
        }
        Err(refusal) => {
            info!(%refusal, "no export takes the volume");
            ctx.publish(
                pvc,
                EventType::Warning,
                "ProvisioningFailed",
                format!("StorageClass {class_name}: {refusal}"),
            )
            .await;
            metrics::provisioned(Duration::ZERO, false);
            // Space can be freed and servers come back; nothing tells the claim when.
            Some(Action::requeue(ctx.backoff(&uid)))
        }
    }
}

/// The export's free space and whether the claim's directory is there with its stamp.
async fn probe(ctx: &Context, target: &Target, volume: &ProvisionPlan) -> Probe {
    let ask = async {
        let share = ctx.shares.get(target)?;
        let space = share.space().await?;
        let found = share.stat(&volume.directory).await?;
        Ok::<_, BackendError>((space, found))
    };
    match tokio::time::timeout(PROBE_DEADLINE, ask).await {
        Err(_) => Probe::Unreachable(format!("no answer within {PROBE_DEADLINE:?}")),
        Ok(Err(e)) => Probe::Unreachable(e.to_string()),
        Ok(Ok((space, found))) => Probe::Reached {
            space,
            ours: found.is_some_and(|st| {
                st.kind == Kind::Dir && volume.attrs.stamp.is_some_and(|s| stamped(s, st.mtime))
            }),
        },
    }
}

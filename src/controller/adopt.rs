//! The reclaim reconciler's hooks for adopted volumes (`--adopt-provisioned-by`): which
//! decision applies to a PV, its plan from its class in the cache, and its wish as a
//! co-user of a shared directory. The decisions are `plan::adopt`'s; this only feeds it.

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::cached_volume::CachedVolume;
use crate::params::OnDelete;
use crate::plan::adopt::{self, Adoption};
use crate::plan::release::CoUser;
use crate::plan::{self, PvDecision, ReclaimPlan};

fn adoption_of<'a>(ctx: &'a Context, pv: &PersistentVolume) -> Option<&'a Adoption> {
    ctx.adoption.as_ref().filter(|a| a.adopts(&pv.metadata))
}

/// Our own decision for our PVs, the incumbent's for adopted ones.
pub(super) fn decide(pv: &PersistentVolume, ctx: &Context) -> PvDecision {
    match adoption_of(ctx, pv) {
        Some(a) => a.decide(pv),
        None => plan::decide_pv(pv, &ctx.provisioner),
    }
}

/// The class as the cache has it: the incumbent reads it at release time as well.
fn class_of(pv: &PersistentVolume, ctx: &Context) -> Option<std::sync::Arc<StorageClass>> {
    ctx.classes.get(&ObjectRef::new(adopt::class_name(pv)?))
}

/// The reclaim plan of a released PV, ours or adopted; a refusal as the text of its event.
pub(super) fn plan<'a>(
    pv: &PersistentVolume,
    ctx: &Context,
    others: impl FnOnce() -> Vec<CoUser<'a>>,
) -> Result<ReclaimPlan, String> {
    match adoption_of(ctx, pv) {
        Some(a) => {
            let class = class_of(pv, ctx);
            adopt::plan_adopted(pv, class.as_deref(), a, others).map_err(|e| e.to_string())
        }
        None => plan::plan_reclaim(pv, others).map_err(|e| e.to_string()),
    }
}

/// What an adopted PV sharing a directory would have its release do; `None` for any
/// other volume (not ours nor adopted, or its class unreadable): a live user.
pub(super) fn co_user_wish(v: &CachedVolume, ctx: &Context) -> Option<OnDelete> {
    // Looked at before the copy: most PVs of a cluster are neither.
    let a = ctx.adoption.as_ref().filter(|a| a.adopts(&v.metadata))?;
    let pv = v.to_volume();
    let class = class_of(&pv, ctx);
    adopt::adopted_wish(a, &pv, class.as_deref())
        .ok()
        .map(|(_, wish)| wish)
}

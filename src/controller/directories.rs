//! Which directories are taken: every PV in the cache, plus the provisionings under way
//! whose PV the cache has not shown yet. Checking and reserving happen under one lock,
//! so two claims that render the same (or nested) directories at the same moment, in
//! any namespaces, cannot both win.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;

use super::cached_volume::CachedVolume;
use crate::plan::ProvisionPlan;
use crate::plan::ownership::{Conflict, Occupant};

/// A reservation whose PV never showed in the cache (created and deleted before the
/// watch saw it) is dropped after this; the cache is normally milliseconds behind.
const RESERVATION_TTL: Duration = Duration::from_secs(120);

struct Reserved {
    path: String,
    namespace: String,
    at: Instant,
}

#[derive(Default)]
pub struct Directories {
    /// By PV name.
    reserved: Mutex<HashMap<String, Reserved>>,
}

impl Conflict {
    /// The other volume, for the provisioner's own log (never for events).
    pub fn other(&self) -> &str {
        match self {
            Conflict::Taken { other, .. } | Conflict::Reclaiming { other, .. } => other,
        }
    }
}

/// Held while a volume is made; released on drop unless [`Reservation::keep`] says the
/// PV was created, in which case it lasts until the cache has the PV.
pub struct Reservation<'a> {
    owner: &'a Directories,
    pv_name: String,
    shared_with: Vec<String>,
    kept: bool,
}

impl Reservation<'_> {
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// The live volumes whose directory this one shares, as the class allows.
    pub fn shared_with(&self) -> &[String] {
        &self.shared_with
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.owner.lock().remove(&self.pv_name);
        }
    }
}

/// See [`crate::plan::releasing`].
pub(crate) fn releasing(v: &CachedVolume) -> bool {
    let spec = v.spec.as_ref();
    crate::plan::releasing(
        v.metadata.deletion_timestamp.is_some(),
        v.status.as_ref().and_then(|s| s.phase.as_deref()),
        spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()),
    )
}

impl Directories {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reserved>> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The PV is in the cache now: the cache speaks for it from here on (and, once it is
    /// deleted, no longer holds its directory).
    pub fn seen(&self, pv_name: &str) {
        let mut reserved = self.lock();
        if !reserved.is_empty() {
            reserved.remove(pv_name);
        }
    }

    pub fn reserve(
        &self,
        volume: &ProvisionPlan,
        volumes: &Store<CachedVolume>,
    ) -> Result<Reservation<'_>, Conflict> {
        let (pv_name, namespace) = (volume.pv_name.as_str(), volume.namespace.as_str());
        let full = volume.full_path();
        let pvs = volumes.state();
        let mut reserved = self.lock();
        let now = Instant::now();
        reserved.retain(|_, r| now.duration_since(r.at) < RESERVATION_TTL);
        let cached = pvs.iter().filter_map(|v| {
            Some(Occupant {
                name: v.metadata.name.as_deref()?,
                path: v.nfs_path()?,
                namespace: v.spec.as_ref()?.claim_ref.as_ref()?.namespace.as_deref(),
                releasing: releasing(v),
            })
        });
        let pending = reserved.iter().map(|(name, r)| Occupant {
            name,
            path: &r.path,
            namespace: Some(&r.namespace),
            releasing: false,
        });
        let others = cached
            .chain(pending)
            .filter(|o| o.name != pv_name)
            .collect::<Vec<_>>();
        let shared_with = volume.check_ownership(others)?;
        reserved.insert(
            pv_name.to_string(),
            Reserved {
                path: full,
                namespace: namespace.to_string(),
                at: now,
            },
        );
        Ok(Reservation {
            owner: self,
            pv_name: pv_name.to_string(),
            shared_with,
            kept: false,
        })
    }
}

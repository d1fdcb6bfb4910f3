//! Soft quotas, decided: which of our volumes a usage scan looks at, the size a
//! volume is allowed before it warns, and whether a scan crossed it.
//!
//! NFSv3 has no way to stop a client writing: this is accounting and alerting, never
//! enforcement. A warning goes out once per crossing, not at every scan that finds the
//! volume still over.

use k8s_openapi::api::core::v1::PersistentVolume;

use crate::plan::record::Recorded;

/// Percent of the requested capacity at which a volume warns, unless its class sets
/// `usageWarnPercent`.
pub const DEFAULT_WARN_PERCENT: u32 = 100;

/// One of our volumes, as a scan needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    pub pv: String,
    pub namespace: String,
    pub claim: String,
    pub claim_uid: String,
    /// Its StorageClass, whose `usageWarnPercent` applies.
    pub class: Option<String>,
    pub recorded: Recorded,
    /// The PV's capacity in bytes, when it has one we can read.
    pub capacity: Option<u64>,
}

/// The volume to scan, or `None`: only bound volumes that we made and that are not
/// being deleted, with a readable record (a PV whose annotations disagree with its
/// spec is left alone here as it is at reclaim).
pub fn to_scan(pv: &PersistentVolume, provisioner: &str) -> Option<Scanned> {
    let meta = &pv.metadata;
    if crate::plan::record::provisioned_by(meta) != Some(provisioner)
        || meta.deletion_timestamp.is_some()
        || pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound")
    {
        return None;
    }
    let spec = pv.spec.as_ref()?;
    let claim = spec.claim_ref.as_ref()?;
    let recorded = Recorded::from_pv(pv).ok()?;
    let capacity = spec
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .and_then(|q| parse_quantity(&q.0));
    Some(Scanned {
        pv: meta.name.clone()?,
        namespace: claim.namespace.clone()?,
        claim: claim.name.clone()?,
        claim_uid: claim.uid.clone().unwrap_or_default(),
        class: spec.storage_class_name.clone(),
        recorded,
        capacity,
    })
}

/// Bytes in a Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1e9`, `1000`); `None` for
/// what is not a whole, non-negative number of bytes.
pub fn parse_quantity(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, suffix) = raw.split_at(split);
    let (mult, exp10): (u128, u32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse::<u32>().ok().filter(|x| *x <= 30)?),
        _ => return None,
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return None;
    }
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let scale = 10u128.pow(u32::try_from(frac.len()).ok()?);
    let bytes = digits.checked_mul(mult)?.checked_mul(10u128.pow(exp10))?;
    // Round a fraction of a byte up, as the API server does.
    u64::try_from(bytes.div_ceil(scale)).ok()
}

/// Bytes at which a volume of `capacity` warns: `percent` of it.
pub fn threshold(capacity: u64, percent: u32) -> u64 {
    let t = u128::from(capacity) * u128::from(percent) / 100;
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// What a scan found against what the one before it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    /// Just went over: warn.
    WentOver,
    /// Just came back under: say so, and warn again at the next crossing.
    CameBack,
    /// As before.
    Same,
}

/// Whether `used` crosses `threshold`, given whether the last scan found it over.
/// `was_over` is `None` for the first scan of a volume by this process: a volume found
/// over then warns once (after a restart, one repeat is the price of keeping no state
/// on the cluster), one found under says nothing.
pub fn crossing(was_over: Option<bool>, used: u64, threshold: u64) -> (bool, Crossing) {
    let over = used > threshold;
    let c = match (was_over, over) {
        (Some(false) | None, true) => Crossing::WentOver,
        (Some(true), false) => Crossing::CameBack,
        _ => Crossing::Same,
    };
    (over, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::PROV;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn quantities_in_bytes() {
        for (q, b) in [
            ("1Gi", Some(1 << 30)),
            ("10Mi", Some(10 << 20)),
            ("1.5Ki", Some(1536)),
            ("500M", Some(500_000_000)),
            ("2k", Some(2000)),
            ("1e9", Some(1_000_000_000)),
            ("1000", Some(1000)),
            ("0.5", Some(1)),
            (" 3Ti ", Some(3 << 40)),
            ("1Ei", Some(1 << 60)),
            ("100m", None),
            ("-1Gi", None),
            ("", None),
            (".", None),
            ("1..2", None),
            ("1GB", None),
            ("99999999999E", None),
            ("1e99", None),
        ] {
            assert_eq!(parse_quantity(q), b, "{q:?}");
        }
    }

    #[test]
    fn thresholds_and_crossings() {
        assert_eq!(threshold(1000, 90), 900);
        assert_eq!(threshold(1 << 30, 100), 1 << 30);
        assert_eq!(threshold(u64::MAX, 1000), u64::MAX);
        use Crossing::*;
        for (was, used, over, c) in [
            (None, 901, true, WentOver),
            (None, 900, false, Same),
            (Some(false), 901, true, WentOver),
            (Some(true), 5000, true, Same),
            (Some(true), 10, false, CameBack),
            (Some(false), 10, false, Same),
        ] {
            assert_eq!(crossing(was, used, 900), (over, c), "{was:?} {used}");
        }
    }

    fn pv(phase: &str) -> PersistentVolume {
        let json = serde_json::json!({
            "metadata": {
                "name": "pvc-1",
                "annotations": {
                    "pv.kubernetes.io/provisioned-by": PROV,
                    "nfs3-provisioner.io/server": "10.0.0.1",
                    "nfs3-provisioner.io/share": "/srv",
                    "nfs3-provisioner.io/directory": "ns-c-pvc-1",
                    "nfs3-provisioner.io/on-delete": "delete",
                }
            },
            "spec": {
                "capacity": {"storage": "2Gi"},
                "storageClassName": "fast",
                "nfs": {"server": "10.0.0.1", "path": "/srv/ns-c-pvc-1"},
                "claimRef": {"namespace": "ns", "name": "c", "uid": "cu"}
            },
            "status": {"phase": phase}
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_our_bound_volumes_are_scanned() {
        let s = to_scan(&pv("Bound"), PROV).unwrap();
        assert_eq!(
            (s.pv.as_str(), s.namespace.as_str(), s.claim.as_str()),
            ("pvc-1", "ns", "c")
        );
        assert_eq!(s.capacity, Some(2 << 30));
        assert_eq!(s.class.as_deref(), Some("fast"));
        assert_eq!(s.recorded.directory.to_string(), "ns-c-pvc-1");
        assert!(to_scan(&pv("Released"), PROV).is_none());
        assert!(to_scan(&pv("Bound"), "someone-else").is_none());
        let mut deleting = pv("Bound");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert!(to_scan(&deleting, PROV).is_none());
        // Spec and record disagree: ambiguous, left alone.
        let mut moved = pv("Bound");
        moved.spec.as_mut().unwrap().nfs.as_mut().unwrap().path = "/srv/other".into();
        assert!(to_scan(&moved, PROV).is_none());
        let mut odd = pv("Bound");
        odd.spec.as_mut().unwrap().capacity =
            Some([("storage".to_string(), Quantity("lots".into()))].into());
        assert_eq!(to_scan(&odd, PROV).unwrap().capacity, None);
    }
}

//! Who owns a directory: the rule that keeps one tenant's volume out of another's.
//!
//! A new volume's directory must not equal, contain or lie inside the directory of any
//! other PV on the export (ours in any phase, and other provisioners' NFS PVs), unless
//! the class allows sharing. A PV of the whole export, or of a directory above it, does
//! not count: every volume lies inside those by design. The server is not compared,
//! since one export can be reached under several names; so a PV of another server with
//! the same path counts too (a refusal, never a leak).

use thiserror::Error;

use crate::params::Sharing;
use crate::path::{compare_key, nests};

/// Another volume, as the ownership check sees it.
#[derive(Clone, Debug)]
pub struct Occupant<'a> {
    pub name: &'a str,
    /// `spec.nfs.path` of the PV (or the path a provisioning under way reserved).
    pub path: &'a str,
    /// Namespace of the claim it is (or was) bound to.
    pub namespace: Option<&'a str>,
    /// Released, failed or being deleted: its directory is about to be reclaimed.
    pub releasing: bool,
}

/// How the other directory lies relative to the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Same,
    /// The other volume's directory lies inside the new one.
    Contains,
    /// The new directory lies inside the other volume's.
    Inside,
}

impl Relation {
    fn describe(self) -> &'static str {
        match self {
            Relation::Same => "is the directory of another volume",
            Relation::Contains => "contains the directory of another volume",
            Relation::Inside => "lies inside the directory of another volume",
        }
    }
}

/// Why a new volume may not have its directory. The texts reach the claim's events, so
/// they name only the claim's own directory, never the other volume or its namespace.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Conflict {
    #[error(
        "directory {path} {}; every claim of this class gets a directory of its own (StorageClass parameter directorySharing: {policy})",
        relation.describe()
    )]
    Taken {
        path: String,
        relation: Relation,
        policy: &'static str,
        /// For the provisioner's log only.
        other: String,
    },
    #[error(
        "directory {path} {} that is released and waiting to be reclaimed; will retry",
        relation.describe()
    )]
    Reclaiming {
        path: String,
        relation: Relation,
        other: String,
    },
}

impl Conflict {
    /// A released volume goes away by itself; a live one needs someone to act.
    pub fn is_transient(&self) -> bool {
        matches!(self, Conflict::Reclaiming { .. })
    }
}

fn policy_name(s: Sharing) -> &'static str {
    match s {
        Sharing::None => "none",
        Sharing::Namespace => "namespace",
        Sharing::Any => "any",
    }
}

/// Checks the new volume at `full_path` (share joined with its directory) of a claim in
/// `namespace` against every other volume. Ok holds the names of the volumes it shares
/// its directory with, as the class allows.
pub fn check<'a>(
    share: &str,
    full_path: &str,
    namespace: &str,
    sharing: Sharing,
    case_insensitive: bool,
    others: impl IntoIterator<Item = Occupant<'a>>,
) -> Result<Vec<String>, Conflict> {
    let mine = compare_key(full_path, case_insensitive);
    let share = compare_key(share, case_insensitive);
    let mut shared = Vec::new();
    for other in others {
        let theirs = compare_key(other.path, case_insensitive);
        // The export itself, or anything above it: all volumes are inside by design.
        if nests(&share, &theirs) {
            continue;
        }
        let relation = if theirs == mine {
            Relation::Same
        } else if nests(&theirs, &mine) {
            Relation::Contains
        } else if nests(&mine, &theirs) {
            Relation::Inside
        } else {
            continue;
        };
        if other.releasing {
            return Err(Conflict::Reclaiming {
                path: full_path.to_string(),
                relation,
                other: other.name.to_string(),
            });
        }
        let allowed = match sharing {
            Sharing::None => false,
            Sharing::Namespace => other.namespace == Some(namespace),
            Sharing::Any => true,
        };
        if !allowed {
            return Err(Conflict::Taken {
                path: full_path.to_string(),
                relation,
                policy: policy_name(sharing),
                other: other.name.to_string(),
            });
        }
        shared.push(other.name.to_string());
    }
    Ok(shared)
}

/// The modification time a new directory is given, derived from the claim's uid: if the
/// provisioner stops between making the directory and creating its PV, the retry knows
/// the directory for its own, where any other unrecorded directory is refused. Nobody
/// can stamp a directory in advance: the uid is random and assigned when the claim is
/// made. Seconds fall in 2000-2003, out of the way of real times.
pub fn stamp(claim_uid: &str) -> (u32, u32) {
    let h = super::fnv1a(claim_uid.as_bytes());
    let secs = 946_684_800 + (h % 100_000_000) as u32;
    let nsecs = ((h >> 32) % 1_000_000_000) as u32;
    (secs, nsecs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ<'a>(name: &'a str, path: &'a str, ns: &'a str, releasing: bool) -> Occupant<'a> {
        Occupant {
            name,
            path,
            namespace: Some(ns),
            releasing,
        }
    }

    fn run(
        full: &str,
        ns: &str,
        sharing: Sharing,
        others: &[Occupant<'_>],
    ) -> Result<Vec<String>, Conflict> {
        check("/srv", full, ns, sharing, false, others.iter().cloned())
    }

    #[test]
    fn equal_nested_and_around_are_refused_across_namespaces() {
        let victim = [occ("pv-v", "/srv/payments/reports", "payments", false)];
        for (full, rel) in [
            ("/srv/payments/reports", Relation::Same),
            ("/srv/payments/reports/sub", Relation::Inside),
            ("/srv/payments", Relation::Contains),
            ("/srv/payments/reports/", Relation::Same),
        ] {
            for sharing in [Sharing::None, Sharing::Namespace] {
                match run(full, "mallory", sharing, &victim) {
                    Err(Conflict::Taken { relation, .. }) => assert_eq!(relation, rel, "{full}"),
                    other => panic!("{full} {sharing:?}: {other:?}"),
                }
            }
        }
        // Siblings and prefixes that are not path prefixes do not conflict.
        for full in [
            "/srv/payments/reports2",
            "/srv/payments-reports",
            "/srv/pay",
        ] {
            assert_eq!(run(full, "mallory", Sharing::None, &victim), Ok(vec![]));
        }
    }

    #[test]
    fn the_export_itself_and_what_lies_above_never_count() {
        let root = [
            occ("whole", "/srv", "x", false),
            occ("above", "/", "x", false),
            occ("trailing", "/srv/", "x", false),
        ];
        assert_eq!(run("/srv/a", "ns", Sharing::None, &root), Ok(vec![]));
    }

    #[test]
    fn sharing_is_what_the_class_allows_and_never_with_a_releasing_volume() {
        let same_ns = [occ("pv-1", "/srv/shared/team", "team", false)];
        assert!(run("/srv/shared/team", "team", Sharing::None, &same_ns).is_err());
        assert_eq!(
            run("/srv/shared/team", "team", Sharing::Namespace, &same_ns),
            Ok(vec!["pv-1".to_string()])
        );
        assert!(run("/srv/shared/team", "other", Sharing::Namespace, &same_ns).is_err());
        assert_eq!(
            run("/srv/shared/team", "other", Sharing::Any, &same_ns),
            Ok(vec!["pv-1".to_string()])
        );
        let releasing = [occ("pv-old", "/srv/team/data", "team", true)];
        for sharing in [Sharing::None, Sharing::Namespace, Sharing::Any] {
            let err = run("/srv/team/data", "team", sharing, &releasing).unwrap_err();
            assert!(err.is_transient(), "{err}");
        }
    }

    #[test]
    fn unicode_forms_and_case_are_compared_as_the_server_would() {
        let composed = [occ("pv-1", "/srv/caf\u{e9}", "a", false)];
        assert!(run("/srv/cafe\u{301}", "b", Sharing::None, &composed).is_err());
        let upper = [occ("pv-1", "/srv/Data", "a", false)];
        assert!(run("/srv/data", "b", Sharing::None, &upper).is_ok());
        assert!(
            check(
                "/srv",
                "/srv/data",
                "b",
                Sharing::None,
                true,
                upper.iter().cloned()
            )
            .is_err()
        );
    }

    #[test]
    fn events_do_not_name_the_other_volume() {
        let victim = [occ("pvc-secret", "/srv/x", "victim-ns", false)];
        let err = run("/srv/x", "mallory", Sharing::None, &victim).unwrap_err();
        let text = err.to_string();
        assert!(
            !text.contains("pvc-secret") && !text.contains("victim-ns"),
            "{text}"
        );
    }

    #[test]
    fn stamps_are_stable_and_distinct() {
        assert_eq!(stamp("0b5e-1"), stamp("0b5e-1"));
        assert_ne!(stamp("0b5e-1"), stamp("0b5e-2"));
        let (s, n) = stamp("uid");
        assert!((946_684_800..1_046_684_800).contains(&s) && n < 1_000_000_000);
        use crate::backend::stamped;
        assert!(stamped(stamp("uid"), (s, n)));
        assert!(stamped(stamp("uid"), (s, 0)), "servers with whole seconds");
        assert!(!stamped(stamp("uid"), (s + 1, n)));
        assert!(!stamped(stamp("other"), (s, n)));
    }

    mod property {
        use std::collections::BTreeMap;

        use k8s_openapi::api::core::v1::{
            PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
        };
        use k8s_openapi::api::storage::v1::StorageClass;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        use proptest::prelude::*;

        use super::super::*;
        use crate::params::{ClassParams, Defaults};
        use crate::plan::plan_volume;

        const TEMPLATES: &[&str] = &[
            "${.PVC.labels.team}/${.PVC.annotations.folder}",
            "${.PVC.namespace}-${.PVC.name}",
            "${.PVC.annotations.folder}",
            "${.PVC.namespace}/${.PVC.labels.team}",
            "${.PVC.name}",
            "shared/${.PVC.labels.team}",
            "${.PVC.annotations.folder}/${.PV.name}",
        ];

        fn claim(
            ns: &str,
            name: &str,
            uid: &str,
            team: &str,
            folder: &str,
        ) -> PersistentVolumeClaim {
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    uid: Some(uid.into()),
                    labels: Some(BTreeMap::from([("team".into(), team.into())])),
                    annotations: Some(BTreeMap::from([("folder".into(), folder.into())])),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteMany".into()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".into(),
                            Quantity("1Gi".into()),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                status: None,
            }
        }

        fn name() -> impl Strategy<Value = String> {
            "[a-z]([a-z0-9-]{0,6}[a-z0-9])?"
        }

        fn folder() -> impl Strategy<Value = String> {
            prop_oneof![
                name(),
                (name(), name()).prop_map(|(a, b)| format!("{a}/{b}")),
                (name(), name(), name()).prop_map(|(a, b, c)| format!("{a}/{b}/{c}")),
            ]
        }

        proptest! {
            /// Whatever two tenants put in their claims, the second one's directory never
            /// equals, contains or lies inside the first one's under the default policy:
            /// either they render apart, or the second is refused.
            #[test]
            fn two_namespaces_never_share_a_directory(
                t in 0..TEMPLATES.len(),
                (ns1, ns2) in (name(), name()).prop_filter("two namespaces", |(a, b)| a != b),
                (n1, n2) in (name(), name()),
                (team1, team2) in (name(), name()),
                (f1, f2) in (folder(), folder()),
            ) {
                let class = StorageClass {
                    metadata: ObjectMeta { name: Some("c".into()), ..Default::default() },
                    provisioner: "p".into(),
                    parameters: Some(BTreeMap::from([("pathPattern".into(), TEMPLATES[t].into())])),
                    ..Default::default()
                };
                let defaults = Defaults { server: Some("10.0.0.1".into()), share: Some("/srv".into()) };
                let first = plan_volume(&claim(&ns1, &n1, "u1", &team1, &f1), &class, &defaults, "p");
                let second = plan_volume(&claim(&ns2, &n2, "u2", &team2, &f2), &class, &defaults, "p");
                let (Ok(first), Ok(second)) = (first, second) else { return Ok(()) };
                let params = ClassParams::parse(class.parameters.as_ref().unwrap(), &defaults).unwrap();
                let (a, b) = (first.full_path(), second.full_path());
                let verdict = check(
                    "/srv",
                    &b,
                    &ns2,
                    params.sharing,
                    false,
                    [Occupant { name: "first", path: &a, namespace: Some(&ns1), releasing: false }],
                );
                let overlap = nests(&a, &b) || nests(&b, &a);
                prop_assert_eq!(verdict.is_err(), overlap, "{} vs {}", a, b);
            }
        }
    }
}

//! Whether a claim may start from an archive, and what is left to do: the pure half of
//! restoring. A claim asks with the annotation [`ANN_RESTORE_FROM`] naming an archive
//! (its key, as `audit` lists it); only an archive recorded for the same namespace and
//! the share the claim's class targets is moved into the new volume's directory.
//! The steps are in `controller/restore.rs`.

use thiserror::Error;

use super::archive::{ArchiveClaim, ArchiveRecord, Purpose, RecordError};
use crate::backend::Target;
use crate::path::RelPath;

pub const ANN_RESTORE_FROM: &str = "nfs3-provisioner.io/restore-from";

/// The archive name a claim asks for, if it asks (an empty value asks for nothing).
pub fn requested(pvc: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> Option<&str> {
    pvc.metadata
        .annotations
        .as_ref()?
        .get(ANN_RESTORE_FROM)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// Why a claim does not get the archive it names; the text reaches its events.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RestoreRefusal {
    #[error(
        "archive name {0:?} is not a name: it must be one path segment as `audit` lists it (no \"/\", not \".\" or \"..\", no control characters)"
    )]
    BadName(String),
    #[error("no archive {0:?} of this namespace is recorded on this StorageClass's share")]
    NoRecord(String),
    #[error("the record of archive {name:?} cannot be trusted: {why}; nothing was moved")]
    BadRecord { name: String, why: String },
    /// Worded as `NoRecord`: a tenant learns nothing of other namespaces' archives.
    #[error("no archive {name:?} of this namespace is recorded on this StorageClass's share")]
    OtherNamespace { name: String, namespace: String },
    #[error(
        "archive {name:?} is on {recorded}, not on {wanted}, the share this StorageClass targets"
    )]
    OtherShare {
        name: String,
        recorded: String,
        wanted: String,
    },
    #[error("archive {0:?} is recorded but its directory is not there (yet)")]
    Missing(String),
    #[error("archive {name:?} is being {what}")]
    Taken { name: String, what: String },
    #[error("archive {name:?} went missing after this claim took it; nothing was moved")]
    Vanished { name: String },
    #[error("directory {0} already exists; an archive is restored into a new directory only")]
    TargetExists(String),
}

impl RestoreRefusal {
    /// True when waiting can help: a reclaim archiving right now writes the record and
    /// then renames, and another claim or an expiry holding the archive finishes.
    pub fn may_change(&self) -> bool {
        matches!(
            self,
            Self::NoRecord(_) | Self::Missing(_) | Self::Taken { .. }
        )
    }
}

/// The name must be a key as `archive_key` makes it: one plain segment.
pub fn check_name(name: &str) -> Result<(), RestoreRefusal> {
    let bad = name.contains('/')
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.chars().any(char::is_control)
        || RelPath::parse(name).is_err();
    if bad {
        return Err(RestoreRefusal::BadName(name.to_string()));
    }
    Ok(())
}

/// The claim that asks, and the volume it is to get.
pub struct Want<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub claim_uid: &'a str,
    pub target: &'a Target,
    pub directory: &'a RelPath,
}

/// What was found on the share, read in this order: the claim on the archive, the
/// record, then the archive and the new directory.
pub struct Found<'a> {
    pub claim: Option<Result<&'a ArchiveClaim, &'a RecordError>>,
    pub record: Option<Result<&'a ArchiveRecord, &'a RecordError>>,
    pub archive_exists: bool,
    pub target_exists: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RestoreStep {
    /// Take the archive (exclusively), then rename it to the new directory.
    Take { archive: RelPath },
    /// This claim holds the archive already (an earlier attempt): rename, which is
    /// idempotent.
    Rename { archive: RelPath },
    /// An earlier attempt moved it: only the record and the claim are left to remove.
    Done { archive: RelPath },
}

/// The archive named by a record or a claim: only a path that parses and whose leaf is
/// an archive's name is ever moved.
fn archive_path(name: &str, raw: &str) -> Result<RelPath, RestoreRefusal> {
    let bad = |why: String| RestoreRefusal::BadRecord {
        name: name.to_string(),
        why,
    };
    let path = RelPath::parse(raw).map_err(|e| bad(e.to_string()))?;
    if !path.leaf().starts_with(super::ARCHIVE_PREFIX) {
        return Err(bad(format!("{raw:?} is not an archive's name")));
    }
    Ok(path)
}

pub fn decide(want: &Want<'_>, found: &Found<'_>) -> Result<RestoreStep, RestoreRefusal> {
    let name = want.name;
    check_name(name)?;
    match found.claim {
        Some(Ok(c)) if c.restores_for(want.claim_uid) => {
            // Ours: the record may be gone already (removed after the rename); the claim
            // names the archive.
            let archive = archive_path(name, &c.archive)?;
            return match (found.archive_exists, found.target_exists) {
                (true, _) => Ok(RestoreStep::Rename { archive }),
                (false, true) => Ok(RestoreStep::Done { archive }),
                (false, false) => Err(RestoreRefusal::Vanished {
                    name: name.to_string(),
                }),
            };
        }
        Some(Ok(c)) => {
            let what = match (c.purpose, &c.restore) {
                (Purpose::Expire, _) => "removed by archive retention".to_string(),
                (Purpose::Restore, Some(r)) if r.namespace == want.namespace => {
                    format!("restored by claim {:?}", r.claim)
                }
                (Purpose::Restore, _) => "restored by another claim".to_string(),
            };
            return Err(RestoreRefusal::Taken {
                name: name.to_string(),
                what,
            });
        }
        Some(Err(e)) => {
            return Err(RestoreRefusal::BadRecord {
                name: name.to_string(),
                why: format!("its claim file: {e}"),
            });
        }
        None => {}
    }
    let rec = match found.record {
        None => return Err(RestoreRefusal::NoRecord(name.to_string())),
        Some(Err(e)) => {
            return Err(RestoreRefusal::BadRecord {
                name: name.to_string(),
                why: e.to_string(),
            });
        }
        Some(Ok(r)) => r,
    };
    if rec.namespace != want.namespace || want.namespace.is_empty() {
        return Err(RestoreRefusal::OtherNamespace {
            name: name.to_string(),
            namespace: want.namespace.to_string(),
        });
    }
    let same_share = rec.server == want.target.server && rec.share == want.target.share;
    if !same_share {
        return Err(RestoreRefusal::OtherShare {
            name: name.to_string(),
            recorded: format!("{}:{}", rec.server, rec.share),
            wanted: want.target.to_string(),
        });
    }
    let archive = archive_path(name, &rec.archive)?;
    if !found.archive_exists {
        return Err(RestoreRefusal::Missing(name.to_string()));
    }
    if found.target_exists {
        return Err(RestoreRefusal::TargetExists(want.directory.to_string()));
    }
    Ok(RestoreStep::Take { archive })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::archive::{RestoreTo, VERSION};

    fn target(share: &str) -> Target {
        Target {
            server: "10.0.0.5".into(),
            share: share.into(),
            port: None,
            mount_port: None,
        }
    }

    fn rec(namespace: &str, share: &str) -> ArchiveRecord {
        ArchiveRecord {
            version: VERSION,
            namespace: namespace.into(),
            claim: "data".into(),
            claim_uid: "old".into(),
            volume: "pvc-old".into(),
            class: "nfs".into(),
            server: "10.0.0.5".into(),
            share: share.into(),
            directory: "team-a-data-pvc-old".into(),
            archive: "archived-team-a-data-pvc-old".into(),
            archived_at: 1,
        }
    }

    fn claim(purpose: Purpose, uid: &str, ns: &str) -> ArchiveClaim {
        let a = RelPath::parse("archived-team-a-data-pvc-old").unwrap();
        let to = (purpose == Purpose::Restore).then(|| RestoreTo {
            namespace: ns.into(),
            claim: "other".into(),
            claim_uid: uid.into(),
            volume: format!("pvc-{uid}"),
            directory: "d".into(),
        });
        ArchiveClaim::new(purpose, &a, to, 2)
    }

    #[test]
    fn restore_decisions() {
        let t = target("/srv/k8s");
        let dir = RelPath::parse("team-a-back-pvc-new").unwrap();
        let want = |name| Want {
            name,
            namespace: "team-a",
            claim_uid: "new",
            target: &t,
            directory: &dir,
        };
        let archive = RelPath::parse("archived-team-a-data-pvc-old").unwrap();
        let name = "archived-team-a-data-pvc-old";
        let good = rec("team-a", "/srv/k8s");
        let other_ns = rec("team-b", "/srv/k8s");
        let other_share = rec("team-a", "/srv/other");
        let syntax = RecordError::Syntax("eof".into());
        let mine = claim(Purpose::Restore, "new", "team-a");
        let theirs = claim(Purpose::Restore, "x", "team-a");
        let foreign = claim(Purpose::Restore, "x", "team-b");
        let expiring = claim(Purpose::Expire, "", "");
        let found = |c, r, a, t| Found {
            claim: c,
            record: r,
            archive_exists: a,
            target_exists: t,
        };
        use RestoreRefusal::*;
        use RestoreStep::*;
        let cases: Vec<(&str, Found<'_>, Result<RestoreStep, RestoreRefusal>)> = vec![
            (
                "the first attempt takes it",
                found(None, Some(Ok(&good)), true, false),
                Ok(Take {
                    archive: archive.clone(),
                }),
            ),
            (
                "another namespace's archive",
                found(None, Some(Ok(&other_ns)), true, false),
                Err(OtherNamespace {
                    name: name.into(),
                    namespace: "team-a".into(),
                }),
            ),
            (
                "an archive on another share",
                found(None, Some(Ok(&other_share)), true, false),
                Err(OtherShare {
                    name: name.into(),
                    recorded: "10.0.0.5:/srv/other".into(),
                    wanted: "10.0.0.5:/srv/k8s".into(),
                }),
            ),
            (
                "no record",
                found(None, None, true, false),
                Err(NoRecord(name.into())),
            ),
            (
                "a record that does not parse",
                found(None, Some(Err(&syntax)), true, false),
                Err(BadRecord {
                    name: name.into(),
                    why: "unreadable record: eof".into(),
                }),
            ),
            (
                "recorded, not yet renamed",
                found(None, Some(Ok(&good)), false, false),
                Err(Missing(name.into())),
            ),
            (
                "the new directory exists already",
                found(None, Some(Ok(&good)), true, true),
                Err(TargetExists(dir.to_string())),
            ),
            (
                "a retry after taking it",
                found(Some(Ok(&mine)), Some(Ok(&good)), true, false),
                Ok(Rename {
                    archive: archive.clone(),
                }),
            ),
            (
                "a retry after the rename, record already removed",
                found(Some(Ok(&mine)), None, false, true),
                Ok(Done {
                    archive: archive.clone(),
                }),
            ),
            (
                "taken, then gone from under us",
                found(Some(Ok(&mine)), Some(Ok(&good)), false, false),
                Err(Vanished { name: name.into() }),
            ),
            (
                "another claim of the namespace won",
                found(Some(Ok(&theirs)), Some(Ok(&good)), true, false),
                Err(Taken {
                    name: name.into(),
                    what: "restored by claim \"other\"".into(),
                }),
            ),
            (
                "another namespace's claim is not named",
                found(Some(Ok(&foreign)), Some(Ok(&good)), true, false),
                Err(Taken {
                    name: name.into(),
                    what: "restored by another claim".into(),
                }),
            ),
            (
                "retention holds it",
                found(Some(Ok(&expiring)), Some(Ok(&good)), true, false),
                Err(Taken {
                    name: name.into(),
                    what: "removed by archive retention".into(),
                }),
            ),
        ];
        for (what, f, expected) in cases {
            assert_eq!(decide(&want(name), &f), expected, "{what}");
        }
        for bad in ["a/b", "..", ".", "", "x\u{7}", ".nfs3-provisioner"] {
            let f = found(None, Some(Ok(&good)), true, false);
            assert!(matches!(decide(&want(bad), &f), Err(BadName(_))), "{bad:?}");
        }
    }

    #[test]
    fn only_waiting_can_help_some_refusals() {
        assert!(RestoreRefusal::NoRecord("a".into()).may_change());
        assert!(RestoreRefusal::Missing("a".into()).may_change());
        assert!(
            !RestoreRefusal::OtherNamespace {
                name: "a".into(),
                namespace: "b".into()
            }
            .may_change()
        );
        assert!(!RestoreRefusal::BadName("a/b".into()).may_change());
    }
}

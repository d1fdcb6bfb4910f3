//! Who owned an archive: the record written (in the provisioner's metadata directory on
//! the share, where tenants cannot write) just before a released volume's directory is
//! renamed to its archive, read back to restore it and to expire it; the claim a
//! restore or an expiry puts on an archive so only one of them acts; and the name
//! (`key`) an archive goes by.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::fnv1a;
use crate::path::RelPath;

/// Subdirectory of the metadata directory holding one record per archive.
pub const RECORDS: &str = "archives";
/// Subdirectory holding the claim a restore or expiry takes on an archive.
pub const CLAIMS: &str = "archive-claims";
/// Larger files there are not ours: refused unread.
pub const MAX_RECORD_BYTES: u64 = 16 * 1024;
/// The version of records and claims this provisioner writes.
pub const VERSION: u32 = 1;
/// Longest key kept readable; longer ones end in a hash.
const MAX_PLAIN_KEY: usize = 200;

/// What reclaim knew of an archive's volume when it archived it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveRecord {
    pub version: u32,
    pub namespace: String,
    pub claim: String,
    pub claim_uid: String,
    pub volume: String,
    pub class: String,
    pub server: String,
    pub share: String,
    /// The volume's directory before it was archived, relative to the share.
    pub directory: String,
    /// The archive's path, relative to the share.
    pub archive: String,
    /// Seconds since the epoch.
    pub archived_at: u64,
}

/// Who is restoring or expiring an archive. Made with an exclusive create: of two
/// claims restoring one archive, or a restore and an expiry, exactly one gets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveClaim {
    pub version: u32,
    pub purpose: Purpose,
    /// The archive's path, so the holder can finish without the record.
    pub archive: String,
    /// For a restore: the claim, its PV and the directory the archive goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreTo>,
    pub at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Purpose {
    Restore,
    Expire,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTo {
    pub namespace: String,
    pub claim: String,
    pub claim_uid: String,
    pub volume: String,
    pub directory: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("unreadable record: {0}")]
    Syntax(String),
    #[error("record of version {0}, newer than this provisioner knows")]
    Version(u32),
    #[error("the record names archive {recorded:?}, not this one")]
    OtherArchive { recorded: String },
}

impl ArchiveRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses a record read from `key`, and checks it is about the archive that key
    /// names: a record copied or renamed by hand names another one.
    pub fn parse(bytes: &[u8], key: &str) -> Result<Self, RecordError> {
        let rec: Self =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Syntax(e.to_string()))?;
        if rec.version > VERSION {
            return Err(RecordError::Version(rec.version));
        }
        let matches = RelPath::parse(&rec.archive).is_ok_and(|a| archive_key(&a) == key);
        if !matches {
            return Err(RecordError::OtherArchive {
                recorded: rec.archive,
            });
        }
        Ok(rec)
    }

    /// Whether a retention of `keep` has passed at `now` (seconds since the epoch).
    pub fn expired(&self, keep: Duration, now: u64) -> bool {
        now.saturating_sub(self.archived_at) > keep.as_secs()
    }
}

impl ArchiveClaim {
    pub fn new(purpose: Purpose, archive: &RelPath, restore: Option<RestoreTo>, at: u64) -> Self {
        Self {
            version: VERSION,
            purpose,
            archive: archive.to_string(),
            restore,
            at,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        let c: Self =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Syntax(e.to_string()))?;
        if c.version > VERSION {
            return Err(RecordError::Version(c.version));
        }
        Ok(c)
    }

    /// Whether this is the restore of the claim with uid `claim_uid`.
    pub fn restores_for(&self, claim_uid: &str) -> bool {
        self.purpose == Purpose::Restore
            && self
                .restore
                .as_ref()
                .is_some_and(|r| !claim_uid.is_empty() && r.claim_uid == claim_uid)
    }
}

/// The name an archive goes by: its path relative to the share, with `%`, `/` and `~`
/// escaped (`%25`, `%2F`, `%7E`), so one name is one file and never a path; an archive
/// in the share root is named as it is listed. Past 200 bytes, the start and a hash of
/// the whole after a `~`, which no escaped name contains. The record inside names the
/// archive in full, so two archives can never share one record unnoticed.
pub fn archive_key(archive: &RelPath) -> String {
    let raw = archive.to_string();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '~' => out.push_str("%7E"),
            c => out.push(c),
        }
    }
    if out.len() <= MAX_PLAIN_KEY {
        return out;
    }
    let mut cut = MAX_PLAIN_KEY - 17;
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    // A cut inside an escape would leave a stray `%`: harmless, the hash keeps it unique.
    format!("{}~{:016x}", &out[..cut], fnv1a(raw.as_bytes()))
}

/// Where the record of an archive with `key` is.
pub fn record_path(key: &str) -> Result<RelPath, crate::path::PathError> {
    RelPath::metadata(&[RECORDS, key])
}

/// Where the claim on an archive with `key` is.
pub fn claim_path(key: &str) -> Result<RelPath, crate::path::PathError> {
    RelPath::metadata(&[CLAIMS, key])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(archive: &str) -> ArchiveRecord {
        ArchiveRecord {
            version: VERSION,
            namespace: "team-a".into(),
            claim: "data".into(),
            claim_uid: "0b5e".into(),
            volume: "pvc-0b5e".into(),
            class: "nfs".into(),
            server: "10.0.0.5".into(),
            share: "/srv/k8s".into(),
            directory: "team-a-data-pvc-0b5e".into(),
            archive: archive.into(),
            archived_at: 1_700_000_000,
        }
    }

    #[test]
    fn keys_are_names_never_paths_and_never_collide() {
        let k = |s: &str| archive_key(&RelPath::parse(s).unwrap());
        assert_eq!(
            k("archived-team-a-data-pvc-1"),
            "archived-team-a-data-pvc-1"
        );
        assert_eq!(
            k("team-a/archived-data-pvc-1"),
            "team-a%2Farchived-data-pvc-1"
        );
        // The escape itself is escaped: a name holding "%2F" is not a path holding "/".
        assert_eq!(k("a%2Fb"), "a%252Fb");
        assert_ne!(k("a%2Fb"), k("a/b"));
        assert_eq!(k("a~b"), "a%7Eb");
        let long_a = format!("ns/{}", "x".repeat(250));
        let long_b = format!("ns/{}y", "x".repeat(249));
        let (ka, kb) = (k(&long_a), k(&long_b));
        assert!(ka.len() <= 255 && ka.contains('~'), "{ka}");
        assert_ne!(ka, kb);
        assert_eq!(ka, k(&long_a));
        for key in [ka, k("team-a/archived-data-pvc-1")] {
            assert!(!key.contains('/'));
            assert!(record_path(&key).is_ok());
        }
    }

    #[test]
    fn records_round_trip_and_must_name_their_archive() {
        let rec = record("team-a/archived-data-pvc-0b5e");
        let key = "team-a%2Farchived-data-pvc-0b5e";
        assert_eq!(ArchiveRecord::parse(&rec.to_bytes(), key).unwrap(), rec);
        assert!(matches!(
            ArchiveRecord::parse(&rec.to_bytes(), "archived-other"),
            Err(RecordError::OtherArchive { .. })
        ));
        assert!(matches!(
            ArchiveRecord::parse(b"", key),
            Err(RecordError::Syntax(_))
        ));
        assert!(matches!(
            ArchiveRecord::parse(b"{\"namespace\": \"team-a\"", key),
            Err(RecordError::Syntax(_))
        ));
        let mut future = rec.clone();
        future.version = 9;
        assert_eq!(
            ArchiveRecord::parse(&future.to_bytes(), key),
            Err(RecordError::Version(9))
        );
        // A record naming a path nobody may have is refused like any other mismatch.
        let evil = record("../etc");
        assert!(ArchiveRecord::parse(&evil.to_bytes(), "..%2Fetc").is_err());
    }

    #[test]
    fn expiry_counts_from_the_recorded_time() {
        let rec = record("archived-x");
        let day = Duration::from_secs(86400);
        assert!(!rec.expired(day, rec.archived_at + 86400));
        assert!(rec.expired(day, rec.archived_at + 86401));
        // A clock behind the record's time never expires it.
        assert!(!rec.expired(Duration::ZERO, rec.archived_at - 10));
    }

    #[test]
    fn claims_round_trip_and_say_whose_they_are() {
        let a = RelPath::parse("archived-x").unwrap();
        let to = RestoreTo {
            namespace: "team-a".into(),
            claim: "back".into(),
            claim_uid: "u-1".into(),
            volume: "pvc-u-1".into(),
            directory: "team-a-back-pvc-u-1".into(),
        };
        let c = ArchiveClaim::new(Purpose::Restore, &a, Some(to), 5);
        let back = ArchiveClaim::parse(&c.to_bytes()).unwrap();
        assert_eq!(back, c);
        assert!(back.restores_for("u-1"));
        assert!(!back.restores_for("u-2"));
        assert!(!back.restores_for(""));
        let e = ArchiveClaim::new(Purpose::Expire, &a, None, 5);
        assert!(
            !ArchiveClaim::parse(&e.to_bytes())
                .unwrap()
                .restores_for("u-1")
        );
    }
}

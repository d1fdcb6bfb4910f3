//! The `audit` command: compare the PVs this provisioner made with what is on their shares.
//!
//! It lists the PVs provisioned by this provisioner name, groups them by the server and
//! share their annotations record (plus any `--server`/`--share` pair given), walks each
//! share and reports:
//!
//! - **missing**: PVs of ours whose directory is not there (or is not a directory);
//! - **orphans**: entries no PV points at that are neither archives nor parents of a PV
//!   directory: top-level entries, and the other children of PV directories' parents;
//! - **archives**: `archived-*` directories with their age, from their last change (a rename counts), and with
//!   `--prune-archives-older-than` the ones old enough to prune. Pruning is a dry run
//!   unless `--apply` is given.
//!
//! What the walk looks at: the share root, the parents of PV directories (so nested
//! templates like `ns/name` are followed), and one level into each orphan directory, so a
//! parent that holds nothing but archives (`ns/archived-…` once every claim of `ns` is gone)
//! counts as a home of archives rather than an orphan. It never lists the inside of a
//! volume except to reach a volume nested in it, and never reports what it finds there.
//!
//! Every PV in the cluster, ours or not and in any phase, protects what it points at: a
//! directory a PV points at is never an orphan nor an archive, and an archive is never
//! pruned while a PV points at it, inside it or above it, or while a PV whose name the
//! archive carries (`archived-…-pvc-<uid>`) still exists. As in reclaim, PV paths are
//! compared without the server, since one export can be reached under several names.
//!
//! The decisions ([`compare`]) are pure and work on a [`Snapshot`] of the share; the I/O
//! is in [`audit_share`] (scan, compare, then prune with `apply`) and [`audit`] (the
//! command). Exit code: 0 when clean, 1 when something is missing or orphaned, 2 on errors.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Client;
use kube::api::{Api, ListParams};
use serde::Serialize;
use thiserror::Error;

use crate::backend::{BackendConfig, BackendError, Kind, Removed, Share, Shares, Stat, Target};
use crate::config::{AuditArgs, OutputFormat};
use crate::error::BoxError;
use crate::path::{PathError, RelPath, normalize_share};
use crate::plan::record::provisioned_by;
use crate::plan::{ARCHIVE_PREFIX, Recorded};
use crate::units::human_age;

/// Exit code when the audit itself failed (and clap's for a bad command line).
pub const EXIT_ERROR: u8 = 2;
/// Exit code when the audit found missing directories or orphans.
pub const EXIT_FINDINGS: u8 = 1;

/// Entries filesystems make themselves at their root, never reported as orphans there.
const SYSTEM_ENTRIES: &[&str] = &["lost+found", ".snapshot", ".zfs"];

/// Lookups in flight at once while scanning one directory.
const LOOKUPS_IN_FLIGHT: usize = 8;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot list PersistentVolumes: {0}")]
    ListVolumes(#[source] kube::Error),
    #[error("--server and --share go in pairs; got {servers} --server and {shares} --share")]
    Unpaired { servers: usize, shares: usize },
    #[error("--share {share:?}: {source}")]
    Share { share: String, source: PathError },
    #[error("path {path:?} on the share: {source}")]
    Path { path: String, source: PathError },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the report as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

// ---------------------------------------------------------------------------------------
// The report

#[derive(Debug, Serialize)]
pub struct Report {
    pub provisioner: String,
    /// `--prune-archives-older-than`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_older_than_seconds: Option<u64>,
    pub apply: bool,
    pub shares: Vec<ShareReport>,
    /// PVs of ours whose annotations do not say where their data is: not audited.
    pub unreadable: Vec<Unreadable>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Unreadable {
    pub pv: String,
    pub error: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ShareReport {
    pub server: String,
    pub share: String,
    /// The directory the audit was limited to, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub under: Option<String>,
    /// PVs of ours whose directories were checked on this share.
    pub volumes: usize,
    /// PVs whose directory is the audited root or above it: everything there is their
    /// data, so only the way to nested PV directories was looked at.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub covered_by: Vec<String>,
    pub missing: Vec<Missing>,
    pub orphans: Vec<Orphan>,
    pub archives: Vec<Archive>,
    /// Why this share could not be audited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Missing {
    pub pv: String,
    pub phase: Option<String>,
    /// `namespace/name` of the claim the PV is bound to.
    pub claim: Option<String>,
    /// Whether the PV is being deleted (its directory may have just been reclaimed).
    pub deleting: bool,
    pub directory: String,
    pub reason: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Orphan {
    pub path: String,
    /// `directory`, `file`, `symlink`, `other`, or `unknown` (a name no path can hold).
    pub kind: &'static str,
    /// For directories: whether they are empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty: Option<bool>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Archive {
    pub path: String,
    /// Seconds since its last change (mtime or ctime; archiving sets ctime).
    pub age_seconds: u64,
    #[serde(flatten)]
    pub action: ArchiveAction,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ArchiveAction {
    /// Younger than the pruning age, or no pruning asked for.
    Keep,
    /// Never pruned: these PVs point at it, inside it or above it, or it carries their name.
    Protected {
        by: Vec<String>,
    },
    /// Old enough; removed only with `--apply`.
    WouldPrune,
    Pruned {
        entries: u64,
    },
    PruneFailed {
        error: String,
    },
    /// It changed between the scan and the removal, so it was left alone.
    Changed {
        reason: String,
    },
}

impl ShareReport {
    fn new(target: &Target, under: Option<&RelPath>) -> Self {
        Self {
            server: target.server.clone(),
            share: target.share.clone(),
            under: under.map(ToString::to_string),
            ..Default::default()
        }
    }

    fn failed(target: &Target, under: Option<&RelPath>, error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::new(target, under)
        }
    }

    fn has_errors(&self) -> bool {
        self.error.is_some()
            || self
                .archives
                .iter()
                .any(|a| matches!(a.action, ArchiveAction::PruneFailed { .. }))
    }
}

impl Report {
    /// 2 when anything could not be audited or pruned, else 1 when something is missing
    /// or orphaned, else 0.
    pub fn exit_code(&self) -> u8 {
        if !self.unreadable.is_empty() || self.shares.iter().any(ShareReport::has_errors) {
            EXIT_ERROR
        } else if self
            .shares
            .iter()
            .any(|s| !s.missing.is_empty() || !s.orphans.is_empty())
        {
            EXIT_FINDINGS
        } else {
            0
        }
    }

    pub fn render(&self, format: OutputFormat) -> Result<String, AuditError> {
        Ok(match format {
            OutputFormat::Text => self.text(),
            OutputFormat::Json => serde_json::to_string_pretty(self)? + "\n",
            OutputFormat::Yaml => serde_yaml::to_string(self)?,
        })
    }

    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "audit of the volumes provisioned by {}",
            self.provisioner
        );
        for s in &self.shares {
            let _ = write!(w, "\n{}:{}", s.server, s.share);
            if let Some(u) = &s.under {
                let _ = write!(w, " (under {u})");
            }
            let _ = writeln!(w, ": {} volume(s)", s.volumes);
            if let Some(e) = &s.error {
                let _ = writeln!(w, "  ERROR    {e}");
                continue;
            }
            if !s.covered_by.is_empty() {
                let _ = writeln!(
                    w,
                    "  note     inside the volume of {}: only nested volumes were checked",
                    s.covered_by.join(", ")
                );
            }
            for m in &s.missing {
                let _ = writeln!(
                    w,
                    "  MISSING  {} ({}, claim {}{}): {} {}",
                    m.pv,
                    m.phase.as_deref().unwrap_or("no phase"),
                    m.claim.as_deref().unwrap_or("none"),
                    if m.deleting { ", being deleted" } else { "" },
                    m.directory,
                    m.reason
                );
            }
            for o in &s.orphans {
                let empty = match o.empty {
                    Some(true) => ", empty",
                    _ => "",
                };
                let _ = writeln!(w, "  ORPHAN   {} ({}{empty})", o.path, o.kind);
            }
            for a in &s.archives {
                let what = match &a.action {
                    ArchiveAction::Keep => "keep".to_string(),
                    ArchiveAction::Protected { by } => format!("kept: needed by {}", by.join(", ")),
                    ArchiveAction::WouldPrune => "would prune".to_string(),
                    ArchiveAction::Pruned { entries } => format!("pruned ({entries} entries)"),
                    ArchiveAction::PruneFailed { error } => format!("PRUNE FAILED: {error}"),
                    ArchiveAction::Changed { reason } => format!("left alone: {reason}"),
                };
                let _ = writeln!(
                    w,
                    "  archive  {}  {}  {what}",
                    a.path,
                    human_age(a.age_seconds)
                );
            }
        }
        if !self.unreadable.is_empty() {
            let _ = writeln!(w, "\nnot audited (unreadable annotations):");
            for u in &self.unreadable {
                let _ = writeln!(w, "  ERROR    {}: {}", u.pv, u.error);
            }
        }
        let count = |f: fn(&ShareReport) -> usize| self.shares.iter().map(f).sum::<usize>();
        let acted = |f: fn(&ArchiveAction) -> bool| {
            self.shares
                .iter()
                .flat_map(|s| &s.archives)
                .filter(|a| f(&a.action))
                .count()
        };
        let _ = write!(
            w,
            "\nsummary: {} missing, {} orphan(s), {} archive(s)",
            count(|s| s.missing.len()),
            count(|s| s.orphans.len()),
            count(|s| s.archives.len()),
        );
        let would = acted(|a| matches!(a, ArchiveAction::WouldPrune));
        let pruned = acted(|a| matches!(a, ArchiveAction::Pruned { .. }));
        let failed = acted(|a| matches!(a, ArchiveAction::PruneFailed { .. }));
        if would > 0 {
            let _ = write!(
                w,
                ", {would} to prune (dry run: add --apply to remove them)"
            );
        }
        if pruned > 0 {
            let _ = write!(w, ", {pruned} pruned");
        }
        if failed > 0 {
            let _ = write!(w, ", {failed} failed to prune");
        }
        let errors = self.shares.iter().filter(|s| s.error.is_some()).count();
        if errors > 0 {
            let _ = write!(w, ", {errors} share(s) not audited");
        }
        let _ = writeln!(w);
        out
    }
}

// ---------------------------------------------------------------------------------------
// What the walk saw

/// One listed name, as the scan saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// What a LOOKUP of it returned.
    Stat(Stat),
    /// Not looked up: there was no need, or the name cannot be spelled as a path.
    Unknown,
    /// Listed, then gone before the lookup.
    Gone,
}

impl Entry {
    fn is_dir(&self) -> bool {
        matches!(self, Entry::Stat(s) if s.kind == Kind::Dir)
    }
}

/// The directories a scan listed, by path relative to the share root (`""` for the root),
/// each with its entries. Built by [`audit_share`]; tests build it by hand.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub dirs: BTreeMap<String, BTreeMap<String, Entry>>,
}

/// Where PVs point, as paths relative to one share's root (`[]` is the root itself).
struct Pointers {
    at: BTreeMap<Vec<String>, Vec<String>>,
    /// Names of existing dynamically provisioned PVs (`pvc-…`), which archives carry.
    names: Vec<String>,
}

/// The path of `nfs_path` inside `share`, or `None` when it lies elsewhere.
fn relative(share: &str, nfs_path: &str) -> Option<Vec<String>> {
    let full = normalize_share(nfs_path).ok()?;
    let rest = if share == "/" {
        full.as_str()
    } else {
        full.strip_prefix(share)?
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return None; // `/srv/k8s-other` is not inside `/srv/k8s`
    }
    Some(
        rest.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

impl Pointers {
    fn new(share: &str, pvs: &[PersistentVolume]) -> Self {
        let mut at: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
        let mut names = Vec::new();
        for pv in pvs {
            let name = pv.metadata.name.clone().unwrap_or_default();
            if name.starts_with("pvc-") {
                names.push(name.clone());
            }
            let path = pv
                .spec
                .as_ref()
                .and_then(|s| s.nfs.as_ref())
                .map(|n| &n.path);
            if let Some(rel) = path.and_then(|p| relative(share, p)) {
                at.entry(rel).or_default().push(name);
            }
        }
        Self { at, names }
    }

    /// PVs whose directory is exactly `p`.
    fn at(&self, p: &[String]) -> &[String] {
        self.at.get(p).map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether some PV's directory lies strictly below `p`.
    fn has_below(&self, p: &[String]) -> bool {
        // Paths below `p` sort right after it, before anything else greater than it.
        self.at
            .range::<[String], _>((Bound::Excluded(p), Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(p))
    }

    /// PVs whose directory is `p` or one of its ancestors (the share root included).
    fn covering(&self, p: &[String]) -> Vec<String> {
        (0..=p.len())
            .flat_map(|i| self.at(&p[..i]))
            .cloned()
            .collect()
    }

    /// PVs whose directory is `p` or lies below it.
    fn at_or_below(&self, p: &[String]) -> Vec<String> {
        self.at
            .range::<[String], _>((Bound::Included(p), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(p))
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }

    /// Why the archive at `p` must never be pruned: the PVs that point at it, inside it
    /// or above it, and the existing PVs whose name it carries.
    fn protecting(&self, p: &[String]) -> Vec<String> {
        let leaf = p.last().map(String::as_str).unwrap_or_default();
        let by: BTreeSet<String> = self
            .covering(p)
            .into_iter()
            .chain(self.at_or_below(p))
            .chain(
                self.names
                    .iter()
                    .filter(|n| leaf.contains(n.as_str()))
                    .cloned(),
            )
            .collect();
        by.into_iter().collect()
    }
}

/// What an entry is to the walk, before looking it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// A PV points at it.
    Volume,
    /// A PV points somewhere below it.
    Parent,
    /// Part of a volume's data, or a filesystem's own entry: not looked at.
    Ignored,
    /// Anything else: an archive or an orphan.
    Other,
}

fn is_archive_name(name: &str) -> bool {
    name.starts_with(ARCHIVE_PREFIX)
}

fn child_of(dir: &[String], name: &str) -> Vec<String> {
    let mut p = dir.to_vec();
    p.push(name.to_string());
    p
}

/// `owned`: whether `child`'s directory is a volume or inside one.
fn class_of(ptrs: &Pointers, child: &[String], owned: bool) -> Class {
    let name = child.last().map(String::as_str).unwrap_or_default();
    if !ptrs.at(child).is_empty() {
        Class::Volume
    } else if ptrs.has_below(child) {
        Class::Parent
    } else if owned || (child.len() == 1 && SYSTEM_ENTRIES.contains(&name)) {
        Class::Ignored
    } else {
        Class::Other
    }
}

/// Whether the walk lists `child` next, and if so whether it is inside a volume.
fn descend(
    ptrs: &Pointers,
    child: &[String],
    class: Class,
    owned: bool,
    is_dir: bool,
) -> Option<bool> {
    match class {
        Class::Volume if is_dir && ptrs.has_below(child) => Some(true),
        Class::Parent if is_dir => Some(owned),
        _ => None,
    }
}

/// Whether the walk peeks into `child`, to tell an orphan from a home of archives.
fn peeks(class: Class, name: &str, is_dir: bool) -> bool {
    class == Class::Other && is_dir && !is_archive_name(name)
}

/// A directory holding nothing but archives (and at least one).
fn holds_only_archives(entries: &BTreeMap<String, Entry>) -> bool {
    let archive = |(n, e): (&String, &Entry)| {
        is_archive_name(n)
            && matches!(
                e,
                Entry::Gone
                    | Entry::Stat(Stat {
                        kind: Kind::Dir,
                        ..
                    })
            )
    };
    entries.iter().all(archive) && entries.values().any(Entry::is_dir)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Dir => "directory",
        Kind::File => "file",
        Kind::Symlink => "symlink",
        Kind::Other => "other",
    }
}

fn key(p: &[String]) -> String {
    p.join("/")
}

/// Why the directory at `dir` is not usable, from the snapshot, or `None` when it is a
/// directory. Every parent between `root` and it was listed by the walk.
fn absence(snapshot: &Snapshot, root: &[String], dir: &[String]) -> Option<String> {
    for depth in root.len()..dir.len() {
        let (parent, here) = (&dir[..depth], &dir[..=depth]);
        let last = depth + 1 == dir.len();
        let Some(entries) = snapshot.dirs.get(&key(parent)) else {
            return Some(format!("was not reached: {} was not listed", key(parent)));
        };
        let what = match entries.get(&dir[depth]) {
            None | Some(Entry::Gone) => "does not exist",
            Some(Entry::Unknown) => "could not be looked up",
            Some(Entry::Stat(st)) => match st.kind {
                Kind::Dir => continue,
                Kind::Symlink => "is a symlink, not a directory",
                Kind::File => "is a file, not a directory",
                Kind::Other => "is not a directory",
            },
        };
        return Some(if last {
            what.to_string()
        } else {
            format!("(its parent {} {what})", key(here))
        });
    }
    None
}

/// Settings of one audit.
#[derive(Clone, Debug)]
pub struct Policy {
    pub provisioner: String,
    /// Archives older than this are pruned (with `apply`) or listed as to prune.
    pub prune_older_than: Option<Duration>,
    /// Actually remove what would be pruned.
    pub apply: bool,
    /// Seconds since the epoch that ages are measured from.
    pub now: i64,
}

/// PVs of this provisioner that record `target`'s server and share.
fn ours_on<'a>(
    target: &'a Target,
    provisioner: &'a str,
    pvs: &'a [PersistentVolume],
) -> impl Iterator<Item = (&'a PersistentVolume, Recorded)> + 'a {
    pvs.iter()
        .filter(move |pv| provisioned_by(&pv.metadata) == Some(provisioner))
        .filter_map(|pv| Recorded::from_pv(pv).ok().map(|r| (pv, r)))
        .filter(move |(_, r)| r.server == target.server && r.share == target.share)
}

/// The pure audit of one share: `pvs` are all the cluster's PVs, `snapshot` what a scan
/// of the share (under `under`, or all of it) saw. Archives to prune are marked
/// [`ArchiveAction::WouldPrune`]; nothing here removes anything.
pub fn compare(
    target: &Target,
    pvs: &[PersistentVolume],
    under: Option<&RelPath>,
    snapshot: &Snapshot,
    policy: &Policy,
) -> ShareReport {
    let ptrs = Pointers::new(&target.share, pvs);
    let root: Vec<String> = under.map(|u| u.segments().to_vec()).unwrap_or_default();
    let mut report = ShareReport::new(target, under);
    report.covered_by = ptrs.covering(&root);

    for (pv, rec) in ours_on(target, &policy.provisioner, pvs) {
        let dir = rec.directory.segments();
        if dir.len() <= root.len() || !dir.starts_with(&root) {
            continue;
        }
        report.volumes += 1;
        if let Some(reason) = absence(snapshot, &root, dir) {
            let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
            report.missing.push(Missing {
                pv: pv.metadata.name.clone().unwrap_or_default(),
                phase: pv.status.as_ref().and_then(|s| s.phase.clone()),
                claim: claim.map(|c| {
                    format!(
                        "{}/{}",
                        c.namespace.as_deref().unwrap_or_default(),
                        c.name.as_deref().unwrap_or_default()
                    )
                }),
                deleting: pv.metadata.deletion_timestamp.is_some(),
                directory: rec.directory.to_string(),
                reason,
            });
        }
    }

    let mut archives: Vec<(Vec<String>, i64)> = Vec::new();
    let mut queue = vec![(root.clone(), !report.covered_by.is_empty())];
    while let Some((dir, owned)) = queue.pop() {
        let Some(entries) = snapshot.dirs.get(&key(&dir)) else {
            continue;
        };
        for (name, entry) in entries {
            let child = child_of(&dir, name);
            let class = class_of(&ptrs, &child, owned);
            if let Some(inside) = descend(&ptrs, &child, class, owned, entry.is_dir()) {
                queue.push((child, inside));
                continue;
            }
            if class != Class::Other {
                continue;
            }
            match entry {
                Entry::Gone => {}
                Entry::Unknown => report.orphans.push(Orphan {
                    path: key(&child),
                    kind: "unknown",
                    empty: None,
                }),
                Entry::Stat(st) if st.kind == Kind::Dir && is_archive_name(name) => {
                    archives.push((child, st.changed));
                }
                Entry::Stat(st) if st.kind == Kind::Dir => {
                    let inner = snapshot.dirs.get(&key(&child));
                    match inner {
                        Some(inner) if holds_only_archives(inner) => {
                            for (n, e) in inner {
                                if let Entry::Stat(s) = e {
                                    archives.push((child_of(&child, n), s.changed));
                                }
                            }
                        }
                        _ => report.orphans.push(Orphan {
                            path: key(&child),
                            kind: kind_name(st.kind),
                            empty: inner.map(BTreeMap::is_empty),
                        }),
                    }
                }
                Entry::Stat(st) => report.orphans.push(Orphan {
                    path: key(&child),
                    kind: kind_name(st.kind),
                    empty: None,
                }),
            }
        }
    }

    let older_than = policy.prune_older_than.map(|d| d.as_secs());
    report.archives = archives
        .into_iter()
        .map(|(path, mtime)| {
            let age_seconds = u64::try_from(policy.now.saturating_sub(mtime)).unwrap_or(0);
            let by = ptrs.protecting(&path);
            let action = if !by.is_empty() {
                ArchiveAction::Protected { by }
            } else if older_than.is_some_and(|limit| age_seconds > limit) {
                ArchiveAction::WouldPrune
            } else {
                ArchiveAction::Keep
            };
            Archive {
                path: key(&path),
                age_seconds,
                action,
            }
        })
        .collect();
    report.orphans.sort_by(|a, b| a.path.cmp(&b.path));
    report.archives.sort_by(|a, b| a.path.cmp(&b.path));
    report.missing.sort_by(|a, b| a.pv.cmp(&b.pv));
    report
}

// ---------------------------------------------------------------------------------------
// I/O

fn rel(p: &[String]) -> Result<RelPath, AuditError> {
    RelPath::parse(&key(p)).map_err(|source| AuditError::Path {
        path: key(p),
        source,
    })
}

async fn list<S: Share>(share: &S, dir: &[String]) -> Result<Vec<String>, AuditError> {
    Ok(if dir.is_empty() {
        share.list(None).await?
    } else {
        share.list(Some(&rel(dir)?)).await?
    })
}

async fn lookup_all<S: Share>(
    share: &S,
    paths: &[Vec<String>],
) -> Result<Vec<Entry>, BackendError> {
    stream::iter(paths)
        .map(|p| async move {
            // A name that cannot be a path (a control character, too deep) is reported,
            // never looked up.
            let Ok(path) = RelPath::parse(&key(p)) else {
                return Ok(Entry::Unknown);
            };
            Ok(match share.stat(&path).await? {
                Some(st) => Entry::Stat(st),
                None => Entry::Gone,
            })
        })
        .buffered(LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await
}

/// Lists `dir` for the snapshot; with `archives_only`, looks its entries up only when
/// they are all archives (otherwise their names alone settle it).
async fn scan_dir<S: Share>(
    share: &S,
    ptrs: &Pointers,
    dir: &[String],
    owned: bool,
    archives_only: bool,
) -> Result<Vec<(String, Class, Entry)>, AuditError> {
    let names = list(share, dir).await?;
    if archives_only && !names.iter().all(|n| is_archive_name(n)) {
        return Ok(names
            .into_iter()
            .map(|n| (n, Class::Other, Entry::Unknown))
            .collect());
    }
    let wanted: Vec<(String, Class)> = names
        .into_iter()
        .map(|n| {
            let class = class_of(ptrs, &child_of(dir, &n), owned);
            (n, class)
        })
        .filter(|(_, c)| *c != Class::Ignored)
        .collect();
    let paths: Vec<Vec<String>> = wanted.iter().map(|(n, _)| child_of(dir, n)).collect();
    let entries = lookup_all(share, &paths).await?;
    Ok(wanted
        .into_iter()
        .zip(entries)
        .map(|((n, c), e)| (n, c, e))
        .collect())
}

/// Walks the share from `root` the way [`compare`] reads the result.
async fn scan<S: Share>(
    share: &S,
    ptrs: &Pointers,
    root: &[String],
) -> Result<Snapshot, AuditError> {
    let mut snap = Snapshot::default();
    let mut queue = vec![(root.to_vec(), !ptrs.covering(root).is_empty())];
    while let Some((dir, owned)) = queue.pop() {
        let mut entries = BTreeMap::new();
        for (name, class, entry) in scan_dir(share, ptrs, &dir, owned, false).await? {
            let child = child_of(&dir, &name);
            if let Some(inside) = descend(ptrs, &child, class, owned, entry.is_dir()) {
                queue.push((child, inside));
            } else if peeks(class, &name, entry.is_dir()) {
                let inner = scan_dir(share, ptrs, &child, false, true).await?;
                let inner = inner.into_iter().map(|(n, _, e)| (n, e)).collect();
                snap.dirs.insert(key(&child), inner);
            }
            entries.insert(name, entry);
        }
        snap.dirs.insert(key(&dir), entries);
    }
    Ok(snap)
}

/// Audits one share: scans it (only under `under` when given), compares it with `pvs`
/// (all the cluster's PVs) and, with `policy.apply`, prunes the archives old enough.
/// Each archive is looked up again just before its removal, and left alone if it is no
/// longer an old directory.
pub async fn audit_share<S: Share>(
    share: &S,
    target: &Target,
    pvs: &[PersistentVolume],
    under: Option<&RelPath>,
    policy: &Policy,
) -> Result<ShareReport, AuditError> {
    let ptrs = Pointers::new(&target.share, pvs);
    let root: Vec<String> = under.map(|u| u.segments().to_vec()).unwrap_or_default();
    let snapshot = scan(share, &ptrs, &root).await?;
    let mut report = compare(target, pvs, under, &snapshot, policy);
    if !policy.apply {
        return Ok(report);
    }
    let limit = policy.prune_older_than.map(|d| d.as_secs());
    for archive in &mut report.archives {
        if archive.action != ArchiveAction::WouldPrune {
            continue;
        }
        let path = RelPath::parse(&archive.path).map_err(|source| AuditError::Path {
            path: archive.path.clone(),
            source,
        })?;
        archive.action = match share.stat(&path).await {
            Err(e) => ArchiveAction::PruneFailed {
                error: e.to_string(),
            },
            Ok(None) => ArchiveAction::Changed {
                reason: "gone since the scan".into(),
            },
            Ok(Some(st)) if st.kind != Kind::Dir => ArchiveAction::Changed {
                reason: format!("now a {}", kind_name(st.kind)),
            },
            Ok(Some(st))
                if !limit.is_some_and(|l| {
                    u64::try_from(policy.now.saturating_sub(st.changed)).unwrap_or(0) > l
                }) =>
            {
                ArchiveAction::Changed {
                    reason: "modified since the scan".into(),
                }
            }
            Ok(Some(_)) => match share.remove_tree(&path).await {
                Ok(Removed::Removed { entries }) => ArchiveAction::Pruned { entries },
                Ok(Removed::AlreadyGone) => ArchiveAction::Pruned { entries: 0 },
                Err(e) => ArchiveAction::PruneFailed {
                    error: e.to_string(),
                },
            },
        };
    }
    Ok(report)
}

/// The shares to audit: those our PVs record, and the `explicit` ones. PVs of ours whose
/// annotations cannot be read come back apart.
pub fn targets(
    pvs: &[PersistentVolume],
    provisioner: &str,
    explicit: &[Target],
) -> (Vec<Target>, Vec<Unreadable>) {
    let mut by_share: BTreeMap<(String, String), Target> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for pv in pvs
        .iter()
        .filter(|pv| provisioned_by(&pv.metadata) == Some(provisioner))
    {
        match Recorded::from_pv(pv) {
            Ok(r) => {
                let t = by_share
                    .entry((r.server.clone(), r.share.clone()))
                    .or_insert_with(|| Target {
                        server: r.server.clone(),
                        share: r.share.clone(),
                        port: None,
                        mount_port: None,
                    });
                t.port = t.port.or(r.port);
                t.mount_port = t.mount_port.or(r.mount_port);
            }
            Err(e) => unreadable.push(Unreadable {
                pv: pv.metadata.name.clone().unwrap_or_default(),
                error: e.to_string(),
            }),
        }
    }
    for t in explicit {
        by_share
            .entry((t.server.clone(), t.share.clone()))
            .or_insert_with(|| t.clone());
    }
    unreadable.sort_by(|a, b| a.pv.cmp(&b.pv));
    (by_share.into_values().collect(), unreadable)
}

fn explicit_targets(args: &AuditArgs) -> Result<Vec<Target>, AuditError> {
    if args.servers.len() != args.shares.len() {
        return Err(AuditError::Unpaired {
            servers: args.servers.len(),
            shares: args.shares.len(),
        });
    }
    args.servers
        .iter()
        .zip(&args.shares)
        .map(|(server, share)| {
            Ok(Target {
                server: server.clone(),
                share: normalize_share(share).map_err(|source| AuditError::Share {
                    share: share.clone(),
                    source,
                })?,
                port: None,
                mount_port: None,
            })
        })
        .collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

async fn run_audit(args: &AuditArgs) -> Result<Report, AuditError> {
    let explicit = explicit_targets(args)?;
    let client = Client::try_default().await.map_err(AuditError::Client)?;
    let pvs = Api::<PersistentVolume>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(AuditError::ListVolumes)?
        .items;
    let policy = Policy {
        provisioner: args.provisioner_name.clone(),
        prune_older_than: args.prune_archives_older_than,
        apply: args.apply,
        now: now(),
    };
    let (targets, unreadable) = targets(&pvs, &policy.provisioner, &explicit);
    let shares = Shares::new(BackendConfig::Nfs3(args.nfs.options()));
    let mut reports = Vec::new();
    for target in &targets {
        let result = match shares.get(target) {
            Ok(share) => audit_share(&share, target, &pvs, None, &policy).await,
            Err(e) => Err(e.into()),
        };
        reports.push(result.unwrap_or_else(|e| ShareReport::failed(target, None, e.to_string())));
    }
    Ok(Report {
        provisioner: policy.provisioner,
        prune_older_than_seconds: policy.prune_older_than.map(|d| d.as_secs()),
        apply: policy.apply,
        shares: reports,
        unreadable,
    })
}

/// The `audit` command. Its own errors end in exit code 2, like a bad command line.
pub async fn audit(args: AuditArgs) -> Result<ExitCode, BoxError> {
    let rendered = match run_audit(&args).await {
        Ok(report) => report
            .render(args.output)
            .map(|text| (text, report.exit_code())),
        Err(e) => Err(e),
    };
    match rendered {
        Ok((text, code)) => {
            print!("{text}");
            Ok(ExitCode::from(code))
        }
        Err(e) => {
            tracing::error!(error = %e, "audit failed");
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ANN_DIRECTORY, ANN_ON_DELETE, ANN_PROVISIONED_BY, ANN_SERVER, ANN_SHARE};
    use k8s_openapi::api::core::v1::{
        NFSVolumeSource, ObjectReference, PersistentVolumeSpec, PersistentVolumeStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    const PROV: &str = "nfs3-provisioner.io/nfs";
    const NOW: i64 = 1_000_000_000;
    const DAY: i64 = 86400;

    fn target() -> Target {
        Target {
            server: "10.0.0.5".into(),
            share: "/srv/k8s".into(),
            port: None,
            mount_port: None,
        }
    }

    /// A PV of ours on the test share, bound to `ns/claim`.
    fn ours(name: &str, dir: &str, phase: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(BTreeMap::from([
                    (ANN_PROVISIONED_BY.into(), PROV.into()),
                    (ANN_SERVER.into(), "10.0.0.5".into()),
                    (ANN_SHARE.into(), "/srv/k8s".into()),
                    (ANN_DIRECTORY.into(), dir.into()),
                    (ANN_ON_DELETE.into(), "archive".into()),
                ])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                nfs: Some(NFSVolumeSource {
                    server: "10.0.0.5".into(),
                    path: format!("/srv/k8s/{dir}"),
                    read_only: None,
                }),
                claim_ref: Some(ObjectReference {
                    namespace: Some("ns".into()),
                    name: Some("claim".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    /// A PV of someone else's (a static PV, say) at an NFS path.
    fn foreign(name: &str, server: &str, path: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                nfs: Some(NFSVolumeSource {
                    server: server.into(),
                    path: path.into(),
                    read_only: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn stat(kind: Kind, changed: i64) -> Entry {
        Entry::Stat(Stat {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            changed,
            mtime: (0, 0),
        })
    }
    fn dir(age_days: i64) -> Entry {
        stat(Kind::Dir, NOW - age_days * DAY)
    }

    fn snapshot(dirs: &[(&str, &[(&str, Entry)])]) -> Snapshot {
        Snapshot {
            dirs: dirs
                .iter()
                .map(|(d, entries)| {
                    let entries = entries
                        .iter()
                        .map(|(n, e)| (n.to_string(), e.clone()))
                        .collect();
                    (d.to_string(), entries)
                })
                .collect(),
        }
    }

    fn policy(prune_days: Option<u64>) -> Policy {
        Policy {
            provisioner: PROV.into(),
            prune_older_than: prune_days.map(|d| Duration::from_secs(d * 86400)),
            apply: false,
            now: NOW,
        }
    }

    fn paths<T>(items: &[T], f: impl Fn(&T) -> &str) -> Vec<&str> {
        items.iter().map(f).collect()
    }

    fn actions(r: &ShareReport) -> Vec<(&str, ArchiveAction)> {
        r.archives
            .iter()
            .map(|a| (a.path.as_str(), a.action.clone()))
            .collect()
    }

    #[test]
    fn clean_share_is_clean() {
        let pvs = [
            ours("pvc-1", "ns-a-pvc-1", "Bound"),
            ours("pvc-2", "team/data", "Bound"),
        ];
        let snap = snapshot(&[
            (
                "",
                &[
                    ("ns-a-pvc-1", dir(1)),
                    ("team", dir(1)),
                    ("lost+found", dir(100)),
                ],
            ),
            ("team", &[("data", dir(1))]),
        ]);
        let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
        assert_eq!(r.volumes, 2);
        assert!(r.missing.is_empty() && r.orphans.is_empty() && r.archives.is_empty());
    }

    #[test]
    fn finds_missing_orphans_and_archives() {
        let mut deleting = ours("pvc-4", "gone-pvc-4", "Released");
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        // Another provisioner's PV is not audited: its missing directory is not reported.
        let mut theirs = ours("pvc-7", "elsewhere", "Bound");
        theirs
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_PROVISIONED_BY.into(), "other".into());
        let pvs = [
            ours("pvc-1", "ns-a-pvc-1", "Bound"),
            ours("pvc-2", "team/data", "Bound"),
            ours("pvc-3", "missing-pvc-3", "Bound"),
            deleting,
            ours("pvc-5", "file-pvc-5", "Bound"),
            ours("pvc-6", "flat/x/y", "Pending"),
            theirs,
        ];
        let snap = snapshot(&[
            (
                "",
                &[
                    ("ns-a-pvc-1", dir(1)),
                    ("team", dir(1)),
                    ("file-pvc-5", stat(Kind::File, NOW)),
                    ("flat", stat(Kind::Symlink, NOW)),
                    ("old-stuff", dir(30)),
                    ("notes.txt", stat(Kind::File, NOW)),
                    ("vanished", Entry::Gone),
                    ("bad\nname", Entry::Unknown),
                    ("archived-ns-a-pvc-9", dir(30)),
                    ("archived-new-pvc-8", dir(1)),
                    ("archived-file", stat(Kind::File, NOW - 30 * DAY)),
                    ("empty", dir(3)),
                ],
            ),
            ("old-stuff", &[("a", Entry::Unknown)]),
            ("empty", &[]),
            (
                "team",
                &[
                    ("data", dir(1)),
                    ("stray", dir(1)),
                    ("archived-data-pvc-0", dir(10)),
                ],
            ),
        ]);
        let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
        assert_eq!(r.volumes, 6);
        let missing: Vec<(&str, &str)> = r
            .missing
            .iter()
            .map(|m| (m.pv.as_str(), m.reason.as_str()))
            .collect();
        assert_eq!(
            missing,
            [
                ("pvc-3", "does not exist"),
                ("pvc-4", "does not exist"),
                ("pvc-5", "is a file, not a directory"),
                ("pvc-6", "(its parent flat is a symlink, not a directory)"),
            ]
        );
        let m = &r.missing[0];
        assert_eq!(m.phase.as_deref(), Some("Bound"));
        assert_eq!(m.claim.as_deref(), Some("ns/claim"));
        assert!(!m.deleting && r.missing[1].deleting);
        assert_eq!(
            r.orphans,
            [
                Orphan {
                    path: "archived-file".into(),
                    kind: "file",
                    empty: None
                },
                Orphan {
                    path: "bad\nname".into(),
                    kind: "unknown",
                    empty: None
                },
                Orphan {
                    path: "empty".into(),
                    kind: "directory",
                    empty: Some(true)
                },
                Orphan {
                    path: "notes.txt".into(),
                    kind: "file",
                    empty: None
                },
                Orphan {
                    path: "old-stuff".into(),
                    kind: "directory",
                    empty: Some(false)
                },
                Orphan {
                    path: "team/stray".into(),
                    kind: "directory",
                    empty: None
                },
            ]
        );
        assert_eq!(
            actions(&r),
            [
                ("archived-new-pvc-8", ArchiveAction::Keep),
                ("archived-ns-a-pvc-9", ArchiveAction::WouldPrune),
                ("team/archived-data-pvc-0", ArchiveAction::WouldPrune),
            ]
        );
        assert_eq!(r.archives[1].age_seconds, 30 * 86400);
        // Without a pruning age, nothing is to prune.
        let r = compare(&target(), &pvs, None, &snap, &policy(None));
        assert!(r.archives.iter().all(|a| a.action == ArchiveAction::Keep));
    }

    #[test]
    fn parents_of_volumes_are_never_orphans() {
        // team/ holds a live volume deep down and nothing else of note.
        let pvs = [ours("pvc-1", "team/a/b/c", "Bound")];
        let snap = snapshot(&[
            ("", &[("team", dir(1))]),
            ("team", &[("a", dir(1)), ("other", dir(1))]),
            ("team/a", &[("b", dir(1))]),
            ("team/a/b", &[("c", dir(1)), ("archived-c-pvc-0", dir(99))]),
        ]);
        let r = compare(&target(), &pvs, None, &snap, &policy(Some(1)));
        assert!(r.missing.is_empty());
        assert_eq!(paths(&r.orphans, |o| &o.path), ["team/other"]);
        assert_eq!(
            actions(&r),
            [("team/a/b/archived-c-pvc-0", ArchiveAction::WouldPrune)]
        );
    }

    #[test]
    fn a_parent_holding_only_archives_is_their_home_not_an_orphan() {
        let snap = snapshot(&[
            ("", &[("gone-ns", dir(40)), ("mixed", dir(40))]),
            (
                "gone-ns",
                &[
                    ("archived-a-pvc-1", dir(40)),
                    ("archived-b-pvc-2", dir(2)),
                    ("archived-c-pvc-3", Entry::Gone),
                ],
            ),
            (
                "mixed",
                &[
                    ("archived-a-pvc-4", Entry::Unknown),
                    ("data", Entry::Unknown),
                ],
            ),
        ]);
        let r = compare(&target(), &[], None, &snap, &policy(Some(7)));
        assert_eq!(paths(&r.orphans, |o| &o.path), ["mixed"]);
        assert_eq!(
            actions(&r),
            [
                ("gone-ns/archived-a-pvc-1", ArchiveAction::WouldPrune),
                ("gone-ns/archived-b-pvc-2", ArchiveAction::Keep),
            ]
        );
    }

    #[test]
    fn anything_a_pv_points_at_is_never_pruned() {
        // Every one of these archives is old enough to prune, but a PV still needs it.
        let mut pvs = vec![
            // A static PV reading an archive back, on another name of the same server.
            foreign("restore", "nfs.example", "/srv/k8s/archived-x-pvc-1/"),
            // A PV inside an archive.
            foreign("inside", "10.0.0.5", "/srv/k8s/archived-y-pvc-2/sub"),
            // A PV of ours, released and mid-reclaim: the archive carries its name.
            ours("pvc-3", "z-pvc-3", "Released"),
            // A volume whose own directory is named like an archive.
            ours("pvc-4", "archived-looking", "Bound"),
        ];
        // Someone else's dynamically provisioned PV, elsewhere.
        pvs.push(foreign("pvc-5", "other", "/elsewhere/w"));
        let snap = snapshot(&[(
            "",
            &[
                ("archived-x-pvc-1", dir(30)),
                ("archived-y-pvc-2", dir(30)),
                ("archived-z-pvc-3", dir(30)),
                ("archived-looking", dir(30)),
                ("archived-w-pvc-5", dir(30)),
                ("archived-free", dir(30)),
            ],
        )]);
        let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
        let protected = |by: &[&str]| ArchiveAction::Protected {
            by: by.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            actions(&r),
            [
                ("archived-free", ArchiveAction::WouldPrune),
                ("archived-w-pvc-5", protected(&["pvc-5"])),
                ("archived-z-pvc-3", protected(&["pvc-3"])),
            ]
        );
        // Pointed-at directories are volumes, not archives; pvc-3's is missing.
        assert_eq!(paths(&r.missing, |m| &m.pv), ["pvc-3"]);
        assert!(r.orphans.is_empty());
        // The rule itself, for paths the walk never offers as archives.
        let ptrs = Pointers::new("/srv/k8s", &pvs);
        let p = |s: &str| s.split('/').map(String::from).collect::<Vec<_>>();
        assert_eq!(ptrs.protecting(&p("archived-x-pvc-1")), ["restore"]);
        assert_eq!(ptrs.protecting(&p("archived-y-pvc-2")), ["inside"]);
        assert_eq!(ptrs.protecting(&p("archived-looking/deeper")), ["pvc-4"]);
        assert!(ptrs.protecting(&p("archived-free")).is_empty());
    }

    #[test]
    fn inside_a_volume_only_nested_volumes_are_looked_at() {
        let pvs = [
            ours("pvc-1", "team", "Bound"),
            ours("pvc-2", "team/inner", "Bound"),
            ours("pvc-3", "team/inner-missing", "Bound"),
        ];
        let snap = snapshot(&[
            ("", &[("team", dir(1))]),
            (
                "team",
                &[
                    ("inner", dir(1)),
                    ("users-file", stat(Kind::File, NOW)),
                    ("archived-theirs", dir(30)),
                ],
            ),
        ]);
        let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
        assert_eq!(paths(&r.missing, |m| &m.pv), ["pvc-3"]);
        assert!(r.orphans.is_empty() && r.archives.is_empty());

        // A static PV of the whole export covers the root: only nested volumes count.
        let mut pvs = pvs.to_vec();
        pvs.push(foreign("whole", "10.0.0.5", "/srv/k8s"));
        let snap = snapshot(&[(
            "",
            &[("team", dir(1)), ("stuff", dir(1)), ("archived-q", dir(30))],
        )]);
        let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
        assert_eq!(r.covered_by, ["whole"]);
        assert!(r.orphans.is_empty() && r.archives.is_empty());
    }

    #[test]
    fn under_limits_the_audit_to_a_subtree() {
        let pvs = [
            ours("pvc-1", "base/live", "Bound"),
            ours("pvc-2", "base/gone", "Bound"),
            ours("pvc-3", "not-base/x", "Bound"),
        ];
        let snap = snapshot(&[("base", &[("live", dir(1)), ("junk", stat(Kind::File, NOW))])]);
        let under = RelPath::parse("base").unwrap();
        let r = compare(&target(), &pvs, Some(&under), &snap, &policy(None));
        assert_eq!(r.volumes, 2);
        assert_eq!(paths(&r.missing, |m| &m.pv), ["pvc-2"]);
        assert_eq!(paths(&r.orphans, |o| &o.path), ["base/junk"]);
        assert_eq!(r.under.as_deref(), Some("base"));
    }

    #[test]
    fn paths_compare_as_paths() {
        assert_eq!(relative("/srv/k8s", "/srv/k8s/a/b"), Some(p2("a", "b")));
        assert_eq!(relative("/srv/k8s", "/srv//k8s/a/"), Some(vec!["a".into()]));
        assert_eq!(relative("/srv/k8s", "/srv/k8s"), Some(vec![]));
        assert_eq!(relative("/srv/k8s", "/srv/k8s-2/a"), None);
        assert_eq!(relative("/srv/k8s", "/srv/k8s/../etc"), None);
        assert_eq!(relative("/", "/a/b"), Some(p2("a", "b")));
        let ptrs = Pointers::new(
            "/srv",
            &[
                foreign("ab", "s", "/srv/a/b"),
                foreign("a-b", "s", "/srv/a-b"),
            ],
        );
        assert!(ptrs.has_below(&["a".to_string()]));
        assert!(!ptrs.has_below(&p2("a", "b")));
        assert!(!ptrs.has_below(&["a-".to_string()]));
        assert_eq!(ptrs.at_or_below(&["a".to_string()]), ["ab"]);
    }

    fn p2(a: &str, b: &str) -> Vec<String> {
        vec![a.into(), b.into()]
    }

    #[test]
    fn shares_come_from_pvs_and_flags() {
        let mut broken = ours("pvc-9", "x", "Bound");
        broken
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANN_DIRECTORY);
        let mut ported = ours("pvc-2", "y", "Bound");
        ported
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(crate::plan::ANN_PORT.into(), "2049".into());
        let pvs = [
            ours("pvc-1", "x", "Bound"),
            ported,
            broken,
            foreign("static", "other", "/x"),
        ];
        let explicit = [
            Target {
                server: "10.0.0.5".into(),
                share: "/srv/k8s".into(),
                port: None,
                mount_port: None,
            },
            Target {
                server: "10.0.0.6".into(),
                share: "/empty".into(),
                port: None,
                mount_port: None,
            },
        ];
        let (targets, unreadable) = targets(&pvs, PROV, &explicit);
        let names: Vec<String> = targets.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["10.0.0.5:/srv/k8s", "10.0.0.6:/empty"]);
        assert_eq!(targets[0].port, Some(2049));
        assert_eq!(paths(&unreadable, |u| &u.pv), ["pvc-9"]);
    }

    fn report(shares: Vec<ShareReport>, unreadable: Vec<Unreadable>) -> Report {
        Report {
            provisioner: PROV.into(),
            prune_older_than_seconds: Some(7 * 86400),
            apply: false,
            shares,
            unreadable,
        }
    }

    #[test]
    fn exit_codes_and_output() {
        let clean = ShareReport::new(&target(), None);
        assert_eq!(report(vec![clean], vec![]).exit_code(), 0);

        let pvs = [ours("pvc-1", "gone", "Bound")];
        let snap = snapshot(&[("", &[("archived-a", dir(30))])]);
        let found = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
        let r = report(vec![found], vec![]);
        assert_eq!(r.exit_code(), 1);
        let text = r.text();
        assert!(
            text.contains("MISSING  pvc-1 (Bound, claim ns/claim): gone does not exist"),
            "{text}"
        );
        assert!(
            text.contains("archive  archived-a  30d 0h  would prune"),
            "{text}"
        );
        assert!(text.contains("dry run: add --apply"), "{text}");

        let json: serde_json::Value =
            serde_json::from_str(&r.render(OutputFormat::Json).unwrap()).unwrap();
        let share = &json["shares"][0];
        assert_eq!(share["missing"][0]["pv"], "pvc-1");
        assert_eq!(share["archives"][0]["action"], "would-prune");
        assert_eq!(share["archives"][0]["age_seconds"], 30 * 86400);
        let yaml = r.render(OutputFormat::Yaml).unwrap();
        let back: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, json);

        let failed = ShareReport::failed(&target(), None, "cannot mount".into());
        let r = report(vec![failed], vec![]);
        assert_eq!(r.exit_code(), 2);
        assert!(r.text().contains("ERROR    cannot mount"));
        let unreadable = Unreadable {
            pv: "pvc-9".into(),
            error: "bad".into(),
        };
        assert_eq!(report(vec![], vec![unreadable]).exit_code(), 2);
        let mut prune_failed = ShareReport::new(&target(), None);
        prune_failed.archives.push(Archive {
            path: "archived-a".into(),
            age_seconds: 1,
            action: ArchiveAction::PruneFailed {
                error: "EACCES".into(),
            },
        });
        assert_eq!(report(vec![prune_failed], vec![]).exit_code(), 2);
    }
}

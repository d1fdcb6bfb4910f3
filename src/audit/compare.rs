//! The pure audit of one share: what the walk saw ([`Snapshot`]), which paths the
//! cluster's PVs point at, and [`compare`], which sorts every entry into a volume, an
//! orphan, an archive (with its age and whether it may be pruned) or a missing directory.
//! Nothing here does I/O; [`super::scan`] takes the snapshot the same way this reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use k8s_openapi::api::core::v1::PersistentVolume;

use super::{Archive, ArchiveAction, Missing, Orphan, Policy, ShareReport};
use crate::backend::{Kind, Stat, Target};
use crate::path::{RelPath, normalize_share};
use crate::plan::record::provisioned_by;
use crate::plan::{ARCHIVE_PREFIX, Recorded};

/// Entries filesystems make themselves at their root, never reported as orphans there.
const SYSTEM_ENTRIES: &[&str] = &["lost+found", ".snapshot", ".zfs", crate::path::METADATA_DIR];

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
    pub(super) fn is_dir(&self) -> bool {
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
pub(super) struct Pointers {
    at: BTreeMap<Vec<String>, Vec<String>>,
    /// Names of existing dynamically provisioned PVs (`pvc-…`), which archives carry.
    names: Vec<String>,
}

/// The path of `nfs_path` inside `share`, or `None` when it lies elsewhere.
pub(super) fn relative(share: &str, nfs_path: &str) -> Option<Vec<String>> {
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
    pub(super) fn new(share: &str, pvs: &[PersistentVolume]) -> Self {
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
    pub(super) fn at(&self, p: &[String]) -> &[String] {
        self.at.get(p).map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether some PV's directory lies strictly below `p`.
    pub(super) fn has_below(&self, p: &[String]) -> bool {
        // Paths below `p` sort right after it, before anything else greater than it.
        self.at
            .range::<[String], _>((Bound::Excluded(p), Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(p))
    }

    /// PVs whose directory is `p` or one of its ancestors (the share root included).
    pub(super) fn covering(&self, p: &[String]) -> Vec<String> {
        (0..=p.len())
            .flat_map(|i| self.at(&p[..i]))
            .cloned()
            .collect()
    }

    /// PVs whose directory is `p` or lies below it.
    pub(super) fn at_or_below(&self, p: &[String]) -> Vec<String> {
        self.at
            .range::<[String], _>((Bound::Included(p), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(p))
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }

    /// Why the archive at `p` must never be pruned: the PVs that point at it, inside it
    /// or above it, and the existing PVs whose name it carries.
    pub(super) fn protecting(&self, p: &[String]) -> Vec<String> {
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
pub(super) enum Class {
    /// A PV points at it.
    Volume,
    /// A PV points somewhere below it.
    Parent,
    /// Part of a volume's data, or a filesystem's own entry: not looked at.
    Ignored,
    /// Anything else: an archive or an orphan.
    Other,
}

pub(super) fn is_archive_name(name: &str) -> bool {
    name.starts_with(ARCHIVE_PREFIX)
}

pub(super) fn child_of(dir: &[String], name: &str) -> Vec<String> {
    let mut p = dir.to_vec();
    p.push(name.to_string());
    p
}

/// `owned`: whether `child`'s directory is a volume or inside one.
pub(super) fn class_of(ptrs: &Pointers, child: &[String], owned: bool) -> Class {
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
pub(super) fn descend(
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
pub(super) fn peeks(class: Class, name: &str, is_dir: bool) -> bool {
    class == Class::Other && is_dir && !is_archive_name(name)
}

/// A directory holding nothing but archives (and at least one).
pub(super) fn holds_only_archives(entries: &BTreeMap<String, Entry>) -> bool {
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

pub(super) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Dir => "directory",
        Kind::File => "file",
        Kind::Symlink => "symlink",
        Kind::Other => "other",
    }
}

pub(super) fn key(p: &[String]) -> String {
    p.join("/")
}

/// Why the directory at `dir` is not usable, from the snapshot, or `None` when it is a
/// directory. Every parent between `root` and it was listed by the walk.
pub(super) fn absence(snapshot: &Snapshot, root: &[String], dir: &[String]) -> Option<String> {
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

/// PVs of this provisioner that record `target`'s server and share, and adopted PVs on
/// it: each with its directory.
fn ours_on<'a>(
    target: &'a Target,
    policy: &'a Policy,
    pvs: &'a [PersistentVolume],
) -> impl Iterator<Item = (&'a PersistentVolume, RelPath)> + 'a {
    let provisioner = policy.provisioner.as_str();
    let adopted = policy
        .adopt
        .as_ref()
        .filter(|a| a.server == target.server && a.share == target.share);
    pvs.iter().filter_map(move |pv| {
        if let Some(a) = adopted.filter(|a| a.adopts(&pv.metadata)) {
            a.locate(pv).ok().map(|dir| (pv, dir))
        } else if provisioned_by(&pv.metadata) == Some(provisioner) {
            let r = Recorded::from_pv(pv).ok()?;
            (r.server == target.server && r.share == target.share).then_some((pv, r.directory))
        } else {
            None
        }
    })
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

    for (pv, directory) in ours_on(target, policy, pvs) {
        let dir = directory.segments();
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
                directory: directory.to_string(),
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
            let name = RelPath::parse(&key(&path))
                .map(|p| crate::plan::archive::archive_key(&p))
                .unwrap_or_default();
            Archive {
                path: key(&path),
                age_seconds,
                name,
                recorded: false,
                namespace: None,
                claim: None,
                record_error: None,
                action,
            }
        })
        .collect();
    report.orphans.sort_by(|a, b| a.path.cmp(&b.path));
    report.archives.sort_by(|a, b| a.path.cmp(&b.path));
    report.missing.sort_by(|a, b| a.pv.cmp(&b.pv));
    report
}

#[cfg(test)]
mod tests;

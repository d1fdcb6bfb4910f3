//! The audit's report: per share, the volumes whose directory is missing, the orphans
//! and the archives with what was (or would be) done to them; as text, JSON or YAML,
//! and the exit code it stands for.

use serde::Serialize;

use super::{AuditError, EXIT_ERROR, EXIT_FINDINGS};
use crate::backend::Target;
use crate::config::OutputFormat;
use crate::path::RelPath;
use crate::units::{human_age, human_size};

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
    /// With `--usage`: what each of our volumes on the share holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<super::VolumeUsage>,
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
    /// The name a claim's `nfs3-provisioner.io/restore-from` takes.
    pub name: String,
    /// Whether the provisioner recorded who it was made from; archives made before
    /// records existed, or by hand, have none and can be neither restored nor expired.
    pub recorded: bool,
    /// The namespace and claim it was made from, as its record says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Why its record could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_error: Option<String>,
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
    pub(super) fn new(target: &Target, under: Option<&RelPath>) -> Self {
        Self {
            server: target.server.clone(),
            share: target.share.clone(),
            under: under.map(ToString::to_string),
            ..Default::default()
        }
    }

    pub(super) fn failed(target: &Target, under: Option<&RelPath>, error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::new(target, under)
        }
    }

    pub(super) fn has_errors(&self) -> bool {
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
                let owner = match (&a.namespace, &a.claim, &a.record_error) {
                    (Some(ns), Some(claim), _) => {
                        format!("from {ns}/{claim}, restore-from: {}", a.name)
                    }
                    (_, _, Some(e)) => format!("record unreadable: {e}"),
                    _ => "no record".to_string(),
                };
                let _ = writeln!(
                    w,
                    "  archive  {}  {}  {what}  ({owner})",
                    a.path,
                    human_age(a.age_seconds)
                );
            }
            for u in &s.usage {
                let _ = writeln!(w, "  usage    {}", usage_line(u));
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

/// `pvc-1 (ns/c): 1.5 GiB of 2.0 GiB (75%), 120 files, 4 dirs`, and what went wrong.
fn usage_line(u: &super::VolumeUsage) -> String {
    let claim = u.claim.as_deref().unwrap_or("no claim");
    if let Some(e) = &u.error {
        return format!("{} ({claim}): not counted: {e}", u.pv);
    }
    let of = match (u.capacity_bytes, u.percent()) {
        (Some(c), Some(p)) => format!(" of {} ({p}%)", human_size(c)),
        _ => String::new(),
    };
    let unreadable = match u.unreadable_dirs {
        0 => String::new(),
        n => format!(", {n} unreadable dir(s) not counted"),
    };
    format!(
        "{} ({claim}): {}{of}, {} files, {} dirs{unreadable}",
        u.pv,
        human_size(u.used_bytes),
        u.files,
        u.dirs
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::compare;
    use crate::audit::fixtures::*;

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
            text.contains("archive  archived-a  30d 0h  would prune  (no record)"),
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
            name: "archived-a".into(),
            recorded: false,
            namespace: None,
            claim: None,
            record_error: None,
            action: ArchiveAction::PruneFailed {
                error: "EACCES".into(),
            },
        });
        assert_eq!(report(vec![prune_failed], vec![]).exit_code(), 2);
    }

    #[test]
    fn usage_lines_say_how_full_each_volume_is() {
        let mut u = crate::audit::VolumeUsage {
            pv: "pvc-1".into(),
            claim: Some("ns/c".into()),
            directory: "ns-c-pvc-1".into(),
            capacity_bytes: Some(2 << 30),
            used_bytes: 3 << 29,
            files: 120,
            dirs: 4,
            unreadable_dirs: 0,
            error: None,
        };
        assert_eq!(
            usage_line(&u),
            "pvc-1 (ns/c): 1.5 GiB of 2.0 GiB (75%), 120 files, 4 dirs"
        );
        u.unreadable_dirs = 2;
        u.capacity_bytes = None;
        assert_eq!(
            usage_line(&u),
            "pvc-1 (ns/c): 1.5 GiB, 120 files, 4 dirs, 2 unreadable dir(s) not counted"
        );
        u.error = Some("directory not found".into());
        assert_eq!(
            usage_line(&u),
            "pvc-1 (ns/c): not counted: directory not found"
        );
        let json = serde_json::to_value(&u).unwrap();
        assert_eq!(json["used_bytes"], serde_json::json!(3u64 << 29));
        assert!(json.get("capacity_bytes").is_none());
    }
}

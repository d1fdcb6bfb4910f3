//! Which export a new volume goes to, for classes over several exports or with a
//! `minFreeBytes` / `minFreePercent` floor: the export that already holds this claim's
//! directory (an earlier attempt made it), else the reachable one with the most space
//! available that stays above its floor once the requested size is taken off. Pure: the
//! controller asks the exports (FSSTAT, and a look for the directory) and hands the
//! answers in.

use std::fmt;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use thiserror::Error;

use super::record::{ANN_MOUNT_PORT, ANN_PORT, ANN_SERVER, ANN_SHARE, join_share};
use super::{PlanError, ProvisionPlan};
use crate::backend::{Space, Target};
use crate::params::quantity::parse_bytes;
use crate::params::{ClassParams, Defaults, MinFree};
use crate::units::human_size;

/// One export of the class, as the class lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub target: Target,
    pub min_free: MinFree,
}

/// Only the candidate on `there`'s export (server and path), when the class has it; all
/// of them otherwise (a clone whose source lies elsewhere is then refused by its own
/// checks).
pub fn pin(candidates: Vec<Candidate>, there: &Target) -> Vec<Candidate> {
    let same = |c: &Candidate| c.target.server == there.server && c.target.share == there.share;
    if candidates.iter().any(same) {
        candidates.into_iter().filter(same).collect()
    } else {
        candidates
    }
}

/// What asking one export gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Reached {
        space: Space,
        /// The claim's directory is there with the claim's stamp: an earlier attempt
        /// made it and stopped before the PV.
        ours: bool,
    },
    /// No answer within the deadline, refused, or an error: the text says which.
    Unreachable(String),
}

/// The exports to choose from, when the class needs a choice: several exports, or a
/// floor on free space. `None` for a single export without a floor: that class
/// provisions as it always has, without asking the server for its space.
pub fn candidates(
    class: &StorageClass,
    defaults: &Defaults,
) -> Result<Option<Vec<Candidate>>, PlanError> {
    let params = ClassParams::parse(&class.parameters.clone().unwrap_or_default(), defaults)
        .map_err(|source| PlanError::Params {
            class: class.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
    if params.exports.len() < 2 && !params.exports.iter().any(|e| e.min_free.is_set()) {
        return Ok(None);
    }
    Ok(Some(
        params
            .exports
            .into_iter()
            .map(|e| Candidate {
                target: Target {
                    server: e.server,
                    share: e.share,
                    port: e.port,
                    mount_port: e.mount_port,
                },
                min_free: e.min_free,
            })
            .collect(),
    ))
}

/// The claim's requested size in bytes.
pub fn requested_bytes(pvc: &PersistentVolumeClaim) -> Result<u64, PlanError> {
    let raw = pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .ok_or(PlanError::NoSize)?;
    parse_bytes(&raw.0).map_err(|e| PlanError::Size(e.to_string()))
}

/// Where the volume goes, and which exports were passed over unreachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// Index into the candidates.
    pub index: usize,
    pub target: Target,
    /// The claim's directory is there already.
    pub resumed: bool,
    pub skipped: Vec<(Target, String)>,
}

/// Why no export takes the volume now. Both pass: space can be freed, a server can come
/// back, so the claim is retried.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("no export of this class has room for the requested {}: {}", human_size(*requested), Reports(reports))]
    Full {
        requested: u64,
        reports: Vec<(Target, String)>,
    },
    #[error(
        "no export of this class is reachable: {}; will retry",
        Reports(reports)
    )]
    Unreachable { reports: Vec<(Target, String)> },
    /// This process chose `target` for the claim before and may have made its directory
    /// there: going elsewhere could leave a second directory behind.
    #[error(
        "export {target} was chosen for this claim by an earlier attempt and does not answer ({reason}); will retry"
    )]
    Resume { target: Target, reason: String },
}

struct Reports<'a>(&'a [(Target, String)]);

impl fmt::Display for Reports<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (target, why)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{target} {why}")?;
        }
        Ok(())
    }
}

/// The choice. `probes[i]` is what asking `candidates[i]` gave; `earlier` the export this
/// process chose for the claim before, if it remembers one.
pub fn choose(
    candidates: &[Candidate],
    probes: &[Probe],
    requested: u64,
    earlier: Option<&Target>,
) -> Result<Chosen, Refusal> {
    let pairs = || candidates.iter().zip(probes).enumerate();
    let skipped: Vec<(Target, String)> = pairs()
        .filter_map(|(_, (c, p))| match p {
            Probe::Unreachable(why) => Some((c.target.clone(), why.clone())),
            Probe::Reached { .. } => None,
        })
        .collect();
    // The directory an earlier attempt made wins over any amount of space: another
    // export would get a second directory, and this one would be left behind.
    if let Some((index, (c, _))) =
        pairs().find(|(_, (_, p))| matches!(p, Probe::Reached { ours: true, .. }))
    {
        return Ok(Chosen {
            index,
            target: c.target.clone(),
            resumed: true,
            skipped,
        });
    }
    if let Some(earlier) = earlier
        && let Some((_, why)) = skipped.iter().find(|(t, _)| t == earlier)
    {
        return Err(Refusal::Resume {
            target: earlier.clone(),
            reason: why.clone(),
        });
    }
    let mut best: Option<(usize, &Target, u64)> = None;
    let mut full = Vec::new();
    for (index, (c, p)) in pairs() {
        let Probe::Reached { space, .. } = p else {
            continue;
        };
        match room(space, c.min_free, requested) {
            // Strictly more: a tie goes to the export listed first.
            Ok(()) if best.is_none_or(|(_, _, avail)| space.avail_bytes > avail) => {
                best = Some((index, &c.target, space.avail_bytes));
            }
            Ok(()) => {}
            Err(why) => full.push((c.target.clone(), why)),
        }
    }
    match best {
        Some((index, target, _)) => Ok(Chosen {
            index,
            target: target.clone(),
            resumed: false,
            skipped,
        }),
        None if full.is_empty() => Err(Refusal::Unreachable {
            reports: skipped
                .into_iter()
                .map(|(t, why)| (t, format!("is unreachable ({why})")))
                .collect(),
        }),
        None => Err(Refusal::Full {
            requested,
            reports: full
                .into_iter()
                .chain(
                    skipped
                        .into_iter()
                        .map(|(t, why)| (t, format!("is unreachable ({why})"))),
                )
                .collect(),
        }),
    }
}

/// Whether `requested` fits on an export with `space` and stays above `min_free`; if
/// not, how full the export is, for the claim's event.
fn room(space: &Space, min_free: MinFree, requested: u64) -> Result<(), String> {
    let avail = space.avail_bytes;
    let used_pct = if space.total_bytes == 0 {
        100
    } else {
        100 - (u128::from(avail.min(space.total_bytes)) * 100 / u128::from(space.total_bytes))
    };
    let how_full = format!(
        "has {} available of {} ({used_pct}% used)",
        human_size(avail),
        human_size(space.total_bytes)
    );
    let Some(left) = avail.checked_sub(requested) else {
        return Err(format!("{how_full}: less than requested"));
    };
    if let Some(floor) = min_free.bytes
        && left < floor
    {
        return Err(format!(
            "{how_full}: would fall below minFreeBytes ({})",
            human_size(floor)
        ));
    }
    // A server that reports no size at all gives a percentage nothing to hold to.
    if let Some(pct) = min_free.percent
        && (space.total_bytes == 0
            || u128::from(left) * 100 < u128::from(pct) * u128::from(space.total_bytes))
    {
        return Err(format!(
            "{how_full}: would fall below minFreePercent ({pct}%)"
        ));
    }
    Ok(())
}

impl ProvisionPlan {
    /// The plan with its volume on `target` instead: the directory, its stamp and the
    /// claim's share of the ownership check stay; the PV's server, path and the
    /// annotations reclaim and audit read back name the chosen export.
    pub fn place(&mut self, target: &Target) {
        self.target = target.clone();
        let path = join_share(&target.share, &self.directory);
        if let Some(nfs) = self.pv.spec.as_mut().and_then(|s| s.nfs.as_mut()) {
            nfs.server = target.server.clone();
            nfs.path = path;
        }
        let annotations = self.pv.metadata.annotations.get_or_insert_default();
        annotations.insert(ANN_SERVER.to_string(), target.server.clone());
        annotations.insert(ANN_SHARE.to_string(), target.share.clone());
        for (key, port) in [(ANN_PORT, target.port), (ANN_MOUNT_PORT, target.mount_port)] {
            match port {
                Some(p) => annotations.insert(key.to_string(), p.to_string()),
                None => annotations.remove(key),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Recorded;
    use crate::plan::fixtures::{PROV, claim, class, defaults};
    use crate::plan::plan_volume;

    const GI: u64 = 1 << 30;

    fn target(share: &str) -> Target {
        Target {
            server: "10.0.0.5".into(),
            share: share.into(),
            port: None,
            mount_port: None,
        }
    }

    fn cand(share: &str, bytes: Option<u64>, percent: Option<u8>) -> Candidate {
        Candidate {
            target: target(share),
            min_free: MinFree { bytes, percent },
        }
    }

    fn up(avail_gi: u64, total_gi: u64) -> Probe {
        Probe::Reached {
            space: Space {
                total_bytes: total_gi * GI,
                free_bytes: avail_gi * GI,
                avail_bytes: avail_gi * GI,
            },
            ours: false,
        }
    }

    fn down() -> Probe {
        Probe::Unreachable("connection refused".into())
    }

    #[test]
    fn a_clone_is_pinned_to_its_sources_export_when_the_class_has_it() {
        let all = || vec![cand("/a", None, None), cand("/b", Some(GI), None)];
        let shares = |c: Vec<Candidate>| c.into_iter().map(|c| c.target.share).collect::<Vec<_>>();
        // Ports are the class's business: server and path decide.
        let there = Target {
            port: Some(2049),
            ..target("/b")
        };
        let pinned = pin(all(), &there);
        assert_eq!(shares(pinned.clone()), ["/b"]);
        assert_eq!(
            pinned[0].min_free.bytes,
            Some(GI),
            "its floor still applies"
        );
        assert_eq!(shares(pin(all(), &target("/elsewhere"))), ["/a", "/b"]);
        let other_server = Target {
            server: "10.0.0.6".into(),
            ..target("/b")
        };
        assert_eq!(shares(pin(all(), &other_server)), ["/a", "/b"]);
    }

    fn index(r: Result<Chosen, Refusal>) -> Result<usize, String> {
        r.map(|c| c.index).map_err(|e| e.to_string())
    }

    #[test]
    fn the_most_space_that_fits_wins_and_ties_go_to_the_first_listed() {
        let two = [cand("/a", None, None), cand("/b", None, None)];
        type Case = (&'static str, [Probe; 2], u64, Result<usize, &'static str>);
        let cases: Vec<Case> = vec![
            ("more on b", [up(10, 100), up(20, 100)], GI, Ok(1)),
            ("more on a", [up(30, 100), up(20, 100)], GI, Ok(0)),
            ("tie", [up(20, 100), up(20, 100)], GI, Ok(0)),
            ("a unreachable", [down(), up(1, 100)], GI, Ok(1)),
            ("b unreachable", [up(2, 100), down()], GI, Ok(0)),
            (
                "request fits only on a",
                [up(8, 10), up(5, 100)],
                6 * GI,
                Ok(0),
            ),
            (
                "exactly the space left",
                [up(6, 10), up(5, 100)],
                6 * GI,
                Ok(0),
            ),
            (
                "all unreachable",
                [down(), down()],
                GI,
                Err("no export of this class is reachable"),
            ),
            (
                "all full",
                [up(1, 10), up(0, 10)],
                2 * GI,
                Err("has room for the requested 2.0 GiB"),
            ),
            (
                "full and unreachable",
                [up(1, 10), down()],
                2 * GI,
                Err("10.0.0.5:/b is unreachable (connection refused)"),
            ),
        ];
        for (what, probes, requested, want) in cases {
            let got = index(choose(&two, &probes, requested, None));
            match want {
                Ok(i) => assert_eq!(got, Ok(i), "{what}"),
                Err(needle) => {
                    let msg = got.expect_err(what);
                    assert!(msg.contains(needle), "{what}: {msg}");
                }
            }
        }
    }

    #[test]
    fn floors_refuse_an_export_that_would_fall_below_them() {
        let probes = [up(12, 100), up(11, 100)];
        let cases: Vec<(&str, [Candidate; 2], Result<usize, &str>)> = vec![
            // 12 - 1 = 11 left: 10Gi keeps it; 11.5Gi does not, so b (11 - 1 = 10) is
            // refused too at 10.5Gi.
            (
                "bytes fit",
                [cand("/a", Some(10 * GI), None), cand("/b", None, None)],
                Ok(0),
            ),
            (
                "bytes on the larger",
                [cand("/a", Some(23 * GI / 2), None), cand("/b", None, None)],
                Ok(1),
            ),
            (
                "bytes on both",
                [
                    cand("/a", Some(23 * GI / 2), None),
                    cand("/b", Some(21 * GI / 2), None),
                ],
                Err(
                    "10.0.0.5:/a has 12.0 GiB available of 100.0 GiB (88% used): would fall below minFreeBytes (11.5 GiB); 10.0.0.5:/b has 11.0 GiB available of 100.0 GiB (89% used): would fall below minFreeBytes (10.5 GiB)",
                ),
            ),
            (
                "percent fits",
                [cand("/a", None, Some(11)), cand("/b", None, None)],
                Ok(0),
            ),
            (
                "percent on the larger",
                [cand("/a", None, Some(12)), cand("/b", None, Some(10))],
                Ok(1),
            ),
            (
                "percent on both",
                [cand("/a", None, Some(12)), cand("/b", None, Some(11))],
                Err("would fall below minFreePercent (12%)"),
            ),
            (
                "either floor refuses",
                [
                    cand("/a", Some(GI), Some(50)),
                    cand("/b", Some(20 * GI), None),
                ],
                Err("minFreePercent (50%)"),
            ),
        ];
        for (what, cands, want) in cases {
            let got = index(choose(&cands, &probes, GI, None));
            match want {
                Ok(i) => assert_eq!(got, Ok(i), "{what}"),
                Err(needle) => {
                    let msg = got.expect_err(what);
                    assert!(msg.contains(needle), "{what}: {msg}");
                }
            }
        }
        // One export, a floor: the single-export class is refused the same way.
        let one = [cand("/a", None, Some(5))];
        assert_eq!(index(choose(&one, &[up(6, 100)], 0, None)), Ok(0));
        assert!(choose(&one, &[up(6, 100)], 2 * GI, None).is_err());
        // A server that reports no size at all leaves no room under a percentage.
        assert!(choose(&one, &[up(0, 0)], 0, None).is_err());
    }

    #[test]
    fn an_earlier_attempts_directory_decides() {
        let two = [cand("/a", None, None), cand("/b", Some(100 * GI), None)];
        let ours = Probe::Reached {
            space: Space {
                total_bytes: 10 * GI,
                free_bytes: 0,
                avail_bytes: 0,
            },
            ours: true,
        };
        // Found on b: chosen though b is now full and a has more room.
        let got = choose(&two, &[up(50, 100), ours.clone()], GI, None).unwrap();
        assert_eq!((got.index, got.resumed), (1, true));
        // Found on both (a run that skipped an unreachable one): the first listed.
        let got = choose(&two, &[ours.clone(), ours], GI, None).unwrap();
        assert_eq!((got.index, got.resumed), (0, true));
        // This process chose b before and b does not answer now: wait for it rather
        // than make a second directory on a.
        let err = choose(&two, &[up(50, 100), down()], GI, Some(&target("/b"))).unwrap_err();
        assert!(matches!(err, Refusal::Resume { .. }), "{err}");
        // b answers and holds no directory of the claim (the MKDIR never happened):
        // choose afresh, by space.
        let got = choose(&two, &[up(250, 300), up(200, 300)], GI, Some(&target("/b"))).unwrap();
        assert_eq!((got.index, got.resumed), (0, false));
        // The unreachable ones passed over are reported.
        let got = choose(&two, &[down(), up(200, 300)], GI, None).unwrap();
        assert_eq!(
            got.skipped,
            [(target("/a"), "connection refused".to_string())]
        );
    }

    #[test]
    fn a_placed_plan_records_the_chosen_export_for_reclaim_and_audit() {
        let class = class(&[("shares", "10.0.0.5:/srv/a port=2049, 10.0.0.6:/srv/b")]);
        let got = candidates(&class, &defaults()).unwrap().unwrap();
        assert_eq!(got.len(), 2);
        let mut plan = plan_volume(&claim(), &class, &defaults(), PROV).unwrap();
        assert_eq!(plan.target, got[0].target);
        plan.place(&got[1].target);
        assert_eq!(plan.full_path(), "/srv/b/team-a-data-pvc-0b5e");
        let rec = Recorded::from_pv(&plan.pv).unwrap();
        assert_eq!(rec.target(), got[1].target);
        assert_eq!(rec.full_path(), plan.full_path());
        assert_eq!(plan.pv.spec.unwrap().nfs.unwrap().server, "10.0.0.6");
        // No choice to make: one export and no floor.
        assert_eq!(candidates(&self::class(&[]), &defaults()).unwrap(), None);
        let floor = self::class(&[("minFreeBytes", "1Gi")]);
        assert_eq!(candidates(&floor, &defaults()).unwrap().unwrap().len(), 1);
        assert_eq!(requested_bytes(&claim()).unwrap(), GI);
    }
}

//! What one run measured (`RunResult`) and its JSON form.

use crate::prelude::*;
use crate::requests::Requests;
use crate::sampling::{Footprint, footprint_json};
use crate::stats::{Burst, round};
use crate::subjects::Subject;

#[derive(Debug, Default, Clone)]
pub(crate) struct RunResult {
    pub(crate) subject: Option<Subject>,
    /// A footprint-only run: N pre-bound PVs and claims made by the bench, the
    /// provisioner started among them (no provisioning, no reclaim).
    pub(crate) footprint_only: bool,
    pub(crate) n: usize,
    pub(crate) error: Option<String>,
    /// Phases stopped at the incumbent's cap, with what they completed.
    pub(crate) capped: Vec<String>,
    pub(crate) loadavg_start: String,
    pub(crate) loadavg_end: String,
    pub(crate) cold_start_s: Option<f64>,
    pub(crate) provision: Burst,
    pub(crate) provision_fp: Option<Footprint>,
    /// Where a claim's time to Bound goes: (stage, (p50, p99) seconds).
    pub(crate) stages: Vec<(&'static str, Option<(f64, f64)>)>,
    pub(crate) provision_req: Option<Requests>,
    pub(crate) idle_fp: Option<Footprint>,
    pub(crate) restart_ready_s: Option<f64>,
    pub(crate) restart_req: Option<Requests>,
    pub(crate) restart_fp: Option<Footprint>,
    pub(crate) reclaim: Option<Burst>,
    pub(crate) reclaim_dirs_s: Option<f64>,
    pub(crate) reclaim_fp: Option<Footprint>,
    pub(crate) reclaim_req: Option<Requests>,
}

impl RunResult {
    pub(crate) fn json(&self) -> Value {
        let req = |r: &Option<Requests>, per: usize| {
            r.map(|r| {
                json!({
                    "writes": r.writes,
                    "all": r.all,
                    "writes_per_claim": round(r.writes / per.max(1) as f64, 2),
                    "all_per_claim": round(r.all / per.max(1) as f64, 2),
                })
            })
        };
        json!({
            "subject": self.subject.map(|s| s.name()),
            "footprint_only": self.footprint_only,
            "n": self.n,
            "error": self.error,
            "capped": self.capped,
            "loadavg_start": self.loadavg_start,
            "loadavg_end": self.loadavg_end,
            "cold_start_s": self.cold_start_s.map(|v| round(v, 3)),
            "provision": self.provision.json(),
            "provision_stages_s": self.stages.iter().map(|(name, v)| json!({
                "stage": name,
                "p50": v.map(|x| round(x.0, 3)),
                "p99": v.map(|x| round(x.1, 3)),
            })).collect::<Vec<_>>(),
            "provision_footprint": self.provision_fp.as_ref().map(footprint_json),
            "provision_requests": req(&self.provision_req, self.n),
            "idle_footprint": self.idle_fp.as_ref().map(footprint_json),
            "restart": {
                "ready_s": self.restart_ready_s.map(|v| round(v, 3)),
                "requests_until_ready_plus_10s": req(&self.restart_req, 1),
                "footprint": self.restart_fp.as_ref().map(footprint_json),
            },
            "reclaim": self.reclaim.as_ref().map(|r| {
                let mut v = r.json();
                v["dirs_gone_s"] = json!(self.reclaim_dirs_s.map(|d| round(d, 3)));
                v
            }),
            "reclaim_footprint": self.reclaim_fp.as_ref().map(footprint_json),
            "reclaim_requests": req(&self.reclaim_req, self.n),
            "provision_timeline": self.provision.timeline.iter().map(|(t, c)| json!([round(*t, 3), c])).collect::<Vec<_>>(),
        })
    }
}

//! Statistics of a burst: percentiles, the completion timeline for the plot, and `Burst`
//! (one burst's counts, rate and latencies).

use crate::prelude::*;

pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// (seconds since t0, count) at each completion, for the plot.
pub(crate) fn timeline(t0: Instant, done: &[Instant]) -> Vec<(f64, usize)> {
    let mut ts: Vec<f64> = done
        .iter()
        .map(|t| t.saturating_duration_since(t0).as_secs_f64())
        .collect();
    ts.sort_by(f64::total_cmp);
    ts.into_iter()
        .enumerate()
        .map(|(i, t)| (t, i + 1))
        .collect()
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Burst {
    pub(crate) n: usize,
    pub(crate) create_s: f64,
    pub(crate) all_done_s: f64,
    pub(crate) per_s: f64,
    pub(crate) lat: Vec<f64>,
    pub(crate) timeline: Vec<(f64, usize)>,
    pub(crate) done: usize,
}

impl Burst {
    pub(crate) fn json(&self) -> Value {
        let mut lat = self.lat.clone();
        lat.sort_by(f64::total_cmp);
        json!({
            "n": self.n,
            "completed": self.done,
            "create_s": round(self.create_s, 3),
            "all_done_s": round(self.all_done_s, 3),
            "per_s": round(self.per_s, 2),
            "latency_s": {
                "p50": round(percentile(&lat, 50.0), 3),
                "p95": round(percentile(&lat, 95.0), 3),
                "p99": round(percentile(&lat, 99.0), 3),
                "max": round(lat.last().copied().unwrap_or(f64::NAN), 3),
            },
        })
    }
    pub(crate) fn p(&self, q: f64) -> f64 {
        let mut lat = self.lat.clone();
        lat.sort_by(f64::total_cmp);
        percentile(&lat, q)
    }
}

//! Footprint of a provisioner process from /proc: RSS (sampled peak every 100 ms, at the
//! end of a phase, VmHWM) and CPU seconds per phase.

use crate::prelude::*;
use crate::stats::round;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProcStat {
    pub(crate) rss_kb: u64,
    pub(crate) hwm_kb: u64,
    pub(crate) cpu_s: f64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ProcStat {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        cpu_s: ticks / 100.0, // CLK_TCK is 100 on Linux
    })
}

/// Samples the watched process's RSS every 100 ms and keeps the peak.
#[derive(Default)]
pub(crate) struct Sampler {
    pub(crate) pid: AtomicU32,
    pub(crate) peak_kb: AtomicU64,
}

impl Sampler {
    pub(crate) fn watch(&self, pid: u32) {
        self.pid.store(pid, Ordering::SeqCst);
        self.reset();
    }
    pub(crate) fn reset(&self) {
        let now = proc_stat(self.pid.load(Ordering::SeqCst))
            .map(|s| s.rss_kb)
            .unwrap_or(0);
        self.peak_kb.store(now, Ordering::SeqCst);
    }
    pub(crate) fn tick(&self) {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0
            && let Some(s) = proc_stat(pid)
        {
            self.peak_kb.fetch_max(s.rss_kb, Ordering::SeqCst);
        }
    }
}

/// What one phase cost the provisioner process.
#[derive(Clone, Debug, Default)]
pub(crate) struct Footprint {
    pub(crate) cpu_s: f64,
    pub(crate) rss_end_mb: f64,
    pub(crate) rss_peak_mb: f64,
    pub(crate) hwm_mb: f64,
}

pub(crate) struct PhaseMeter {
    pub(crate) pid: u32,
    pub(crate) start: ProcStat,
}

impl PhaseMeter {
    pub(crate) fn begin(sampler: &Sampler, pid: u32) -> Self {
        sampler.watch(pid);
        PhaseMeter {
            pid,
            start: proc_stat(pid).unwrap_or_default(),
        }
    }
    pub(crate) fn end(&self, sampler: &Sampler) -> Footprint {
        sampler.tick();
        let now = proc_stat(self.pid).unwrap_or_default();
        Footprint {
            cpu_s: now.cpu_s - self.start.cpu_s,
            rss_end_mb: now.rss_kb as f64 / 1024.0,
            rss_peak_mb: sampler.peak_kb.load(Ordering::SeqCst) as f64 / 1024.0,
            hwm_mb: now.hwm_kb as f64 / 1024.0,
        }
    }
}

pub(crate) fn footprint_json(f: &Footprint) -> Value {
    json!({
        "cpu_s": round(f.cpu_s, 3),
        "rss_end_mb": round(f.rss_end_mb, 1),
        "rss_peak_mb": round(f.rss_peak_mb, 1),
        "vm_hwm_mb": round(f.hwm_mb, 1),
    })
}

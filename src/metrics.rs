//! Prometheus metrics. One process-wide set, so the NFS backend can record call latency
//! without threading a handle through every operation.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod usage;
pub use usage::{VolumeUsage, forget_volume, share_space, volume_usage};

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    provisions: Family<Labels, Counter>,
    deletions: Family<Labels, Counter>,
    provision_seconds: Histogram,
    delete_seconds: Histogram,
    nfs_seconds: Family<Labels, Histogram>,
    in_flight: Family<Labels, Gauge>,
    leader: Gauge,
    clone_bytes: Counter,
    clone_entries: Counter,
    clones: Family<Labels, Counter>,
    archives_expired: Counter,
    archive_expiry_failures: Counter,
    archive_retention_passes: Counter,
    usage: usage::UsageMetrics,
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("nfs3_provisioner");
        let provisions = Family::<Labels, Counter>::default();
        let deletions = Family::<Labels, Counter>::default();
        let provision_seconds = seconds_histogram();
        let delete_seconds = seconds_histogram();
        let nfs_seconds = Family::<Labels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let in_flight = Family::<Labels, Gauge>::default();
        let leader = Gauge::default();
        let archives_expired = Counter::default();
        let archive_expiry_failures = Counter::default();
        let archive_retention_passes = Counter::default();
        registry.register(
            "archives_expired",
            "Archives removed by their class's archiveRetention",
            archives_expired.clone(),
        );
        registry.register(
            "archive_expiry_failures",
            "Archives past their retention that could not be removed (retried next pass)",
            archive_expiry_failures.clone(),
        );
        registry.register(
            "archive_retention_passes",
            "Completed passes of archive retention over the shares",
            archive_retention_passes.clone(),
        );
        registry.register(
            "provision",
            "Volumes provisioned, by result",
            provisions.clone(),
        );
        registry.register(
            "delete",
            "Volumes reclaimed, by result and onDelete action",
            deletions.clone(),
        );
        registry.register(
            "provision_duration_seconds",
            "Time to provision a volume",
            provision_seconds.clone(),
        );
        registry.register(
            "delete_duration_seconds",
            "Time to reclaim a volume",
            delete_seconds.clone(),
        );
        registry.register(
            "nfs_call_duration_seconds",
            "NFS call latency, by operation and result",
            nfs_seconds.clone(),
        );
        registry.register(
            "in_flight",
            "Operations under way, by kind",
            in_flight.clone(),
        );
        expansion().register(&mut registry);
        registry.register(
            "leader",
            "1 when this instance holds the lease and acts",
            leader.clone(),
        );
        let (clone_bytes, clone_entries) = (Counter::default(), Counter::default());
        let clones = Family::<Labels, Counter>::default();
        registry.register(
            "clone_copied_bytes",
            "Bytes of file content copied into clones",
            clone_bytes.clone(),
        );
        registry.register(
            "clone_copied_entries",
            "Files, directories and links copied into clones",
            clone_entries.clone(),
        );
        registry.register("clone", "Clone copies finished, by result", clones.clone());
        let usage = usage::UsageMetrics::register(&mut registry);
        Self {
            registry,
            usage,
            provisions,
            deletions,
            provision_seconds,
            delete_seconds,
            nfs_seconds,
            in_flight,
            leader,
            clone_bytes,
            clone_entries,
            clones,
            archives_expired,
            archive_expiry_failures,
            archive_retention_passes,
        }
    }
}

fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn result(ok: bool) -> &'static str {
    if ok { "success" } else { "error" }
}

pub fn nfs_call(op: &'static str, took: Duration, ok: bool) {
    get()
        .nfs_seconds
        .get_or_create(&vec![("op", op), ("result", result(ok))])
        .observe(took.as_secs_f64());
}

pub fn provisioned(took: Duration, ok: bool) {
    let m = get();
    m.provisions
        .get_or_create(&vec![("result", result(ok))])
        .inc();
    if ok {
        m.provision_seconds.observe(took.as_secs_f64());
    }
}

pub fn deleted(action: &'static str, took: Duration, ok: bool) {
    let m = get();
    m.deletions
        .get_or_create(&vec![("result", result(ok)), ("action", action)])
        .inc();
    if ok {
        m.delete_seconds.observe(took.as_secs_f64());
    }
}

/// Progress of clone copies; clones in progress are `in_flight{kind="clone"}`.
pub fn clone_copied(entries: u64, bytes: u64) {
    let m = get();
    m.clone_entries.inc_by(entries);
    m.clone_bytes.inc_by(bytes);
}

pub fn clone_finished(ok: bool) {
    get()
        .clones
        .get_or_create(&vec![("result", result(ok))])
        .inc();
}

/// One archive past its retention removed (`ok`), or not.
pub fn archive_expired(ok: bool) {
    let m = get();
    if ok {
        m.archives_expired.inc();
    } else {
        m.archive_expiry_failures.inc();
    }
}

pub fn archive_retention_pass() {
    get().archive_retention_passes.inc();
}

pub fn set_leader(is_leader: bool) {
    get().leader.set(i64::from(is_leader));
}

/// Counts an operation as in flight until the guard drops.
pub struct InFlight(&'static str);

pub fn in_flight(kind: &'static str) -> InFlight {
    get().in_flight.get_or_create(&vec![("kind", kind)]).inc();
    InFlight(kind)
}

impl Drop for InFlight {
    fn drop(&mut self) {
        get().in_flight.get_or_create(&vec![("kind", self.0)]).dec();
    }
}

pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &get().registry);
    out
}

/// Expansions of bound claims (`controller::expand`), kept apart from [`Metrics`] so the
/// feature is one line there.
#[derive(Clone)]
struct Expansion {
    total: Family<Labels, Counter>,
    seconds: Histogram,
}

fn expansion() -> &'static Expansion {
    static EXPANSION: OnceLock<Expansion> = OnceLock::new();
    EXPANSION.get_or_init(|| Expansion {
        total: Family::default(),
        seconds: seconds_histogram(),
    })
}

impl Expansion {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "expand",
            "Volume expansions of bound claims, by result",
            self.total.clone(),
        );
        registry.register(
            "expand_duration_seconds",
            "Time from taking up a grown claim to its status showing the new size",
            self.seconds.clone(),
        );
    }
}

/// One expansion done (or failed), and how long it took.
pub fn expanded(took: Duration, ok: bool) {
    let m = expansion();
    m.total.get_or_create(&vec![("result", result(ok))]).inc();
    if ok {
        m.seconds.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels, exactly) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .find_map(|v| v.trim().parse().ok())
    }

    /// Names, labels and types as scrapers see them, on a registry of its own: exact
    /// counts hold here whatever other tests record in the process-wide one.
    #[test]
    fn a_fresh_registry_renders_each_metric_with_its_labels() {
        let m = Metrics::new();
        m.provisions
            .get_or_create(&vec![("result", "success")])
            .inc();
        m.deletions
            .get_or_create(&vec![("result", "error"), ("action", "delete")])
            .inc();
        m.nfs_seconds
            .get_or_create(&vec![("op", "MKDIR"), ("result", "success")])
            .observe(0.003);
        m.in_flight
            .get_or_create(&vec![("kind", "provision")])
            .inc();
        let mut text = String::new();
        encode(&mut text, &m.registry).expect("encode");
        for (series, value) in [
            ("nfs3_provisioner_provision_total{result=\"success\"}", 1.0),
            (
                "nfs3_provisioner_delete_total{result=\"error\",action=\"delete\"}",
                1.0,
            ),
            (
                "nfs3_provisioner_nfs_call_duration_seconds_count{op=\"MKDIR\",result=\"success\"}",
                1.0,
            ),
            (
                "nfs3_provisioner_nfs_call_duration_seconds_bucket{le=\"0.004\",op=\"MKDIR\",result=\"success\"}",
                1.0,
            ),
            ("nfs3_provisioner_provision_duration_seconds_count", 0.0),
            ("nfs3_provisioner_in_flight{kind=\"provision\"}", 1.0),
            ("nfs3_provisioner_leader", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
    }

    /// The recording functions reach the process-wide registry that `/metrics` serves.
    /// Other tests record there too, at the same time: series with labels no one else
    /// uses are counted exactly, the shared `provision` series by its increase.
    #[test]
    fn recording_functions_show_in_the_rendered_text() {
        let success = "nfs3_provisioner_provision_total{result=\"success\"}";
        let before = sample(&render(), success).unwrap_or(0.0);
        nfs_call("RENDER-TEST", Duration::from_millis(3), true);
        provisioned(Duration::from_millis(40), true);
        deleted("render-test", Duration::from_millis(40), false);
        let busy = "nfs3_provisioner_in_flight{kind=\"render-test\"}";
        {
            let _g = in_flight("render-test");
            assert_eq!(sample(&render(), busy), Some(1.0));
        }
        let text = render();
        assert_eq!(sample(&text, busy), Some(0.0), "{text}");
        assert!(
            sample(&text, success).unwrap_or(0.0) >= before + 1.0,
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "nfs3_provisioner_delete_total{result=\"error\",action=\"render-test\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "nfs3_provisioner_nfs_call_duration_seconds_count{op=\"RENDER-TEST\",result=\"success\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert!(
            text.contains("# TYPE nfs3_provisioner_leader gauge"),
            "{text}"
        );
    }
}

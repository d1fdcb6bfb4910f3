//! The usage scan's series: per volume (what it holds, when it was last counted,
//! whether it is over its warning size) and per share (FSSTAT's space). A volume's
//! series go when the volume does, so a scrape never shows deleted PVs.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `namespace`, `claim`, `persistentvolume`; or `server`, `share`.
type Owned = Vec<(&'static str, String)>;
type Bytes = Gauge<i64>;
type Seconds = Gauge<f64, AtomicU64>;

#[derive(Default)]
pub(super) struct UsageMetrics {
    used: Family<Owned, Bytes>,
    files: Family<Owned, Bytes>,
    unreadable: Family<Owned, Bytes>,
    over: Family<Owned, Bytes>,
    scanned: Family<Owned, Seconds>,
    free: Family<Owned, Bytes>,
    total: Family<Owned, Bytes>,
    avail: Family<Owned, Bytes>,
}

impl UsageMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        for (name, help, family) in [
            (
                "volume_used_bytes",
                "Space a volume's files take on the server, from the last usage scan",
                &m.used,
            ),
            (
                "volume_files",
                "Entries other than directories in a volume, from the last usage scan",
                &m.files,
            ),
            (
                "volume_unreadable_directories",
                "Directories in a volume the last usage scan could not read (not counted)",
                &m.unreadable,
            ),
            (
                "volume_over_capacity",
                "1 while a volume uses more than its warning share of its capacity (not enforced)",
                &m.over,
            ),
            (
                "share_free_bytes",
                "Free space on a share (FSSTAT fbytes)",
                &m.free,
            ),
            (
                "share_total_bytes",
                "Size of a share (FSSTAT tbytes)",
                &m.total,
            ),
            (
                "share_avail_bytes",
                "Space on a share available to the provisioner's identity (FSSTAT abytes)",
                &m.avail,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "volume_last_scan_timestamp_seconds",
            "When a volume's usage was last counted, in seconds since the epoch",
            m.scanned.clone(),
        );
        m
    }
}

fn volume_labels(namespace: &str, claim: &str, pv: &str) -> Owned {
    vec![
        ("namespace", namespace.to_string()),
        ("claim", claim.to_string()),
        ("persistentvolume", pv.to_string()),
    ]
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What one scan of a volume found.
pub struct VolumeUsage<'a> {
    pub namespace: &'a str,
    pub claim: &'a str,
    pub pv: &'a str,
    pub bytes: u64,
    pub files: u64,
    pub unreadable: u64,
    pub over: bool,
    pub at_seconds: f64,
}

pub fn volume_usage(u: &VolumeUsage<'_>) {
    let m = &super::get().usage;
    let l = volume_labels(u.namespace, u.claim, u.pv);
    m.used.get_or_create(&l).set(gauge(u.bytes));
    m.files.get_or_create(&l).set(gauge(u.files));
    m.unreadable.get_or_create(&l).set(gauge(u.unreadable));
    m.over.get_or_create(&l).set(i64::from(u.over));
    m.scanned.get_or_create(&l).set(u.at_seconds);
}

/// Drops every series of a volume that is gone.
pub fn forget_volume(namespace: &str, claim: &str, pv: &str) {
    let m = &super::get().usage;
    let l = volume_labels(namespace, claim, pv);
    for f in [&m.used, &m.files, &m.unreadable, &m.over] {
        f.remove(&l);
    }
    m.scanned.remove(&l);
}

pub fn share_space(server: &str, share: &str, total: u64, free: u64, avail: u64) {
    let m = &super::get().usage;
    let l = vec![("server", server.to_string()), ("share", share.to_string())];
    m.total.get_or_create(&l).set(gauge(total));
    m.free.get_or_create(&l).set(gauge(free));
    m.avail.get_or_create(&l).set(gauge(avail));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_shows_with_its_labels_until_it_is_forgotten() {
        let series = "nfs3_provisioner_volume_used_bytes{namespace=\"ns-metrics-test\",claim=\"c\",persistentvolume=\"pv-metrics-test\"} 4096";
        volume_usage(&VolumeUsage {
            namespace: "ns-metrics-test",
            claim: "c",
            pv: "pv-metrics-test",
            bytes: 4096,
            files: 3,
            unreadable: 0,
            over: true,
            at_seconds: 1.5e9,
        });
        share_space("192.0.2.9", "/metrics-test", 100, 40, 30);
        let text = super::super::render();
        assert!(text.contains(series), "{text}");
        for line in [
            "nfs3_provisioner_volume_files{namespace=\"ns-metrics-test\",claim=\"c\",persistentvolume=\"pv-metrics-test\"} 3",
            "nfs3_provisioner_volume_over_capacity{namespace=\"ns-metrics-test\",claim=\"c\",persistentvolume=\"pv-metrics-test\"} 1",
            "nfs3_provisioner_volume_last_scan_timestamp_seconds{namespace=\"ns-metrics-test\",claim=\"c\",persistentvolume=\"pv-metrics-test\"} 1500000000.0",
            "nfs3_provisioner_share_free_bytes{server=\"192.0.2.9\",share=\"/metrics-test\"} 40",
            "nfs3_provisioner_share_total_bytes{server=\"192.0.2.9\",share=\"/metrics-test\"} 100",
            "nfs3_provisioner_share_avail_bytes{server=\"192.0.2.9\",share=\"/metrics-test\"} 30",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        forget_volume("ns-metrics-test", "c", "pv-metrics-test");
        let text = super::super::render();
        assert!(!text.contains("pv-metrics-test"), "{text}");
    }
}

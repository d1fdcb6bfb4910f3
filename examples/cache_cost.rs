//! Where the cache's memory goes: live heap per object in a kube reflector store, for
//! the three kinds of object that fill it in a big cluster (a bound claim stripped as
//! `controller::cache` strips it, another provisioner's PV and one of ours as
//! `CachedVolume` keeps them), split into the struct itself, its strings and maps, and
//! the store's key, `Arc` and map slot. Counted by a global allocator, so the figures
//! are exact for these objects, not an RSS estimate.
//!
//!     cargo run --example cache_cost
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::{reflector, watcher};
use nfs3_provisioner::controller::cached_volume::CachedVolume;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

const N: usize = 20_000;

fn uid(i: usize) -> String {
    format!("{:08x}-1b2c-4d5e-8f90-{:012x}", i, i * 7)
}

/// A bound claim as the claim cache keeps it (cache::strip_claim of a bound claim).
fn bound_claim(i: usize) -> PersistentVolumeClaim {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("data-claim-{i}"), "namespace": format!("tenant-{}", i % 50),
            "uid": uid(i), "resourceVersion": format!("{}", 1_000_000 + i),
            "creationTimestamp": "2026-12-01T06:00:00Z"},
        "spec": {"volumeName": format!("pvc-{}", uid(i)), "storageClassName": "nfs"},
        "status": {"phase": "Bound"}
    }))
    .unwrap()
}

fn volume_json(i: usize, ours: bool) -> serde_json::Value {
    let mut ann = serde_json::Map::new();
    ann.insert(
        "pv.kubernetes.io/provisioned-by".into(),
        (if ours {
            "nfs3.example.com"
        } else {
            "other.example.com"
        })
        .into(),
    );
    if ours {
        ann.insert("nfs3-provisioner.io/server".into(), "127.0.0.1".into());
        ann.insert("nfs3-provisioner.io/share".into(), "/export1".into());
        ann.insert(
            "nfs3-provisioner.io/directory".into(),
            format!("tenant-{}-data-claim-{i}-pvc-{}", i % 50, uid(i)).into(),
        );
        ann.insert("nfs3-provisioner.io/on-delete".into(), "delete".into());
        ann.insert("pv.kubernetes.io/bound-by-controller".into(), "yes".into());
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("pvc-{}", uid(i)), "uid": uid(i + N),
            "resourceVersion": format!("{}", 2_000_000 + i), "creationTimestamp": "2026-12-01T06:00:00Z",
            "annotations": ann, "finalizers": if ours { vec!["external-provisioner.volume.kubernetes.io/finalizer", "kubernetes.io/pv-protection"] } else { vec!["kubernetes.io/pv-protection"] }},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": format!("tenant-{}", i % 50),
                "name": format!("data-claim-{i}"), "uid": uid(i), "resourceVersion": format!("{}", 1_000_000 + i)},
            "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "nfs", "volumeMode": "Filesystem",
            "nfs": {"server": "127.0.0.1", "path": format!("/export1/tenant-{}-data-claim-{i}-pvc-{}", i % 50, uid(i))}},
        "status": {"phase": "Bound"}
    })
}

fn measure<K>(what: &str, make: impl Fn(usize) -> K)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    // The objects alone: their heap (strings, maps), without the Vec holding them.
    let base = LIVE.load(Relaxed);
    let objs: Vec<K> = (0..N).map(&make).collect();
    let vec_bytes = (objs.capacity() * std::mem::size_of::<K>()) as isize;
    let heap = LIVE.load(Relaxed) - base - vec_bytes;
    // The store: a clone of each under its key, as a reflector keeps them.
    let (reader, mut writer) = reflector::store::<K>();
    let before = LIVE.load(Relaxed);
    for o in &objs {
        writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
    }
    let store = LIVE.load(Relaxed) - before;
    assert_eq!(reader.state().len(), N);
    let per = |b: isize| b as f64 / N as f64;
    let inline = std::mem::size_of::<K>() as f64;
    println!(
        "{what}: {:.0} B per object in the store = struct {inline:.0} B (inline, all-Option fields) + its strings and maps {:.0} B + key, Arc and map slot {:.0} B",
        per(store),
        per(heap),
        per(store) - inline - per(heap),
    );
}

fn main() {
    println!(
        "size_of: PersistentVolumeClaim {} B, CachedVolume {} B, ObjectRef<PVC> {} B",
        std::mem::size_of::<PersistentVolumeClaim>(),
        std::mem::size_of::<CachedVolume>(),
        std::mem::size_of::<reflector::ObjectRef<PersistentVolumeClaim>>()
    );
    measure("bound claim, stripped", bound_claim);
    measure("others' PV, CachedVolume stripped", |i| {
        let mut v: CachedVolume = serde_json::from_value(volume_json(i, false)).unwrap();
        v.strip_foreign(&["nfs3.example.com".to_string()]);
        v
    });
    measure("own PV, CachedVolume whole", |i| {
        serde_json::from_value::<CachedVolume>(volume_json(i, true)).unwrap()
    });
}

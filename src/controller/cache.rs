//! What the caches keep: watches of classes, claims and volumes, each object stripped
//! to what the controllers read before it is stored (claims down to the labels and
//! annotations the served templates use), and waiting for a cache's first full list.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use tracing::warn;

use super::cut_to;
use crate::path::{self, Dialect};
use crate::plan;

/// Claims per list page: at most about 15 MB of tenant metadata in memory at once.
pub(super) const CLAIM_PAGE_SIZE: u32 = 10;

/// Drops what the controllers never read, so the caches stay small at thousands of objects.
pub(super) fn strip<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(ann) = obj.meta_mut().annotations.as_mut() {
        ann.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// What of a claim's metadata the served classes read: the cache keeps only that, so a
/// tenant cannot grow the provisioner's memory with labels and annotations on claims
/// (of any class) that it never looks at.
#[derive(Debug, Default)]
pub struct Served {
    classes: HashSet<String>,
    labels: HashSet<String>,
    annotations: HashSet<String>,
    /// Classes already warned about, with the template warned about.
    warned: HashSet<(String, String)>,
}

/// Annotations provisioning reads whatever the class.
const READ_ANNOTATIONS: &[&str] = &[
    plan::ANN_STORAGE_PROVISIONER,
    plan::ANN_STORAGE_PROVISIONER_BETA,
    plan::ANN_SELECTED_NODE,
    plan::ANN_CLASS_BETA,
    plan::restore::ANN_RESTORE_FROM,
];

/// Marks a cached claim that lost labels or annotations to [`strip_claim`]: if its class
/// turns out to need them (a class made after the claim), provisioning reads it again.
pub(crate) const ANN_STRIPPED: &str = "nfs3-provisioner.io/cache-stripped";

/// Longest template value kept: a longer one cannot make a valid path anyway (1024
/// bytes at most), and this much still fails path validation the same way.
const MAX_KEPT_VALUE: usize = 1025;

impl Served {
    /// Recomputes what the classes of `provisioner` read, and warns once per class whose
    /// template lets claims of different namespaces collide.
    pub(super) fn update(&mut self, classes: &[Arc<StorageClass>], provisioner: &str) {
        self.classes.clear();
        self.labels.clear();
        self.annotations.clear();
        for class in classes.iter().filter(|c| c.provisioner == provisioner) {
            let name = class.metadata.name.clone().unwrap_or_default();
            self.classes.insert(name.clone());
            let params = class.parameters.clone().unwrap_or_default();
            let template = [
                ("pathPattern", Dialect::PathPattern),
                ("subDir", Dialect::SubDir),
            ]
            .into_iter()
            .find_map(|(k, d)| params.get(k).map(|t| (t.clone(), d)));
            let Some((template, dialect)) = template else {
                continue;
            };
            let (labels, annotations) = path::used_keys(&template, dialect);
            self.labels.extend(labels);
            self.annotations.extend(annotations);
            let sharing = params.get("directorySharing").map(String::as_str);
            if let Some(why) = path::collision_risk(&template, dialect)
                && sharing != Some("any")
                && self.warned.insert((name.clone(), template.clone()))
            {
                warn!(
                    class = name,
                    template,
                    "StorageClass template can give claims of different namespaces the same or nested directories: {why}; such claims are refused, but a safer template starts with the namespace as a segment of its own, e.g. \"${{.PVC.namespace}}/${{.PVC.name}}\""
                );
            }
        }
    }
}

/// Strips a claim to what provisioning reads. A claim that names a volume is never
/// provisioned again (it stays bound, or goes Lost), so of those, the cache keeps only
/// what says so: with thousands of bound claims in a cluster, their labels, annotations
/// and status are most of the cache.
pub(super) fn strip_claim(pvc: &mut PersistentVolumeClaim, served: &Served) {
    strip(pvc);
    let meta = &mut pvc.metadata;
    meta.owner_references = None;
    meta.finalizers = None;
    let mut capacity = None;
    pvc.status = pvc.status.take().map(|s| {
        capacity = only_storage(s.capacity);
        PersistentVolumeClaimStatus {
            phase: s.phase,
            ..Default::default()
        }
    });
    let Some(spec) = pvc.spec.as_mut() else {
        return;
    };
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        let requests = spec.resources.take().and_then(|r| only_storage(r.requests));
        let size = |m: &Option<BTreeMap<String, Quantity>>| {
            m.as_ref()
                .and_then(|m| m.get("storage"))
                .map(|q| q.0.clone())
        };
        // A bound claim asking for more keeps both sizes for expansion; the others,
        // nearly all, keep neither.
        let grows = plan::expand::may_grow(size(&requests).as_deref(), size(&capacity).as_deref());
        *spec = PersistentVolumeClaimSpec {
            volume_name: spec.volume_name.take(),
            storage_class_name: spec.storage_class_name.take(),
            resources: grows.then(|| VolumeResourceRequirements {
                requests,
                ..Default::default()
            }),
            ..Default::default()
        };
        if grows && let Some(status) = pvc.status.as_mut() {
            status.capacity = capacity;
        }
        let meta = &mut pvc.metadata;
        meta.annotations = None;
        meta.labels = None;
        return;
    }
    let ours = plan::class_name(pvc).is_some_and(|c| served.classes.contains(c));
    let meta = &mut pvc.metadata;
    let mut stripped = false;
    if let Some(labels) = meta.labels.as_mut() {
        let before = labels.len();
        labels.retain(|k, _| ours && served.labels.contains(k));
        labels.values_mut().for_each(truncate);
        stripped |= labels.len() != before;
    }
    if let Some(ann) = meta.annotations.as_mut() {
        let before = ann.len();
        ann.retain(|k, _| {
            READ_ANNOTATIONS.contains(&k.as_str()) || (ours && served.annotations.contains(k))
        });
        ann.values_mut().for_each(truncate);
        stripped |= ann.len() != before;
    }
    if stripped {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(ANN_STRIPPED.to_string(), String::new());
    }
}

/// The `storage` entry of a resource list, if any: the only one read. Cut past the
/// longest quantity expansion reads, which it then refuses as too large: a tenant's
/// thousand-digit request is not kept whole for every bound claim.
fn only_storage(list: Option<BTreeMap<String, Quantity>>) -> Option<BTreeMap<String, Quantity>> {
    let (key, mut q) = list?.remove_entry("storage")?;
    cut_to(&mut q.0, plan::quantity::MAX_LEN + 1);
    Some(BTreeMap::from([(key, q)]))
}

fn truncate(v: &mut String) {
    cut_to(v, MAX_KEPT_VALUE);
}

pub(super) fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    strip: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(strip)
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

/// Waits for a store's first full list. The controller waits on the same store, and a
/// store wakes only one of several waiters (kube-runtime's DelayedInit keeps one waker),
/// so this asks again every 50 ms instead of relying on being woken (readiness
/// then lags the real sync by at most that).
pub(super) async fn synced<K>(store: &Store<K>) -> Result<(), reflector::store::WriterDropped>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        if let Ok(r) =
            tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready()).await
        {
            return r;
        }
    }
}

/// Whether the API server sends a watch's initial list as events (streaming lists, the
/// WatchList feature: beta but off by default in Kubernetes 1.33, which refuses such a
/// watch with 422). A streamed list holds one object at a time where a listed page holds
/// all of its own, and needs no round trip per page. Asked once, with a selector no claim
/// has, so the answer carries no objects; anything but a yes falls back to lists.
pub(super) async fn streams_lists(client: &kube::Client) -> bool {
    let probe = kube::api::WatchParams::streaming_lists()
        .labels("nfs3-provisioner.io/streaming-list-probe")
        .timeout(1);
    match kube::Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::all(client.clone())
        .watch(&probe, "0")
        .await
    {
        Ok(_) => {
            tracing::info!("API server streams initial lists: caches are filled from watches");
            true
        }
        Err(e) => {
            tracing::info!(answer = %e, "API server does not stream initial lists: caches are filled from lists");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(volume_name: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "c", "namespace": "ns", "uid": "u",
                "labels": {"team": "a"},
                "annotations": {
                    "volume.kubernetes.io/storage-provisioner": "p",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"
                },
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi", "example.com/x": "1"},
                    "limits": {"storage": "5Gi"}},
                "storageClassName": "nfs",
                "volumeName": volume_name
            },
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi", "example.com/x": "1"},
                "accessModes": ["ReadWriteMany"],
                "conditions": [{"type": "Resizing", "status": "True"}]}
        }))
        .unwrap()
    }

    #[test]
    fn bound_claims_are_cached_as_bound_and_nothing_more() {
        let mut c = claim(Some("pvc-u"));
        strip_claim(&mut c, &Served::default());
        assert_eq!(c.metadata.name.as_deref(), Some("c"));
        assert_eq!(c.metadata.uid.as_deref(), Some("u"));
        assert!(c.metadata.annotations.is_none() && c.metadata.labels.is_none());
        assert!(c.metadata.managed_fields.is_none());
        let spec = c.spec.as_ref().unwrap();
        assert_eq!(spec.volume_name.as_deref(), Some("pvc-u"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
        assert!(spec.access_modes.is_none() && spec.resources.is_none());
        let status = c.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Bound"));
        assert!(status.capacity.is_none());
        assert!(status.conditions.is_none() && status.access_modes.is_none());

        // One that asks for more than it has keeps both sizes for expansion, only those.
        let mut growing = claim(Some("pvc-u"));
        let requests = growing.spec.as_mut().unwrap().resources.as_mut().unwrap();
        requests
            .requests
            .as_mut()
            .unwrap()
            .insert("storage".into(), Quantity("2Gi".into()));
        strip_claim(&mut growing, &Served::default());
        let spec = growing.spec.as_ref().unwrap();
        let requests = spec.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests["storage"].0, "2Gi");
        assert!(spec.resources.as_ref().unwrap().limits.is_none());
        let status = growing.status.as_ref().unwrap();
        assert_eq!(status.capacity.as_ref().unwrap().len(), 1);
        assert_eq!(status.capacity.as_ref().unwrap()["storage"].0, "1Gi");
        assert!(status.conditions.is_none() && status.access_modes.is_none());

        // A thousand-digit request is kept only as far as it takes to refuse it.
        let mut huge = claim(Some("pvc-u"));
        let digits = "7".repeat(3000);
        huge.spec
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .requests = Some(BTreeMap::from([("storage".to_string(), Quantity(digits))]));
        strip_claim(&mut huge, &Served::default());
        let kept = &huge
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests;
        let kept = &kept.as_ref().unwrap()["storage"].0;
        assert_eq!(kept.len(), plan::quantity::MAX_LEN + 1);
        assert!(matches!(
            plan::quantity::Size::parse(kept),
            Err(plan::quantity::QuantityError::TooLarge(_))
        ));
        // Even with a class of ours, a claim that names a volume is left alone.
        let class = StorageClass {
            metadata: kube::api::ObjectMeta {
                name: Some("nfs".into()),
                ..Default::default()
            },
            provisioner: "p".into(),
            ..Default::default()
        };
        assert!(matches!(
            crate::plan::decide_claim(&c, Some(&class), "p"),
            crate::plan::ClaimDecision::Skip("claim already names a volume")
        ));
    }

    #[test]
    fn claims_waiting_for_a_volume_keep_what_provisioning_reads() {
        let served = Served {
            classes: HashSet::from(["nfs".to_string()]),
            labels: HashSet::from(["team".to_string()]),
            annotations: HashSet::from(["example.com/folder".to_string()]),
            warned: HashSet::new(),
        };
        let mut c = claim(None);
        let meta = &mut c.metadata;
        let labels = meta.labels.as_mut().unwrap();
        labels.insert("huge".into(), "x".repeat(60));
        labels.insert("team".into(), "a".into());
        let ann = meta.annotations.as_mut().unwrap();
        ann.insert("example.com/folder".into(), "y".repeat(300_000));
        ann.insert("example.com/other".into(), "z".repeat(300_000));
        strip_claim(&mut c, &served);
        assert!(c.metadata.managed_fields.is_none());
        let ann = c.metadata.annotations.as_ref().unwrap();
        assert!(ann.contains_key("volume.kubernetes.io/storage-provisioner"));
        assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert!(!ann.contains_key("example.com/other"));
        assert_eq!(ann["example.com/folder"].len(), MAX_KEPT_VALUE);
        assert!(ann.contains_key(ANN_STRIPPED));
        let labels = c.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.len(), 1);
        assert_eq!(labels["team"], "a");
        assert!(c.spec.as_ref().unwrap().resources.is_some());
        assert!(c.status.as_ref().unwrap().conditions.is_none());

        // A claim of a class that is not ours keeps no label and only the annotations
        // every claim is read for.
        let mut foreign = claim(None);
        foreign.spec.as_mut().unwrap().storage_class_name = Some("other".into());
        strip_claim(&mut foreign, &served);
        assert!(foreign.metadata.labels.as_ref().unwrap().is_empty());
        let ann = foreign.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann.len(), 2, "{ann:?}");
    }
}

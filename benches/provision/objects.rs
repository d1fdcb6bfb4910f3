//! The API objects the bench makes: namespaces, classes, claims, pre-bound and plain PVs,
//! and the bursts that create them with a bounded number of calls in flight.

use crate::prelude::*;
use crate::subjects::Subject;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

pub(crate) fn claim(
    ns: &str,
    name: &str,
    class: &str,
    volume: Option<&str>,
) -> Res<PersistentVolumeClaim> {
    let mut spec = json!({
        "storageClassName": class,
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "1Gi"}},
    });
    if let Some(v) = volume {
        spec["volumeName"] = json!(v);
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))?)
}

pub(crate) fn prebound_pv(
    name: &str,
    ns: &str,
    claim: &str,
    class: &str,
    server: &str,
) -> Res<PersistentVolume> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"nfs3p-bench": "limit"}},
        "spec": {
            "storageClassName": class,
            "accessModes": ["ReadWriteMany"],
            "capacity": {"storage": "1Gi"},
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": ns, "name": claim},
            "nfs": {"server": server, "path": format!("/bench-limit/{name}")},
        },
    }))?)
}

pub(crate) async fn create_namespace(client: &Client, name: &str) -> Res<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

pub(crate) async fn delete_namespace_and_wait(client: &Client, name: &str, limit: Duration) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if matches!(api.get_opt(name).await, Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log(format!(
        "namespace {name} still there after {limit:?}; left to the namespace controller"
    ));
}

pub(crate) async fn create_class(client: &Client, s: Subject) -> Res<String> {
    let name = format!("nfs3p-bench-{}", s.name());
    let mut v = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": s.provisioner(),
        "reclaimPolicy": "Delete",
    });
    if s.is_process() {
        // Both understand archiveOnDelete: "false" = delete the directory.
        v["parameters"] = json!({"archiveOnDelete": "false"});
    }
    let sc: StorageClass = serde_json::from_value(v)?;
    let api: Api<StorageClass> = Api::all(client.clone());
    let _ = api.delete(&name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), &sc).await?;
    Ok(name)
}

/// Creates `n` claims (and for the limit their pre-bound PVs), `CREATE_CONCURRENCY` at a
/// time; returns when each one existed (the create call's answer).
pub(crate) async fn create_burst(
    client: &Client,
    ns: &str,
    class: &str,
    n: usize,
    limit_server: Option<&str>,
) -> Res<HashMap<String, Instant>> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let created: Vec<(String, Instant)> = futures::stream::iter(0..n)
        .map(|i| {
            let (claims, pvs) = (claims.clone(), pvs.clone());
            async move {
                let name = format!("c-{i:05}");
                let pp = PostParams::default();
                match limit_server {
                    None => {
                        claims.create(&pp, &claim(ns, &name, class, None)?).await?;
                    }
                    Some(server) => {
                        let pv_name = format!("{ns}-{name}");
                        let pv = prebound_pv(&pv_name, ns, &name, class, server)?;
                        // Bound both ways: the PV's claimRef names the claim and the
                        // claim's volumeName the PV, the shortest path through the
                        // binder. PV first, so the binder never sees a claim whose
                        // volume is missing (it would wait for its periodic resync).
                        pvs.create(&pp, &pv).await?;
                        claims
                            .create(&pp, &claim(ns, &name, class, Some(&pv_name))?)
                            .await?;
                    }
                }
                Ok::<_, BoxError>((name, Instant::now()))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(created.into_iter().collect())
}

/// A PV bound to nothing, for the ceiling: what the API server accepts, with no binder
/// work behind it (no claim names it, its class has no claims).
pub(crate) fn plain_pv(name: &str, class: &str, server: &str) -> Res<PersistentVolume> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"nfs3p-bench": "ceiling"}},
        "spec": {
            "storageClassName": class,
            "accessModes": ["ReadWriteMany"],
            "capacity": {"storage": "1Gi"},
            "persistentVolumeReclaimPolicy": "Retain",
            "nfs": {"server": server, "path": format!("/bench-ceiling/{name}")},
        },
    }))?)
}

/// Creates `n` plain PVs named `<prefix>-NNNNN`, `CREATE_CONCURRENCY` calls in flight (the
/// provisioners' own concurrency): (name, call sent, call answered) of each.
pub(crate) async fn create_pvs(
    client: &Client,
    prefix: &str,
    class: &str,
    n: usize,
    server: &str,
) -> Res<Vec<(String, Instant, Instant)>> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    futures::stream::iter(0..n)
        .map(|i| {
            let pvs = pvs.clone();
            async move {
                let name = format!("{prefix}-{i:05}");
                let pv = plain_pv(&name, class, server)?;
                let sent = Instant::now();
                pvs.create(&PostParams::default(), &pv).await?;
                Ok::<_, BoxError>((name, sent, Instant::now()))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await
}

//! Expansion end to end: the real provisioner (with deploy/base's rights), a real
//! kube-apiserver and kube-controller-manager (whose expand controller leaves our NFS
//! claims to "an external controller") and nfs-ganesha. A grown claim of an expandable
//! class gets its PV and its status grown; a class without expansion is refused by the
//! API server; another provisioner's volume is left alone; and the latency from a raised
//! request to the claim's new capacity, over 20 claims.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::fixture::scene;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// Both capacities of a claim: (PV spec.capacity, claim status.capacity).
async fn capacities(client: &kube::Client, ns: &str, claim: &str) -> Option<(String, String)> {
    let c = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await
        .ok()??;
    let status = c
        .status
        .as_ref()?
        .capacity
        .as_ref()?
        .get("storage")?
        .0
        .clone();
    let pv = pv_get(client, c.spec.as_ref()?.volume_name.as_deref()?).await?;
    let pv_cap = pv.spec?.capacity?.get("storage")?.0.clone();
    Some((pv_cap, status))
}

async fn request(
    client: &kube::Client,
    ns: &str,
    claim: &str,
    size: &str,
) -> Result<PersistentVolumeClaim, kube::Error> {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .patch(
            claim,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": size}}}})),
        )
        .await
}

/// Waits until the claim's PV and status both say `want` (as the API server writes it).
async fn grown_to(
    client: &kube::Client,
    ns: &str,
    claim: &str,
    want: &str,
    limit: Duration,
    p: &Provisioner,
) {
    let what = format!("{ns}/{claim} PV and status capacity {want}");
    wait_explained(
        &what,
        limit,
        || p.log_tail(20),
        || async move {
            let (pv, status) = capacities(client, ns, claim).await?;
            (pv == want && status == want).then_some(())
        },
    )
    .await
}

fn refused(r: Result<PersistentVolumeClaim, kube::Error>, what: &str) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => s.message,
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_claim_gets_its_volume_and_status_grown_and_nothing_else_is() {
    let (fx, p, ns, class) = scene(
        "expand",
        delete_on(&export1()),
        json!({"allowVolumeExpansion": true}),
    )
    .await;
    let client = fx.client.clone();
    let fixed = fx.class("fixed", delete_on(&export1())).await;
    fx.claim(&ns, "data", &class, json!({})).await;
    fx.claim(&ns, "fixed", &fixed, json!({})).await;
    fx.claim(&ns, "gone", &class, json!({})).await;
    let limit = Duration::from_secs(60);
    let pv = fx.bound_pv(&ns, "data", limit).await;
    fx.bound_pv(&ns, "fixed", limit).await;
    fx.bound_pv(&ns, "gone", limit).await;

    // The positive control: the API server refuses to grow a claim whose class does not
    // allow it, and to shrink one below its capacity; the test sees refusals.
    let why = refused(
        request(&client, &ns, "fixed", "2Gi").await,
        "grow, class without expansion",
    );
    println!("class without expansion: {why}");
    let why = refused(request(&client, &ns, "data", "512Mi").await, "shrink");
    println!("shrink: {why}");

    request(&client, &ns, "data", "2Gi").await.expect("grow");
    grown_to(&client, &ns, "data", "2Gi", Duration::from_secs(30), &p).await;
    let c = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get("data")
        .await
        .expect("claim");
    let status = c.status.expect("status");
    assert_eq!(
        status
            .allocated_resources
            .as_ref()
            .map(|a| a["storage"].0.as_str()),
        Some("2Gi")
    );
    assert!(
        status
            .allocated_resource_statuses
            .as_ref()
            .is_none_or(|m| !m.contains_key("storage")),
        "nothing pending: {:?}",
        status.allocated_resource_statuses
    );
    assert!(
        status
            .conditions
            .iter()
            .flatten()
            .all(|c| c.type_ != "Resizing"),
        "{:?}",
        status.conditions
    );
    // kube-controller-manager names no resizer for an NFS volume (it does for CSI).
    let ann = c.metadata.annotations.unwrap_or_default();
    assert!(
        !ann.contains_key("volume.kubernetes.io/storage-resizer"),
        "{ann:?}"
    );
    // kube-controller-manager's own word on the claim, and ours.
    wait_event(
        &client,
        &ns,
        "data",
        "ExternalExpanding",
        "external controller",
        limit,
    )
    .await;
    wait_event(
        &client,
        &ns,
        "data",
        "Resizing",
        pv.metadata.name.as_deref().unwrap_or(""),
        limit,
    )
    .await;
    wait_event(&client, &ns, "data", "VolumeResizeSuccessful", "", limit).await;
    assert!(
        p.metric("nfs3_provisioner_expand_total{result=\"success\"}")
            .is_some_and(|n| n >= 1.0),
        "the success is counted"
    );

    // Grown twice in quick succession, in other notations: it ends at the last size.
    request(&client, &ns, "data", "3Gi").await.expect("grow");
    request(&client, &ns, "data", "5e9")
        .await
        .expect("grow again");
    grown_to(&client, &ns, "data", "5e9", Duration::from_secs(30), &p).await;

    // Huge, as the API server accepts it: bookkeeping, so it is written as asked.
    request(&client, &ns, "data", "1Ei")
        .await
        .expect("grow huge");
    grown_to(&client, &ns, "data", "1Ei", Duration::from_secs(30), &p).await;

    // As after a restart between the PV's write and the claim's, with the PV made
    // bigger still meanwhile: the claim is finished, and the PV is never shrunk to it.
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let volumes = Api::<PersistentVolume>::all(client.clone());
    volumes
        .patch(
            &pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"capacity": {"storage": "5Ei"}}})),
        )
        .await
        .expect("grow the PV by hand");
    request(&client, &ns, "data", "3Ei").await.expect("grow");
    wait_explained(
        "the claim's status at 3Ei",
        Duration::from_secs(30),
        || p.log_tail(20),
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let (_, status) = capacities(&client, &ns, "data").await?;
                (status == "3Ei").then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        capacities(&client, &ns, "data").await,
        Some(("5Ei".to_string(), "3Ei".to_string())),
        "a PV bigger than the request stays as it is"
    );

    // Grown and deleted at once: no harm, the volume is reclaimed as usual.
    request(&client, &ns, "gone", "2Gi").await.expect("grow");
    delete_claim(&client, &ns, "gone").await;

    // Another provisioner's volume of the same class, bound to a claim by name: its
    // growth is allowed by the API server (the class allows it), and left alone by us.
    let foreign_pv = format!("{}-foreign", fx.token);
    let static_pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": foreign_pv, "labels": fx.labels()},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "nfs": {"server": "127.0.0.1", "path": "/nonexistent-static"},
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": class,
            "claimRef": {"namespace": ns, "name": "static"},
        },
    }))
    .expect("a PV");
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &static_pv)
        .await
        .expect("create the static PV");
    fx.claim_with(
        &ns,
        "static",
        &class,
        json!({}),
        json!({"volumeName": foreign_pv}),
    )
    .await;
    fx.bound_pv(&ns, "static", limit).await;
    request(&client, &ns, "static", "2Gi")
        .await
        .expect("grow the static claim");
    wait_event(
        &client,
        &ns,
        "static",
        "ExternalExpanding",
        "external controller",
        limit,
    )
    .await;
    // Then one of ours, grown after it: once that is done, the provisioner has seen
    // the static claim's change too.
    request(&client, &ns, "data", "6Ei").await.expect("grow");
    grown_to(&client, &ns, "data", "6Ei", Duration::from_secs(30), &p).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        capacities(&client, &ns, "static").await,
        Some(("1Gi".to_string(), "1Gi".to_string())),
        "another provisioner's volume is not grown"
    );
    let ours: Vec<_> = events_for(&client, &ns, "static")
        .await
        .into_iter()
        .filter(|(_, r, _)| r.starts_with("VolumeResize") || r == "Resizing")
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
    Api::<PersistentVolume>::all(client.clone())
        .delete(&foreign_pv, &Default::default())
        .await
        .expect("delete the static PV");

    // Nothing went wrong on the way.
    let failed = p
        .metric("nfs3_provisioner_expand_total{result=\"error\"}")
        .unwrap_or(0.0);
    assert_eq!(failed, 0.0, "{}", p.log_tail(30));
    fx.reclaim_all(&ns, Duration::from_secs(60), &p).await;
}

/// From a raised request (the patch answered) to the claim's status showing the new
/// size, over 20 claims grown at once. The figure the README cites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expansion_latency_over_20_claims() {
    const N: usize = 20;
    let (fx, p, ns, class) = scene(
        "expand-latency",
        delete_on(&export1()),
        json!({"allowVolumeExpansion": true}),
    )
    .await;
    let client = fx.client.clone();
    for i in 0..N {
        fx.claim(&ns, &format!("c{i:02}"), &class, json!({})).await;
    }
    fx.all_bound(&ns, N, Duration::from_secs(90), &p).await;

    let mut raised = Vec::with_capacity(N);
    for i in 0..N {
        request(&client, &ns, &format!("c{i:02}"), "2Gi")
            .await
            .expect("grow");
        raised.push(Instant::now());
    }
    let mut took: Vec<Option<Duration>> = vec![None; N];
    let deadline = Instant::now() + Duration::from_secs(60);
    while took.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "not all grown within 60 s: {took:?}\n{}",
            p.log_tail(30)
        );
        for c in claims(&client, &ns).await {
            let name = c.metadata.name.clone().unwrap_or_default();
            let Some(i) = name.strip_prefix('c').and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            let cap = c
                .status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|m| m.get("storage"))
                .map(|q| q.0.clone());
            if i < N && took[i].is_none() && cap.as_deref() == Some("2Gi") {
                took[i] = Some(raised[i].elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ms: Vec<u128> = took.iter().flatten().map(Duration::as_millis).collect();
    ms.sort_unstable();
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    println!(
        "expansion latency over {N} claims (request raised -> status.capacity, 50 ms polls): p50 {} ms, p99 {} ms, max {} ms",
        at(0.5),
        at(0.99),
        ms[ms.len() - 1]
    );
    // The provisioner's own part, as its histogram has it.
    let sum = p
        .metric("nfs3_provisioner_expand_duration_seconds_sum")
        .unwrap_or(0.0);
    let count = p
        .metric("nfs3_provisioner_expand_duration_seconds_count")
        .unwrap_or(0.0);
    assert!(count >= N as f64, "{count} expansions counted");
    println!(
        "the provisioner's own part (claim read, three writes): mean {:.0} ms over {count} expansions",
        sum / count * 1000.0
    );
    // Every PV says so too.
    for pv in volumes_of(&client, &ns).await {
        let cap = pv
            .spec
            .and_then(|s| s.capacity)
            .and_then(|c| c.get("storage").cloned());
        assert_eq!(cap.map(|q| q.0).as_deref(), Some("2Gi"));
    }
    fx.reclaim_all(&ns, Duration::from_secs(90), &p).await;
}

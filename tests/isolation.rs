//! Tenant isolation, end to end: hostile claims against the real provisioner binary (with
//! the ServiceAccount of deploy/), the real control plane and nfs-ganesha. Each attack
//! must leave the hostile claim Pending with a `ProvisioningFailed` event that says why,
//! the victim's directory exactly as it was (entries, contents, modes, owners), and the
//! victim's claim Bound; the cases the class allows must still work.
//!
//! Every scenario runs its own provisioner name, class and namespaces; its fixture
//! deletes them when the test ends, passed or failed.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::*;
use common::fixture::Fixture;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const BIND: Duration = Duration::from_secs(60);
/// A refusal is retried at most every 30 s (a claim refused for another volume's
/// directory is not told when it goes): twice that, and a margin.
const REFUSAL: Duration = Duration::from_secs(75);

/// One scenario: its provisioner and a [`Fixture`] that removes the classes,
/// namespaces, PVs and directories when the test ends.
struct Scene {
    /// Declared first, so it is killed before the fixture cleans up.
    p: Provisioner,
    fx: Fixture,
    client: Client,
    /// The scenario's own directory on export1: every template starts inside it, so
    /// scenarios never meet on the shared export (the fixture removes it).
    root: String,
    classes: usize,
}

impl Scene {
    async fn new(label: &str) -> Self {
        let fx = Fixture::new(label).await;
        Scene {
            p: fx.start("", &[]),
            client: fx.client.clone(),
            root: fx.token.clone(),
            classes: 0,
            fx,
        }
    }

    /// A class whose template is `template` below the scenario's root directory.
    async fn class(&mut self, template: &str, extra: serde_json::Value) -> String {
        self.classes += 1;
        let mut params = json!({
            "server": "127.0.0.1",
            "share": export1(),
            "pathPattern": format!("{}/{template}", self.root),
            "onDelete": "delete",
        });
        if let (Some(p), Some(add)) = (params.as_object_mut(), extra.as_object()) {
            for (k, v) in add {
                p.insert(k.clone(), v.clone());
            }
        }
        self.fx.class(&format!("c{}", self.classes), params).await
    }

    async fn namespace(&mut self, name: Option<String>) -> String {
        match name {
            Some(n) => self.fx.namespace_named(&n).await,
            None => self.fx.namespace().await,
        }
    }

    /// The provisioner's peak RSS so far, then its peak over a restart (which lists
    /// every claim again) and its RSS once ready, in KiB.
    async fn peaks_over_restart(&mut self) -> (u64, u64, u64) {
        let peak_running = self.p.status_kib("VmHWM").expect("peak RSS");
        self.p.restart();
        wait_for("ready after restart", BIND, || async {
            self.p.http_get("/readyz").filter(|(c, _)| *c == 200)
        })
        .await;
        let peak_restart = self.p.status_kib("VmHWM").expect("peak RSS");
        let rss = self.p.status_kib("VmRSS").expect("RSS");
        (peak_running, peak_restart, rss)
    }

    async fn bound_pv(&self, ns: &str, claim: &str) -> PersistentVolume {
        self.fx.bound_pv(ns, claim, BIND).await
    }

    /// Waits for the refusal and checks the claim stayed Pending.
    async fn refused(&self, ns: &str, claim: &str, needle: &str) -> String {
        let msg = wait_event(
            &self.client,
            ns,
            claim,
            "ProvisioningFailed",
            needle,
            REFUSAL,
        )
        .await;
        let c = claims(&self.client, ns)
            .await
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(claim))
            .expect("claim");
        assert_eq!(phase(&c), "Pending", "{ns}/{claim} must stay Pending");
        let uid = c.metadata.uid.clone();
        assert!(
            volumes_of(&self.client, ns).await.iter().all(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .and_then(|r| r.uid.clone())
                    != uid
            }),
            "no PV for the refused claim"
        );
        msg
    }
}

/// Everything about a tree that a hostile claim must not change: every entry with its
/// mode, owner, group and (for files) contents.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let m = std::fs::symlink_metadata(&dir).expect("stat");
        let rel = dir
            .strip_prefix(root)
            .expect("below root")
            .display()
            .to_string();
        let contents = if m.is_file() {
            std::fs::read(&dir).expect("read")
        } else {
            Vec::new()
        };
        out.insert(rel, (m.mode(), m.uid(), m.gid(), contents));
        if m.is_dir() {
            for e in std::fs::read_dir(&dir).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out
}

/// Puts data in a victim's volume as its pod would.
fn fill(dir: &Path) -> BTreeMap<String, (u32, u32, u32, Vec<u8>)> {
    std::fs::write(dir.join("ledger.csv"), "payments,42\n").expect("write");
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub/secret"), "s3cr3t").expect("write");
    std::os::unix::fs::chown(dir.join("sub"), Some(1234), Some(5678)).expect("chown");
    snapshot(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_annotations_cannot_point_a_claim_at_another_namespace_s_directory() {
    let mut s = Scene::new("hijack").await;
    // Example 05's template as users wrote it before: tenant values only.
    let class = s
        .class(
            "${.PVC.labels.team}/${.PVC.annotations.example.com/folder}",
            json!({}),
        )
        .await;
    let victim_ns = s.namespace(None).await;
    let meta = json!({
        "labels": {"team": "payments"},
        "annotations": {"example.com/folder": "reports"},
    });
    s.fx.claim(&victim_ns, "ledger", &class, meta.clone()).await;
    let victim = s.bound_pv(&victim_ns, "ledger").await;
    let dir = on_disk(&victim);
    let before = fill(&dir);

    let mallory = s.namespace(None).await;
    s.fx.claim(&mallory, "steal", &class, meta).await;
    let msg = s
        .refused(&mallory, "steal", "is the directory of another volume")
        .await;
    assert!(
        !msg.contains(&victim_ns) && !msg.contains(victim.metadata.name.as_deref().unwrap_or("-")),
        "the event must not name the victim: {msg}"
    );
    // Nesting inside and around the victim is refused the same way.
    let inside = json!({
        "labels": {"team": "payments"},
        "annotations": {"example.com/folder": "reports/x"},
    });
    s.fx.claim(&mallory, "inside", &class, inside).await;
    s.refused(
        &mallory,
        "inside",
        "lies inside the directory of another volume",
    )
    .await;
    // A template with the label alone would render "payments": around the victim.
    let around_class = s.class("${.PVC.labels.team}", json!({})).await;
    s.fx.claim(
        &mallory,
        "around",
        &around_class,
        json!({"labels": {"team": "payments"}}),
    )
    .await;
    s.refused(
        &mallory,
        "around",
        "contains the directory of another volume",
    )
    .await;

    assert_eq!(
        snapshot(&dir),
        before,
        "the victim's directory is untouched"
    );
    let still = s.bound_pv(&victim_ns, "ledger").await;
    assert_eq!(still.metadata.uid, victim.metadata.uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concatenated_names_do_not_collide_across_namespaces() {
    let mut s = Scene::new("concat").await;
    let class = s.class("${.PVC.namespace}-${.PVC.name}", json!({})).await;
    let base = common::unique("cc");
    let team = s.namespace(Some(base.clone())).await;
    let team_b = s.namespace(Some(format!("{base}-b"))).await;
    // "<base>-b" + "data" and "<base>" + "b-data" render the same name.
    s.fx.claim(&team_b, "data", &class, json!({})).await;
    let victim = s.bound_pv(&team_b, "data").await;
    let before = fill(&on_disk(&victim));
    s.fx.claim(&team, "b-data", &class, json!({})).await;
    s.refused(&team, "b-data", "is the directory of another volume")
        .await;
    assert_eq!(snapshot(&on_disk(&victim)), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_directory_is_refused_unless_the_class_adopts_it() {
    let mut s = Scene::new("existing").await;
    let refuse = s.class("${.PVC.namespace}/${.PVC.name}", json!({})).await;
    let ns = s.namespace(None).await;
    // What a retained volume of an earlier tenant under the same names leaves behind.
    let left = PathBuf::from(export1()).join(&s.root).join(&ns).join("old");
    std::fs::create_dir_all(&left).expect("mkdir");
    std::fs::write(left.join("previous-tenant"), "theirs").expect("write");
    std::fs::set_permissions(&left, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let before = snapshot(&left);
    s.fx.claim(&ns, "old", &refuse, json!({})).await;
    s.refused(
        &ns,
        "old",
        "already exists and no PersistentVolume records it",
    )
    .await;
    assert_eq!(
        snapshot(&left),
        before,
        "nothing changed on a refused directory"
    );

    // The class's owner opts in: adopted as it is, mode and owner untouched.
    let adopt = s
        .class(
            "${.PVC.namespace}/${.PVC.name}",
            json!({"existingDirectory": "adopt", "mode": "0777"}),
        )
        .await;
    std::fs::create_dir_all(left.with_file_name("old2")).expect("mkdir");
    std::fs::set_permissions(
        left.with_file_name("old2"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    s.fx.claim(&ns, "old2", &adopt, json!({})).await;
    let pv = s.bound_pv(&ns, "old2").await;
    let m = std::fs::metadata(on_disk(&pv)).expect("stat");
    assert_eq!(m.mode() & 0o7777, 0o700, "adopted, not chmod-ed");
}

/// A namespace deleted and made again under its old name (a new tenant) must not
/// inherit a volume the old tenant retained: neither while the retained PV exists, nor
/// after an admin deletes the PV and leaves the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_namespace_does_not_inherit_a_retained_directory() {
    let mut s = Scene::new("retained").await;
    let template = "${.PVC.namespace}/${.PVC.name}";
    let params = json!({
        "server": "127.0.0.1",
        "share": export1(),
        "pathPattern": format!("{}/{template}", s.root),
    });
    let name =
        s.fx.class_with("keep", params, json!({"reclaimPolicy": "Retain"}))
            .await;
    let ns = s.namespace(None).await;
    s.fx.claim(&ns, "data", &name, json!({})).await;
    let old = s.bound_pv(&ns, "data").await;
    let dir = on_disk(&old);
    let before = fill(&dir);
    delete_claim(&s.client, &ns, "data").await;
    wait_for("the old claim gone", BIND, || async {
        claims(&s.client, &ns).await.is_empty().then_some(())
    })
    .await;
    // The same names again: as a new tenant in a recreated namespace would.
    s.fx.claim(&ns, "data", &name, json!({})).await;
    s.refused(&ns, "data", "is the directory of another volume")
        .await;
    let old_name = old.metadata.name.clone().unwrap_or_default();
    let pvs = Api::<PersistentVolume>::all(s.client.clone());
    pvs.delete(&old_name, &DeleteParams::default())
        .await
        .expect("an admin deletes the retained PV");
    s.fx.pv_gone(&old_name, BIND).await;
    s.refused(
        &ns,
        "data",
        "already exists and no PersistentVolume records it",
    )
    .await;
    assert_eq!(snapshot(&dir), before, "the old tenant's data is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_recreated_under_its_old_name_gets_a_fresh_directory_the_old_reclaim_cannot_touch()
{
    let mut s = Scene::new("recreate").await;
    let class = s.class("${.PVC.namespace}/${.PVC.name}", json!({})).await;
    let ns = s.namespace(None).await;
    s.fx.claim(&ns, "data", &class, json!({})).await;
    let old = s.bound_pv(&ns, "data").await;
    std::fs::write(on_disk(&old).join("old"), "x").expect("write");
    delete_claim(&s.client, &ns, "data").await;
    wait_for("the old claim gone", BIND, || async {
        claims(&s.client, &ns).await.is_empty().then_some(())
    })
    .await;
    // Recreated at once, while the old volume may still be Released and being reclaimed.
    s.fx.claim(&ns, "data", &class, json!({})).await;
    let new = s.bound_pv(&ns, "data").await;
    assert_ne!(new.metadata.uid, old.metadata.uid);
    let dir = on_disk(&new);
    assert_eq!(dir, on_disk(&old), "same template, same directory");
    std::fs::write(dir.join("new"), "mine").expect("write");
    let old_name = old.metadata.name.clone().unwrap_or_default();
    s.fx.pv_gone(&old_name, BIND).await;
    assert!(
        !dir.join("old").exists(),
        "the old data went with its volume"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("new")).ok().as_deref(),
        Some("mine"),
        "the new volume's data survives the old volume's reclaim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_may_share_a_directory_when_the_class_says_so_and_released_sharers_finish() {
    let mut s = Scene::new("sharing").await;
    let class = s
        .class(
            "${.PVC.namespace}/shared",
            json!({"directorySharing": "namespace", "onDelete": "archive"}),
        )
        .await;
    let ns = s.namespace(None).await;
    s.fx.claim(&ns, "a", &class, json!({})).await;
    let a = s.bound_pv(&ns, "a").await;
    std::fs::write(on_disk(&a).join("kept"), "x").expect("write");
    s.fx.claim(&ns, "b", &class, json!({})).await;
    let b = s.bound_pv(&ns, "b").await;
    assert_eq!(on_disk(&a), on_disk(&b));

    // Both released: exactly one archives the directory, both PVs go.
    delete_claim(&s.client, &ns, "a").await;
    delete_claim(&s.client, &ns, "b").await;
    volumes_gone(&s.client, &ns, BIND, &s.p).await;
    let parent = on_disk(&a).parent().expect("parent").to_path_buf();
    let archives: Vec<_> = std::fs::read_dir(&parent)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(archives.len(), 1, "one archive: {archives:?}");
    assert!(archives[0].starts_with("archived-shared"), "{archives:?}");
    assert!(parent.join(&archives[0]).join("kept").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_racing_for_one_directory_cannot_both_win() {
    let mut s = Scene::new("race").await;
    let class = s
        .class("${.PVC.annotations.example.com/folder}", json!({}))
        .await;
    let one = s.namespace(None).await;
    let two = s.namespace(None).await;
    for round in 0..5 {
        let meta = json!({"annotations": {"example.com/folder": format!("contested-{round}")}});
        let name = format!("c{round}");
        tokio::join!(
            s.fx.claim(&one, &name, &class, meta.clone()),
            s.fx.claim(&two, &name, &class, meta.clone()),
        );
        let winner = wait_for("one winner", BIND, || {
            let (client, one, two, name) =
                (s.client.clone(), one.clone(), two.clone(), name.clone());
            async move {
                let bound = |list: Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim>| {
                    list.iter()
                        .any(|c| c.metadata.name.as_deref() == Some(&name) && phase(c) == "Bound")
                };
                let (a, b) = (
                    bound(claims(&client, &one).await),
                    bound(claims(&client, &two).await),
                );
                (a || b).then_some(if a { one.clone() } else { two.clone() })
            }
        })
        .await;
        let loser = if winner == one { &two } else { &one };
        s.refused(loser, &name, "is the directory of another volume")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provisioner_keeps_serving_after_refusals() {
    // Positive control for the scenarios above: with a hostile claim refused next to
    // it, a plain claim binds, and its success event shows no server or path.
    let mut s = Scene::new("control").await;
    let hostile = s
        .class("${.PVC.annotations.example.com/folder}", json!({}))
        .await;
    let ns = s.namespace(None).await;
    let meta = json!({"annotations": {"example.com/folder": "one"}});
    s.fx.claim(&ns, "first", &hostile, meta.clone()).await;
    s.bound_pv(&ns, "first").await;
    s.fx.claim(&ns, "second", &hostile, meta).await;
    s.refused(&ns, "second", "is the directory of another volume")
        .await;
    let class = s.class("${.PVC.namespace}/${.PVC.name}", json!({})).await;
    s.fx.claim(&ns, "fine", &class, json!({})).await;
    let pv = s.bound_pv(&ns, "fine").await;
    assert!(on_disk(&pv).is_dir());
    let msg = wait_event(
        &s.client,
        &ns,
        "fine",
        "ProvisioningSucceeded",
        "Successfully provisioned volume",
        REFUSAL,
    )
    .await;
    assert!(
        !msg.contains(&export1()) && !msg.contains("127.0.0.1"),
        "the success event does not show the server or its paths: {msg}"
    );
}

/// Labels and annotations of Pending claims are a tenant's to make as large as the API
/// server takes (about 1.5 MB an object): the provisioner must not keep them. 100
/// such claims, 20 of its own class, the rest of another; then a restart, which lists
/// them all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_claim_metadata_does_not_grow_the_provisioner() {
    let mut s = Scene::new("bloat").await;
    let ours = s.class("${.PVC.namespace}/${.PVC.name}", json!({})).await;
    let ns = s.namespace(None).await;
    let (ready, _) = wait_for("ready", BIND, || async {
        s.p.http_get("/readyz").filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(ready, 200);
    // 9000 labels of 150 bytes: 1.4 MB of metadata per claim.
    let labels: serde_json::Map<String, serde_json::Value> = (0..9000)
        .map(|i| {
            (
                format!("bloat.example.com/k{i:05}-{}", "x".repeat(40)),
                json!("v".repeat(63)),
            )
        })
        .collect();
    let meta = json!({"labels": labels});
    let api =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(s.client.clone(), &ns);
    for i in 0..100 {
        // Not handed to any provisioner (no storage-provisioner annotation, no binder
        // for the other class): they stay Pending, as a tenant's would.
        let class = if i < 20 {
            ours.clone()
        } else {
            format!("{ns}-none")
        };
        let mut v = json!({
            "metadata": {"name": format!("bloat-{i}"), "namespace": ns},
            "spec": {
                "storageClassName": class,
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Mi"}},
            }
        });
        v["metadata"]["labels"] = s.fx.labels_with(&meta["labels"]);
        let pvc = serde_json::from_value(v).expect("claim");
        api.create(&PostParams::default(), &pvc)
            .await
            .expect("create bloated claim");
    }
    let (peak_running, peak_restart, rss) = s.peaks_over_restart().await;
    eprintln!(
        "peak RSS while 100 bloated claims arrived: {peak_running} KiB; peak over a restart listing them: {peak_restart} KiB; RSS after: {rss} KiB"
    );
    // Well under the shipped limit (192Mi). Listed whole, as before claims
    // were listed in pages of 10, the restart peaked at 372 MB here.
    assert!(peak_running < 120 * 1024, "{peak_running} KiB");
    assert!(peak_restart < 120 * 1024, "{peak_restart} KiB");
}

/// deploy/base's memory limit for the provisioner (`limits.memory`), in KiB.
const MEMORY_LIMIT_KIB: u64 = 192 * 1024;

/// A tenant's many claims, each near the API server's cap on annotations (256 KiB an
/// object): 1000 with 200 KiB each are 200 MB, several times the memory limit of
/// deploy/. Claims are read a page (or, streamed, one claim) at a time and cut before
/// the next: the peak over a restart that reads all of them stays under the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_claims_with_200_kib_of_annotations_stay_under_the_memory_limit() {
    use futures::{StreamExt, TryStreamExt};
    const CLAIMS: usize = 1000;
    let mut s = Scene::new("annot").await;
    let ns = s.namespace(None).await;
    wait_for("ready", BIND, || async {
        s.p.http_get("/readyz").filter(|(c, _)| *c == 200)
    })
    .await;
    let value = "a".repeat(50 * 1024);
    let annotations: serde_json::Map<String, serde_json::Value> = (0..4)
        .map(|i| (format!("bloat.example.com/a{i}"), json!(value)))
        .collect();
    let api =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(s.client.clone(), &ns);
    futures::stream::iter(0..CLAIMS)
        .map(|i| {
            // A class nobody serves: the claims stay Pending and untouched, as a
            // tenant's would.
            let pvc = serde_json::from_value(json!({
                "metadata": {"name": format!("a-{i:04}"), "namespace": ns, "annotations": annotations},
                "spec": {
                    "storageClassName": format!("{ns}-none"),
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": "1Mi"}},
                }
            }));
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pvc.map_err(|e| e.to_string())?).await.map_err(|e| e.to_string()) }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .expect("create annotated claims");
    let (peak_running, peak_restart, rss) = s.peaks_over_restart().await;
    eprintln!(
        "{CLAIMS} claims with 200 KiB of annotations: peak RSS while they arrived {peak_running} KiB, over a restart listing them {peak_restart} KiB, RSS after {rss} KiB"
    );
    // 200 MB were read; holding a fifth of them at once would fail this.
    assert!(peak_running < MEMORY_LIMIT_KIB, "{peak_running} KiB");
    assert!(peak_restart < MEMORY_LIMIT_KIB, "{peak_restart} KiB");
}

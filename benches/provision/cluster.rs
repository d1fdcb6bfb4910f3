//! What the bench sets up around the subjects and takes away again: RBAC and
//! ServiceAccounts in the cluster, the incumbent's `/persistentvolumes` link on the host,
//! and the clean-up of everything a run (or an interrupted one) left.

use crate::env::Env;
use crate::prelude::*;
use crate::subjects::Subject;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};

/// What the bench put on the machine outside the cluster, to take away again.
#[derive(Default)]
pub(crate) struct HostState {
    pub(crate) made_mount_root: bool,
    pub(crate) kcm_changed: bool,
}

/// The incumbent never mounts: it works under the hard-coded `/persistentvolumes`, which
/// in a pod is the NFS mount. Here it is a link to export1's directory on local disk (no
/// NFS client in this kernel), made only if nothing is there yet.
pub(crate) fn setup_host_paths(env: &Env, host: &mut HostState) -> Res<()> {
    let root = Path::new(MOUNT_ROOT);
    match std::fs::read_link(root) {
        Ok(t) if t == env.export1 => {}
        Ok(_) | Err(_) if root.symlink_metadata().is_ok() => {
            return Err(format!(
                "{MOUNT_ROOT} exists and is not a link to {}: not touching it",
                env.export1.display()
            )
            .into());
        }
        _ => std::os::unix::fs::symlink(&env.export1, root)?,
    }
    host.made_mount_root = true;
    Ok(())
}

pub(crate) fn cleanup_host(host: &HostState) {
    if host.made_mount_root {
        let _ = std::fs::remove_file(MOUNT_ROOT);
    }
}

pub(crate) fn rbac_yaml() -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: {BENCH_NS}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {INCUMBENT_SA}, namespace: {BENCH_NS}}}
---
# The rights the incumbent's deploy/rbac.yaml gives it.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {INCUMBENT_SA}}}
rules:
- apiGroups: ['']
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: ['']
  resources: [persistentvolumes]
  verbs: [get, list, watch, create, delete]
- apiGroups: ['']
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, update]
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get, list, watch]
- apiGroups: ['']
  resources: [events]
  verbs: [create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {INCUMBENT_SA}}}
subjects: [{{kind: ServiceAccount, name: {INCUMBENT_SA}, namespace: {BENCH_NS}}}]
roleRef: {{kind: ClusterRole, name: {INCUMBENT_SA}, apiGroup: rbac.authorization.k8s.io}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {INCUMBENT_SA}-leader-election, namespace: {BENCH_NS}}}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]
- apiGroups: ['']
  resources: [endpoints]
  verbs: [get, list, watch, create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {INCUMBENT_SA}-leader-election, namespace: {BENCH_NS}}}
subjects: [{{kind: ServiceAccount, name: {INCUMBENT_SA}, namespace: {BENCH_NS}}}]
roleRef: {{kind: Role, name: {INCUMBENT_SA}-leader-election, apiGroup: rbac.authorization.k8s.io}}
---
# Ours: a ServiceAccount of the bench's own (so its requests can be told from the e2e
# tests', which use deploy/base's), bound to exactly deploy/base's roles.
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {OURS_SA}, namespace: {OURS_NS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {OURS_SA}}}
subjects: [{{kind: ServiceAccount, name: {OURS_SA}, namespace: {OURS_NS}}}]
roleRef: {{kind: ClusterRole, name: nfs3-provisioner, apiGroup: rbac.authorization.k8s.io}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {OURS_SA}, namespace: {OURS_NS}}}
subjects: [{{kind: ServiceAccount, name: {OURS_SA}, namespace: {OURS_NS}}}]
roleRef: {{kind: Role, name: nfs3-provisioner-leader-election, apiGroup: rbac.authorization.k8s.io}}
"
    )
}

/// Removes what the bench created in the cluster (the namespace deploy/base owns stays).
pub(crate) async fn cleanup_cluster(env: &Env, client: &Client) {
    if let Ok(list) = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        for ns in list.items {
            let name = ns.metadata.name.unwrap_or_default();
            if name.starts_with("nfs3p-bench-") {
                let _ = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &name)
                    .delete_collection(&DeleteParams::default(), &ListParams::default())
                    .await;
                let _ = Api::<Namespace>::all(client.clone())
                    .delete(&name, &DeleteParams::default())
                    .await;
            }
        }
    }
    // Volumes left behind by an interrupted run: the provisioners are gone, so nothing
    // else will let go of them.
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    if let Ok(list) = pvs.list(&ListParams::default()).await {
        for pv in list.items {
            let ns = claim_namespace(&pv);
            let labelled = pv
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("nfs3p-bench"));
            if ns.starts_with("nfs3p-bench-") || labelled {
                force_delete_pv(&pvs, &pv.metadata.name.unwrap_or_default()).await;
            }
        }
    }
    for s in Subject::ALL {
        let _ = Api::<StorageClass>::all(client.clone())
            .delete(
                &format!("nfs3p-bench-{}", s.name()),
                &DeleteParams::default(),
            )
            .await;
    }
    let _ = env.kubectl(&[
        "delete",
        "--ignore-not-found",
        "flowschema",
        "nfs3p-bench-ours-writes",
        "nfs3p-bench-ours-reads",
        "nfs3p-bench-incumbent-writes",
        "nfs3p-bench-incumbent-reads",
    ]);
    let _ = env.kubectl(&[
        "delete",
        "--ignore-not-found",
        "clusterrolebinding",
        OURS_SA,
        INCUMBENT_SA,
    ]);
    let _ = env.kubectl(&["delete", "--ignore-not-found", "clusterrole", INCUMBENT_SA]);
    let _ = env.kubectl(&[
        "delete",
        "--ignore-not-found",
        "-n",
        OURS_NS,
        "rolebinding,serviceaccount",
        OURS_SA,
    ]);
    let _ = env.kubectl(&[
        "delete",
        "--ignore-not-found",
        "--wait=false",
        "namespace",
        BENCH_NS,
    ]);
    // Directories an interrupted run left on the export.
    if let Ok(rd) = std::fs::read_dir(&env.export1) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("nfs3p-bench-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn claim_namespace(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|c| c.namespace.clone())
        .unwrap_or_default()
}

/// Deletes a PV and drops its finalizers: for volumes whose provisioner is gone.
async fn force_delete_pv(pvs: &Api<PersistentVolume>, name: &str) {
    let _ = pvs.delete(name, &DeleteParams::default()).await;
    let _ = pvs
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
}

/// After a run whose subject is stopped: the PVs still naming a claim of `ns` (a capped
/// phase leaves some) and their directories (`<ns>-...` on export1), so the next run
/// starts among none of them.
pub(crate) async fn release_namespace_volumes(env: &Env, client: &Client, ns: &str) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    if let Ok(list) = pvs.list(&ListParams::default()).await {
        for pv in list.items.iter().filter(|pv| claim_namespace(pv) == ns) {
            force_delete_pv(&pvs, pv.metadata.name.as_deref().unwrap_or_default()).await;
        }
    }
    let prefix = format!("{ns}-");
    if let Ok(rd) = std::fs::read_dir(&env.export1) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

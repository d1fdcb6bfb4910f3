//! The provisioning plan: from a claim and its class, the directory, how it is made
//! (mode, owner, the claim's stamp), whose directories it may share, what to do when it
//! exists already, and the PV to write. The provision reconciler only carries it out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::PlanError;
use super::claim::volume_name;
use super::ownership::{self, Conflict, Occupant};
use super::record::{self, FINALIZER, join_share};
use crate::backend::{DirAttrs, Target};
use crate::params::{ClassParams, Defaults, Existing, Sharing};
use crate::path::{self, RelPath, TemplateVars};

/// Everything needed to create one volume.
#[derive(Debug, Clone)]
pub struct ProvisionPlan {
    /// From the claim's uid alone, so a retry comes back to the same PV.
    pub pv_name: String,
    /// The claim's namespace: the tenant, for the ownership check.
    pub namespace: String,
    pub target: Target,
    pub directory: RelPath,
    /// How a directory this provisioner makes is made; a found one is left as it is.
    pub attrs: DirAttrs,
    pub sharing: Sharing,
    pub case_insensitive: bool,
    pub existing: Existing,
    /// The PV to create, with the annotations reclaim reads back.
    pub pv: PersistentVolume,
}

impl ProvisionPlan {
    pub fn full_path(&self) -> String {
        join_share(&self.target.share, &self.directory)
    }

    /// Whether the directory may be had, given every other volume (and provisioning
    /// under way). Ok holds the volumes it shares its directory with, as the class allows.
    pub fn check_ownership<'a>(
        &self,
        others: impl IntoIterator<Item = Occupant<'a>>,
    ) -> Result<Vec<String>, Conflict> {
        ownership::check(
            &self.target.share,
            &self.full_path(),
            &self.namespace,
            self.sharing,
            self.case_insensitive,
            others,
        )
    }

    /// The directory was there before this claim's first attempt (it does not carry the
    /// claim's stamp). Only a directory shared as the class allows, or a class that says
    /// `existingDirectory: adopt`, lets the claim have it: anything else may be another
    /// tenant's data.
    pub fn on_existing(&self, shared_with: &[String]) -> Result<(), PlanError> {
        if shared_with.is_empty() && self.existing == Existing::Refuse {
            return Err(PlanError::ExistingDirectory {
                path: self.full_path(),
            });
        }
        Ok(())
    }
}

/// The complete plan for a claim that [`decide_claim`](super::decide_claim) lets through:
/// every value comes from the class's parameters here, and nowhere else.
pub fn plan_volume(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    defaults: &Defaults,
    provisioner: &str,
) -> Result<ProvisionPlan, PlanError> {
    let class_name = class.metadata.name.clone().unwrap_or_default();
    let params = ClassParams::parse(&class.parameters.clone().unwrap_or_default(), defaults)
        .map_err(|source| PlanError::Params {
            class: class_name.clone(),
            source,
        })?;
    let pv_name = volume_name(pvc)?;
    let namespace = pvc.metadata.namespace.clone().unwrap_or_default();
    let pvc_name = pvc.metadata.name.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let vars = TemplateVars {
        namespace: &namespace,
        pvc_name: &pvc_name,
        pv_name: &pv_name,
        labels: pvc.metadata.labels.as_ref().unwrap_or(&empty),
        annotations: pvc.metadata.annotations.as_ref().unwrap_or(&empty),
    };
    let rendered = match &params.template {
        Some((dialect, template)) => path::render(template, *dialect, &vars)?,
        // nfs-subdir-external-provisioner's name, so existing data lines up after a move.
        None => format!("{namespace}-{pvc_name}-{pv_name}"),
    };
    let directory = RelPath::parse(&rendered).map_err(|source| PlanError::Path {
        rendered: rendered.clone(),
        source,
    })?;

    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .ok_or(PlanError::NoSize)?;
    let access_modes = spec
        .access_modes
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or(PlanError::NoAccessModes)?;

    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.clone()),
            annotations: Some(record::annotations(provisioner, &params, &directory)),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(access_modes),
            capacity: Some(BTreeMap::from([("storage".to_string(), size)])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace.clone()),
                name: Some(pvc_name),
                uid: pvc.metadata.uid.clone(),
                resource_version: pvc.metadata.resource_version.clone(),
                ..Default::default()
            }),
            mount_options: class.mount_options.clone().filter(|m| !m.is_empty()),
            nfs: Some(NFSVolumeSource {
                server: params.server.clone(),
                path: join_share(&params.share, &directory),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".to_string()),
            ),
            storage_class_name: Some(class_name),
            volume_mode: Some("Filesystem".into()),
            ..Default::default()
        }),
        status: None,
    };
    let stamp = ownership::stamp(pvc.metadata.uid.as_deref().unwrap_or_default());
    Ok(ProvisionPlan {
        pv_name,
        namespace,
        target: Target {
            server: params.server.clone(),
            share: params.share.clone(),
            port: params.port,
            mount_port: params.mount_port,
        },
        attrs: DirAttrs {
            mode: params.mode,
            uid: params.uid,
            gid: params.gid,
            stamp: Some(stamp),
        },
        sharing: params.sharing,
        case_insensitive: params.case_insensitive,
        existing: params.existing,
        directory,
        pv,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::params::OnDelete;
    use crate::plan::Recorded;
    use crate::plan::fixtures::{PROV, claim, class, defaults};

    #[test]
    fn default_plan_matches_nfs_subdir_naming_and_records_reclaim_facts() {
        let plan = plan_volume(&claim(), &class(&[]), &defaults(), PROV).unwrap();
        assert_eq!(plan.directory.to_string(), "team-a-data-pvc-0b5e");
        let pv = &plan.pv;
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-0b5e"));
        assert_eq!(
            pv.metadata.finalizers.as_deref(),
            Some(&[FINALIZER.to_string()][..])
        );
        let spec = pv.spec.as_ref().unwrap();
        let nfs = spec.nfs.as_ref().unwrap();
        assert_eq!(
            (nfs.server.as_str(), nfs.path.as_str()),
            ("10.0.0.5", "/srv/k8s/team-a-data-pvc-0b5e")
        );
        assert_eq!(
            spec.capacity.as_ref().unwrap()["storage"],
            Quantity("1Gi".into())
        );
        assert_eq!(
            spec.access_modes.as_deref(),
            Some(&["ReadWriteMany".to_string()][..])
        );
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
        assert_eq!(spec.mount_options.as_ref().unwrap(), &["nfsvers=3", "hard"]);
        let cref = spec.claim_ref.as_ref().unwrap();
        assert_eq!(
            (
                cref.namespace.as_deref(),
                cref.name.as_deref(),
                cref.uid.as_deref()
            ),
            (Some("team-a"), Some("data"), Some("0b5e"))
        );
        let rec = Recorded::from_pv(pv).unwrap();
        assert_eq!(rec.directory, plan.directory);
        assert_eq!(rec.on_delete, OnDelete::Archive);
        assert_eq!(rec.share, "/srv/k8s");
    }

    #[test]
    fn templated_plans() {
        let cases = [
            (
                ("pathPattern", "${.PVC.namespace}/${.PVC.name}"),
                "team-a/data",
            ),
            (("pathPattern", "${.PVC.labels.app}"), "web"),
            (
                ("subDir", "${pvc.metadata.namespace}/${pv.metadata.name}"),
                "team-a/pvc-0b5e",
            ),
        ];
        for ((k, v), want) in cases {
            let plan = plan_volume(&claim(), &class(&[(k, v)]), &defaults(), PROV).unwrap();
            assert_eq!(plan.directory.to_string(), want);
        }
        let mut root_share = class(&[("share", "/"), ("pathPattern", "x")]);
        root_share.reclaim_policy = Some("Retain".into());
        let plan = plan_volume(&claim(), &root_share, &defaults(), PROV).unwrap();
        assert_eq!(plan.full_path(), "/x");
        assert_eq!(
            plan.pv
                .spec
                .unwrap()
                .persistent_volume_reclaim_policy
                .as_deref(),
            Some("Retain")
        );
    }

    #[test]
    fn hostile_claims_are_refused() {
        for hostile in ["../../etc", "/etc", "", "a//b", "..", "x/../../y"] {
            let mut pvc = claim();
            pvc.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert("p".into(), hostile.into());
            let err = plan_volume(
                &pvc,
                &class(&[("pathPattern", "${.PVC.annotations.p}")]),
                &defaults(),
                PROV,
            )
            .unwrap_err();
            assert!(matches!(err, PlanError::Path { .. }), "{hostile:?}: {err}");
        }
        let err = plan_volume(
            &claim(),
            &class(&[("pathPattern", "${.PVC.labels.missing}")]),
            &defaults(),
            PROV,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no label \"missing\""), "{err}");
        let mut no_size = claim();
        no_size.spec.as_mut().unwrap().resources = None;
        assert!(matches!(
            plan_volume(&no_size, &class(&[]), &defaults(), PROV),
            Err(PlanError::NoSize)
        ));
        let err = plan_volume(&claim(), &class(&[("bogus", "1")]), &defaults(), PROV).unwrap_err();
        assert!(
            err.to_string()
                .contains("StorageClass nfs: unknown parameter \"bogus\""),
            "{err}"
        );
    }

    #[test]
    fn directory_attributes_and_target_come_from_the_class() {
        let plan = plan_volume(
            &claim(),
            &class(&[
                ("mode", "0750"),
                ("uid", "1000"),
                ("gid", "2000"),
                ("port", "2049"),
            ]),
            &defaults(),
            PROV,
        )
        .unwrap();
        assert_eq!(plan.attrs.mode, 0o750);
        assert_eq!((plan.attrs.uid, plan.attrs.gid), (Some(1000), Some(2000)));
        assert_eq!(plan.attrs.stamp, Some(ownership::stamp("0b5e")));
        assert_eq!(
            plan.target,
            Target {
                server: "10.0.0.5".into(),
                share: "/srv/k8s".into(),
                port: Some(2049),
                mount_port: None,
            }
        );
        assert_eq!(plan.pv_name, "pvc-0b5e");
        assert_eq!(plan.namespace, "team-a");
    }

    #[test]
    fn an_existing_directory_is_had_only_when_shared_or_adopted() {
        let refuse = plan_volume(&claim(), &class(&[]), &defaults(), PROV).unwrap();
        let err = refuse.on_existing(&[]).unwrap_err();
        assert!(matches!(err, PlanError::ExistingDirectory { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("directory /srv/k8s/team-a-data-pvc-0b5e already exists"),
            "{err}"
        );
        // Shared with a live volume as the class allows: the directory is that one's.
        assert!(refuse.on_existing(&["pvc-other".to_string()]).is_ok());
        let adopt = plan_volume(
            &claim(),
            &class(&[("existingDirectory", "adopt")]),
            &defaults(),
            PROV,
        )
        .unwrap();
        assert!(adopt.on_existing(&[]).is_ok());
    }

    #[test]
    fn the_ownership_check_uses_the_class_sharing() {
        let other = |ns: &'static str| Occupant {
            name: "pvc-1",
            path: "/srv/k8s/team-a-data-pvc-0b5e",
            namespace: Some(ns),
            releasing: false,
        };
        let none = plan_volume(&claim(), &class(&[]), &defaults(), PROV).unwrap();
        assert!(none.check_ownership([other("team-a")]).is_err());
        let ns = plan_volume(
            &claim(),
            &class(&[("directorySharing", "namespace")]),
            &defaults(),
            PROV,
        )
        .unwrap();
        assert_eq!(ns.check_ownership([other("team-a")]).unwrap(), ["pvc-1"]);
        assert!(ns.check_ownership([other("team-b")]).is_err());
    }
}

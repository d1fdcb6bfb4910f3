//! Pure decisions, free of I/O: is this claim ours, which directory and PV does it get,
//! and what may be done with a released PV. Everything destructive is decided here so
//! it can be tested table by table.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use thiserror::Error;

use crate::params::{ClassParams, Defaults, OnDelete, ParamError};
use crate::path::{self, PathError, RelPath, TemplateError, TemplateVars};

pub mod ownership;
pub mod release;

pub use release::archive_target;

/// FNV-1a, 64 bits: stable across builds and versions (unlike std's hasher), for names
/// and stamps that must come out the same on every retry and after an upgrade.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const ANN_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The finalizer external provisioners put on their PVs, so the object outlives its data.
pub const FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";

/// What reclaim needs, recorded on the PV so it works after the class is changed or gone.
pub const ANN_SERVER: &str = "nfs3-provisioner.io/server";
pub const ANN_SHARE: &str = "nfs3-provisioner.io/share";
pub const ANN_DIRECTORY: &str = "nfs3-provisioner.io/directory";
pub const ANN_ON_DELETE: &str = "nfs3-provisioner.io/on-delete";
pub const ANN_PORT: &str = "nfs3-provisioner.io/port";
pub const ANN_MOUNT_PORT: &str = "nfs3-provisioner.io/mount-port";

/// Prefix of archived directories, as nfs-subdir-external-provisioner names them.
pub const ARCHIVE_PREFIX: &str = "archived-";

#[derive(Debug, Error)]
pub enum PlanError {
    #[error("StorageClass {class}: {source}")]
    Params { class: String, source: ParamError },
    #[error("cannot render the directory name: {0}")]
    Template(#[from] TemplateError),
    #[error("refusing directory {rendered:?}: {source}")]
    Path { rendered: String, source: PathError },
    #[error("claims with volumeMode Block are not supported: an NFS directory is a filesystem")]
    BlockMode,
    #[error(
        "claims with a selector are not supported: a dynamically provisioned volume has no labels to match"
    )]
    Selector,
    #[error("claims with a dataSource are not supported: this provisioner cannot clone or restore")]
    DataSource,
    #[error("the claim requests no storage size (spec.resources.requests.storage)")]
    NoSize,
    #[error("the claim has no access modes")]
    NoAccessModes,
    #[error("the claim has no uid yet")]
    NoUid,
}

/// What to do with a claim, before any I/O.
#[derive(Debug)]
pub enum ClaimDecision {
    /// Not ours, or nothing to do; a later change of the claim will bring it back.
    Skip(&'static str),
    /// Ours, but not yet: waiting on the control plane (annotation, selected node).
    Wait(&'static str),
    /// Ours and never provisionable as it stands: tell the user.
    Refuse(PlanError),
    Provision,
}

pub fn class_name(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| {
            pvc.metadata
                .annotations
                .as_ref()?
                .get(ANN_CLASS_BETA)
                .map(String::as_str)
        })
        .filter(|n| !n.is_empty())
}

/// The PV name is a function of the claim's uid alone: a crash between mkdir and PV
/// create comes back to the same name, never a second volume.
pub fn volume_name(pvc: &PersistentVolumeClaim) -> Result<String, PlanError> {
    pvc.metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| format!("pvc-{u}"))
        .ok_or(PlanError::NoUid)
}

pub fn decide_claim(
    pvc: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    provisioner: &str,
) -> ClaimDecision {
    let Some(class) = class else {
        return ClaimDecision::Skip("no StorageClass (or not one of ours)");
    };
    if class.provisioner != provisioner {
        return ClaimDecision::Skip("StorageClass names another provisioner");
    }
    if pvc.metadata.deletion_timestamp.is_some() {
        return ClaimDecision::Skip("claim is being deleted");
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return ClaimDecision::Skip("claim already names a volume");
    }
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
        return ClaimDecision::Skip("claim is bound");
    }
    let ann = pvc.metadata.annotations.clone().unwrap_or_default();
    let asked = ann
        .get(ANN_STORAGE_PROVISIONER)
        .or_else(|| ann.get(ANN_STORAGE_PROVISIONER_BETA));
    if asked.map(String::as_str) != Some(provisioner) {
        return ClaimDecision::Wait(
            "the control plane has not yet handed the claim to this provisioner",
        );
    }
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && !ann.contains_key(ANN_SELECTED_NODE)
    {
        return ClaimDecision::Wait("WaitForFirstConsumer: no node selected yet");
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return ClaimDecision::Refuse(PlanError::BlockMode);
    }
    if spec.selector.is_some() {
        return ClaimDecision::Refuse(PlanError::Selector);
    }
    if spec.data_source.is_some() || spec.data_source_ref.is_some() {
        return ClaimDecision::Refuse(PlanError::DataSource);
    }
    ClaimDecision::Provision
}

/// Everything needed to create one volume: where, and the PV that points there.
#[derive(Debug, Clone)]
pub struct VolumePlan {
    pub params: ClassParams,
    pub directory: RelPath,
    pub pv: PersistentVolume,
}

impl VolumePlan {
    pub fn full_path(&self) -> String {
        join_share(&self.params.share, &self.directory)
    }
}

pub fn join_share(share: &str, dir: &RelPath) -> String {
    if share == "/" {
        format!("/{dir}")
    } else {
        format!("{share}/{dir}")
    }
}

pub fn plan_volume(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    defaults: &Defaults,
    provisioner: &str,
) -> Result<VolumePlan, PlanError> {
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

    let mut annotations = BTreeMap::from([
        (ANN_PROVISIONED_BY.to_string(), provisioner.to_string()),
        (ANN_SERVER.to_string(), params.server.clone()),
        (ANN_SHARE.to_string(), params.share.clone()),
        (ANN_DIRECTORY.to_string(), directory.to_string()),
        (ANN_ON_DELETE.to_string(), params.on_delete.to_string()),
    ]);
    if let Some(p) = params.port {
        annotations.insert(ANN_PORT.to_string(), p.to_string());
    }
    if let Some(p) = params.mount_port {
        annotations.insert(ANN_MOUNT_PORT.to_string(), p.to_string());
    }

    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name),
            annotations: Some(annotations),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(access_modes),
            capacity: Some(BTreeMap::from([("storage".to_string(), size)])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace),
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
    Ok(VolumePlan {
        params,
        directory,
        pv,
    })
}

/// Where a volume's data lives, read back from the PV's own annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub server: String,
    pub share: String,
    pub directory: RelPath,
    pub on_delete: OnDelete,
    pub port: Option<u16>,
    pub mount_port: Option<u16>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("annotation {0} is missing, so the directory to reclaim is unknown")]
    Missing(&'static str),
    #[error("annotation {key} has an invalid value {value:?}")]
    Invalid { key: &'static str, value: String },
    #[error("annotation {ANN_DIRECTORY} is not a safe path: {0}")]
    Path(PathError),
    #[error(
        "spec.nfs.path {actual:?} does not match the recorded share and directory {recorded:?}"
    )]
    Mismatch { actual: String, recorded: String },
}

impl Recorded {
    pub fn from_pv(pv: &PersistentVolume) -> Result<Self, RecordError> {
        let empty = BTreeMap::new();
        let ann = pv.metadata.annotations.as_ref().unwrap_or(&empty);
        let get = |k: &'static str| {
            ann.get(k)
                .map(String::as_str)
                .ok_or(RecordError::Missing(k))
        };
        let invalid = |key: &'static str, value: &str| RecordError::Invalid {
            key,
            value: value.to_string(),
        };
        let server = get(ANN_SERVER)?.to_string();
        let raw_share = get(ANN_SHARE)?;
        let share = path::normalize_share(raw_share).map_err(|_| invalid(ANN_SHARE, raw_share))?;
        let directory = RelPath::parse(get(ANN_DIRECTORY)?).map_err(RecordError::Path)?;
        let raw_on_delete = get(ANN_ON_DELETE)?;
        let on_delete = raw_on_delete
            .parse()
            .map_err(|_| invalid(ANN_ON_DELETE, raw_on_delete))?;
        let port_of = |k: &'static str| -> Result<Option<u16>, RecordError> {
            ann.get(k)
                .map(|v| v.parse::<u16>().map_err(|_| invalid(k, v)))
                .transpose()
        };
        let recorded = Self {
            server,
            share,
            directory,
            on_delete,
            port: port_of(ANN_PORT)?,
            mount_port: port_of(ANN_MOUNT_PORT)?,
        };
        // An edited PV whose spec points elsewhere than its annotations is ambiguous:
        // deleting either place could destroy data someone still uses.
        let actual = pv
            .spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .map(|n| n.path.clone())
            .unwrap_or_default();
        let expected = join_share(&recorded.share, &recorded.directory);
        if path::normalize_share(&actual).ok().as_deref() != Some(expected.as_str()) {
            return Err(RecordError::Mismatch {
                actual,
                recorded: expected,
            });
        }
        Ok(recorded)
    }
}

/// What to do with one of our PVs.
#[derive(Debug, PartialEq, Eq)]
pub enum PvDecision {
    Skip(&'static str),
    /// Released with policy Delete: reclaim the directory, then delete the PV object.
    Reclaim,
    /// Being deleted and its data has been dealt with or must be kept: drop our finalizer.
    /// `reclaim_first` says whether the (idempotent) reclaim must run before.
    ReleaseFinalizer {
        reclaim_first: bool,
    },
}

pub fn decide_pv(pv: &PersistentVolume, provisioner: &str) -> PvDecision {
    let ann = pv.metadata.annotations.as_ref();
    if ann
        .and_then(|a| a.get(ANN_PROVISIONED_BY))
        .map(String::as_str)
        != Some(provisioner)
    {
        return PvDecision::Skip("not provisioned by us");
    }
    let has_finalizer = pv
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    let deleting = pv.metadata.deletion_timestamp.is_some();
    let phase = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Delete");
    // Failed is where a volume lands when an earlier reclaim gave up (another
    // provisioner, or a recycler): the claim is gone all the same.
    let released = phase == "Released" || phase == "Failed";
    match (deleting, policy) {
        (false, "Delete") if released => PvDecision::Reclaim,
        (false, _) => PvDecision::Skip("not released with reclaim policy Delete"),
        (true, _) if !has_finalizer => {
            PvDecision::Skip("being deleted, our finalizer already gone")
        }
        (true, "Delete") if released => PvDecision::ReleaseFinalizer {
            reclaim_first: true,
        },
        // Bound or Pending while deleted: pv-protection holds it until the claim lets go.
        (true, "Delete") if phase == "Bound" || phase == "Pending" => {
            PvDecision::Skip("deleted while still bound")
        }
        (true, "Delete") if phase == "Available" => PvDecision::ReleaseFinalizer {
            reclaim_first: true,
        },
        (true, "Delete") => {
            PvDecision::Skip("deleted in an unexpected phase; leaving the data alone")
        }
        (true, _) => PvDecision::ReleaseFinalizer {
            reclaim_first: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeStatus,
        VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const PROV: &str = "nfs3-provisioner.io/nfs";

    fn class(params: &[(&str, &str)]) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some("nfs".into()),
                ..Default::default()
            },
            provisioner: PROV.into(),
            parameters: Some(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            mount_options: Some(vec!["nfsvers=3".into(), "hard".into()]),
            reclaim_policy: None,
            ..Default::default()
        }
    }

    fn claim() -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("team-a".into()),
                uid: Some("0b5e".into()),
                resource_version: Some("7".into()),
                annotations: Some(BTreeMap::from([(
                    ANN_STORAGE_PROVISIONER.to_string(),
                    PROV.to_string(),
                )])),
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteMany".into()]),
                storage_class_name: Some("nfs".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity("1Gi".into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            server: Some("10.0.0.5".into()),
            share: Some("/srv/k8s".into()),
        }
    }

    #[test]
    fn claim_decisions() {
        let c = class(&[]);
        assert!(matches!(
            decide_claim(&claim(), Some(&c), PROV),
            ClaimDecision::Provision
        ));
        assert!(matches!(
            decide_claim(&claim(), None, PROV),
            ClaimDecision::Skip(_)
        ));
        assert!(matches!(
            decide_claim(&claim(), Some(&c), "other.io/nfs"),
            ClaimDecision::Skip(_)
        ));

        let mut beta = claim();
        beta.metadata.annotations = Some(BTreeMap::from([(
            ANN_STORAGE_PROVISIONER_BETA.into(),
            PROV.into(),
        )]));
        assert!(matches!(
            decide_claim(&beta, Some(&c), PROV),
            ClaimDecision::Provision
        ));

        let mut unannotated = claim();
        unannotated.metadata.annotations = None;
        assert!(matches!(
            decide_claim(&unannotated, Some(&c), PROV),
            ClaimDecision::Wait(_)
        ));

        let mut bound = claim();
        bound.spec.as_mut().unwrap().volume_name = Some("pv-x".into());
        assert!(matches!(
            decide_claim(&bound, Some(&c), PROV),
            ClaimDecision::Skip(_)
        ));

        let mut wffc = c.clone();
        wffc.volume_binding_mode = Some("WaitForFirstConsumer".into());
        assert!(matches!(
            decide_claim(&claim(), Some(&wffc), PROV),
            ClaimDecision::Wait(_)
        ));
        let mut selected = claim();
        selected
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_SELECTED_NODE.into(), "node-1".into());
        assert!(matches!(
            decide_claim(&selected, Some(&wffc), PROV),
            ClaimDecision::Provision
        ));

        let mut block = claim();
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert!(matches!(
            decide_claim(&block, Some(&c), PROV),
            ClaimDecision::Refuse(PlanError::BlockMode)
        ));

        let mut sel = claim();
        sel.spec.as_mut().unwrap().selector = Some(Default::default());
        assert!(matches!(
            decide_claim(&sel, Some(&c), PROV),
            ClaimDecision::Refuse(PlanError::Selector)
        ));

        let mut deleting = claim();
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(matches!(
            decide_claim(&deleting, Some(&c), PROV),
            ClaimDecision::Skip(_)
        ));
    }

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
    fn recorded_refuses_ambiguity() {
        let plan = plan_volume(&claim(), &class(&[]), &defaults(), PROV).unwrap();
        let mut edited = plan.pv.clone();
        edited.spec.as_mut().unwrap().nfs.as_mut().unwrap().path = "/srv/k8s".into();
        assert!(matches!(
            Recorded::from_pv(&edited),
            Err(RecordError::Mismatch { .. })
        ));
        let mut tampered = plan.pv.clone();
        tampered
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_DIRECTORY.into(), "../x".into());
        assert!(matches!(
            Recorded::from_pv(&tampered),
            Err(RecordError::Path(_))
        ));
        let mut missing = plan.pv.clone();
        missing
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANN_ON_DELETE);
        assert_eq!(
            Recorded::from_pv(&missing),
            Err(RecordError::Missing(ANN_ON_DELETE))
        );
    }

    fn pv(phase: &str, policy: &str, deleting: bool, finalizer: bool) -> PersistentVolume {
        let mut pv = plan_volume(&claim(), &class(&[]), &defaults(), PROV)
            .unwrap()
            .pv;
        pv.status = Some(PersistentVolumeStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some(policy.into());
        if deleting {
            pv.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        if !finalizer {
            pv.metadata.finalizers = None;
        }
        pv
    }

    #[test]
    fn pv_decisions() {
        use PvDecision::*;
        let cases = [
            (("Released", "Delete", false, true), Reclaim),
            (
                ("Bound", "Delete", false, true),
                Skip("not released with reclaim policy Delete"),
            ),
            (
                ("Released", "Retain", false, true),
                Skip("not released with reclaim policy Delete"),
            ),
            (
                ("Released", "Delete", true, true),
                ReleaseFinalizer {
                    reclaim_first: true,
                },
            ),
            (
                ("Bound", "Delete", true, true),
                Skip("deleted while still bound"),
            ),
            (
                ("Released", "Retain", true, true),
                ReleaseFinalizer {
                    reclaim_first: false,
                },
            ),
            (
                ("Released", "Delete", true, false),
                Skip("being deleted, our finalizer already gone"),
            ),
            (
                ("Failed", "Delete", true, true),
                ReleaseFinalizer {
                    reclaim_first: true,
                },
            ),
            (("Failed", "Delete", false, true), Reclaim),
            (
                ("", "Delete", true, true),
                Skip("deleted in an unexpected phase; leaving the data alone"),
            ),
        ];
        for ((phase, policy, deleting, fin), want) in cases {
            assert_eq!(
                decide_pv(&pv(phase, policy, deleting, fin), PROV),
                want,
                "{phase} {policy} {deleting} {fin}"
            );
        }
        let mut foreign = pv("Released", "Delete", false, true);
        foreign
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_PROVISIONED_BY.into(), "other".into());
        assert_eq!(decide_pv(&foreign, PROV), Skip("not provisioned by us"));
    }
}

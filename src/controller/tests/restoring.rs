//! Restoring from an archive against a scripted API server and a mounted share: the
//! retries a crash leaves behind, and an archive another claim holds.

use std::path::Path;

use super::harness::*;
use crate::controller::Error;
use crate::path::RelPath;
use crate::plan::archive::{ArchiveClaim, ArchiveRecord, Purpose, RestoreTo, VERSION};
use crate::plan::restore::ANN_RESTORE_FROM;

const ARCHIVE: &str = "archived-team-a-data-pvc-old";

fn restoring_claim() -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    let mut c = claim();
    c.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANN_RESTORE_FROM.into(), ARCHIVE.into());
    c
}

fn plant(share: &Path, record: bool, holder: Option<&str>) {
    let meta = share.join(".nfs3-provisioner");
    std::fs::create_dir_all(meta.join("archives")).expect("records");
    std::fs::create_dir_all(meta.join("archive-claims")).expect("claims");
    if record {
        let rec = ArchiveRecord {
            version: VERSION,
            namespace: NS.into(),
            claim: "data".into(),
            claim_uid: "old".into(),
            volume: "pvc-old".into(),
            class: "nfs".into(),
            server: SERVER.into(),
            share: SHARE.into(),
            directory: "team-a-data-pvc-old".into(),
            archive: ARCHIVE.into(),
            archived_at: 1,
        };
        std::fs::write(meta.join("archives").join(ARCHIVE), rec.to_bytes()).expect("record");
    }
    if let Some(uid) = holder {
        let archive = RelPath::parse(ARCHIVE).expect("archive");
        let to = RestoreTo {
            namespace: NS.into(),
            claim: "someone".into(),
            claim_uid: uid.into(),
            volume: format!("pvc-{uid}"),
            directory: DIR.into(),
        };
        let c = ArchiveClaim::new(Purpose::Restore, &archive, Some(to), 1);
        std::fs::write(meta.join("archive-claims").join(ARCHIVE), c.to_bytes()).expect("claim");
    }
}

fn data(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub/file"), b"kept").expect("write");
}

fn leftovers(share: &Path) -> (bool, bool) {
    let meta = share.join(".nfs3-provisioner");
    (
        meta.join("archives").join(ARCHIVE).exists(),
        meta.join("archive-claims").join(ARCHIVE).exists(),
    )
}

#[tokio::test]
async fn a_restore_taken_but_not_renamed_renames_on_retry() {
    let mut h = Harness::start();
    h.add_class(class(&[]));
    h.expect("POST", PV_PATH, |b| Reply::created(b.clone()));
    data(&h.share().join(ARCHIVE));
    plant(&h.share(), true, Some(CLAIM_UID));
    h.provision(&restoring_claim()).await.expect("provisioned");
    assert_eq!(h.calls(), [format!("POST {PV_PATH}")]);
    assert_eq!(
        std::fs::read(h.share().join(DIR).join("sub/file")).expect("restored"),
        b"kept"
    );
    assert!(!h.share().join(ARCHIVE).exists());
    assert_eq!(leftovers(&h.share()), (false, false));
}

#[tokio::test]
async fn a_restore_renamed_before_a_crash_only_finishes_on_retry() {
    let mut h = Harness::start();
    h.add_class(class(&[]));
    h.expect("POST", PV_PATH, |b| Reply::created(b.clone()));
    // The rename happened and the record went; the claim file says whose it is.
    data(&h.share().join(DIR));
    plant(&h.share(), false, Some(CLAIM_UID));
    h.provision(&restoring_claim()).await.expect("provisioned");
    assert_eq!(h.calls(), [format!("POST {PV_PATH}")]);
    assert_eq!(
        std::fs::read(h.share().join(DIR).join("sub/file")).expect("kept"),
        b"kept"
    );
    assert_eq!(leftovers(&h.share()), (false, false));
}

#[tokio::test]
async fn an_archive_another_claim_holds_is_left_alone() {
    let mut h = Harness::start();
    h.add_class(class(&[]));
    data(&h.share().join(ARCHIVE));
    plant(&h.share(), true, Some("another-uid"));
    let err = h.provision(&restoring_claim()).await.expect_err("refused");
    assert!(
        matches!(&err, Error::Waiting(m) if m.contains("is being restored by claim \"someone\"")),
        "{err}"
    );
    assert!(h.calls().is_empty(), "no PV: {:?}", h.calls());
    assert!(h.share().join(ARCHIVE).join("sub/file").exists());
    assert!(!h.share().join(DIR).exists());
    assert_eq!(leftovers(&h.share()), (true, true));
}

//! The claim reconciler with a class over several exports or with a free-space floor:
//! a claim no export has room for is refused before anything is made.

use super::harness::*;

#[tokio::test]
async fn a_claim_no_export_has_room_for_is_refused_before_anything_is_made() {
    let mut h = Harness::start();
    // Both entries are the harness's one share (the mounted backend serves any target);
    // no export is ever this empty.
    h.add_class(class(&[
        (
            "shares",
            "10.0.0.5:/srv/k8s, 10.0.0.6:/srv/other minFreePercent=5",
        ),
        ("minFreeBytes", "1Ei"),
    ]));
    let action = h.provision(&claim()).await.expect("refused, not failed");
    assert!(
        requeue_after(&action).is_some(),
        "retried: space may be freed"
    );
    assert!(h.calls().is_empty(), "no PV: {:?}", h.calls());
    assert!(h.dirs().is_empty(), "no directory: {:?}", h.dirs());
    h.wait_events(1).await;
    assert_eq!(h.events(), ["Warning ProvisioningFailed"]);
    let note = h.event("ProvisioningFailed").note;
    for needle in [
        "StorageClass nfs: no export of this class has room for the requested 1.0 GiB",
        "10.0.0.5:/srv/k8s has ",
        "10.0.0.6:/srv/other has ",
        "% used): would fall below minFreeBytes (1048576.0 TiB)",
    ] {
        assert!(note.contains(needle), "{needle:?} in {note}");
    }
}

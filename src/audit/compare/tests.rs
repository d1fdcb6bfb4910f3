//! Table tests of [`super::compare`] and the path bookkeeping behind it.

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::audit::fixtures::*;
use crate::plan::ANN_PROVISIONED_BY;

#[test]
fn clean_share_is_clean() {
    let pvs = [
        ours("pvc-1", "ns-a-pvc-1", "Bound"),
        ours("pvc-2", "team/data", "Bound"),
    ];
    let snap = snapshot(&[
        (
            "",
            &[
                ("ns-a-pvc-1", dir(1)),
                ("team", dir(1)),
                ("lost+found", dir(100)),
            ],
        ),
        ("team", &[("data", dir(1))]),
    ]);
    let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
    assert_eq!(r.volumes, 2);
    assert!(r.missing.is_empty() && r.orphans.is_empty() && r.archives.is_empty());
}

#[test]
fn finds_missing_orphans_and_archives() {
    let mut deleting = ours("pvc-4", "gone-pvc-4", "Released");
    deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
    // Another provisioner's PV is not audited: its missing directory is not reported.
    let mut theirs = ours("pvc-7", "elsewhere", "Bound");
    theirs
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANN_PROVISIONED_BY.into(), "other".into());
    let pvs = [
        ours("pvc-1", "ns-a-pvc-1", "Bound"),
        ours("pvc-2", "team/data", "Bound"),
        ours("pvc-3", "missing-pvc-3", "Bound"),
        deleting,
        ours("pvc-5", "file-pvc-5", "Bound"),
        ours("pvc-6", "flat/x/y", "Pending"),
        theirs,
    ];
    let snap = snapshot(&[
        (
            "",
            &[
                ("ns-a-pvc-1", dir(1)),
                ("team", dir(1)),
                ("file-pvc-5", stat(Kind::File, NOW)),
                ("flat", stat(Kind::Symlink, NOW)),
                ("old-stuff", dir(30)),
                ("notes.txt", stat(Kind::File, NOW)),
                ("vanished", Entry::Gone),
                ("bad\nname", Entry::Unknown),
                ("archived-ns-a-pvc-9", dir(30)),
                ("archived-new-pvc-8", dir(1)),
                ("archived-file", stat(Kind::File, NOW - 30 * DAY)),
                ("empty", dir(3)),
            ],
        ),
        ("old-stuff", &[("a", Entry::Unknown)]),
        ("empty", &[]),
        (
            "team",
            &[
                ("data", dir(1)),
                ("stray", dir(1)),
                ("archived-data-pvc-0", dir(10)),
            ],
        ),
    ]);
    let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
    assert_eq!(r.volumes, 6);
    let missing: Vec<(&str, &str)> = r
        .missing
        .iter()
        .map(|m| (m.pv.as_str(), m.reason.as_str()))
        .collect();
    assert_eq!(
        missing,
        [
            ("pvc-3", "does not exist"),
            ("pvc-4", "does not exist"),
            ("pvc-5", "is a file, not a directory"),
            ("pvc-6", "(its parent flat is a symlink, not a directory)"),
        ]
    );
    let m = &r.missing[0];
    assert_eq!(m.phase.as_deref(), Some("Bound"));
    assert_eq!(m.claim.as_deref(), Some("ns/claim"));
    assert!(!m.deleting && r.missing[1].deleting);
    assert_eq!(
        r.orphans,
        [
            Orphan {
                path: "archived-file".into(),
                kind: "file",
                empty: None
            },
            Orphan {
                path: "bad\nname".into(),
                kind: "unknown",
                empty: None
            },
            Orphan {
                path: "empty".into(),
                kind: "directory",
                empty: Some(true)
            },
            Orphan {
                path: "notes.txt".into(),
                kind: "file",
                empty: None
            },
            Orphan {
                path: "old-stuff".into(),
                kind: "directory",
                empty: Some(false)
            },
            Orphan {
                path: "team/stray".into(),
                kind: "directory",
                empty: None
            },
        ]
    );
    assert_eq!(
        actions(&r),
        [
            ("archived-new-pvc-8", ArchiveAction::Keep),
            ("archived-ns-a-pvc-9", ArchiveAction::WouldPrune),
            ("team/archived-data-pvc-0", ArchiveAction::WouldPrune),
        ]
    );
    assert_eq!(r.archives[1].age_seconds, 30 * 86400);
    // Without a pruning age, nothing is to prune.
    let r = compare(&target(), &pvs, None, &snap, &policy(None));
    assert!(r.archives.iter().all(|a| a.action == ArchiveAction::Keep));
}

#[test]
fn parents_of_volumes_are_never_orphans() {
    // team/ holds a live volume deep down and nothing else of note.
    let pvs = [ours("pvc-1", "team/a/b/c", "Bound")];
    let snap = snapshot(&[
        ("", &[("team", dir(1))]),
        ("team", &[("a", dir(1)), ("other", dir(1))]),
        ("team/a", &[("b", dir(1))]),
        ("team/a/b", &[("c", dir(1)), ("archived-c-pvc-0", dir(99))]),
    ]);
    let r = compare(&target(), &pvs, None, &snap, &policy(Some(1)));
    assert!(r.missing.is_empty());
    assert_eq!(paths(&r.orphans, |o| &o.path), ["team/other"]);
    assert_eq!(
        actions(&r),
        [("team/a/b/archived-c-pvc-0", ArchiveAction::WouldPrune)]
    );
}

#[test]
fn a_parent_holding_only_archives_is_their_home_not_an_orphan() {
    let snap = snapshot(&[
        ("", &[("gone-ns", dir(40)), ("mixed", dir(40))]),
        (
            "gone-ns",
            &[
                ("archived-a-pvc-1", dir(40)),
                ("archived-b-pvc-2", dir(2)),
                ("archived-c-pvc-3", Entry::Gone),
            ],
        ),
        (
            "mixed",
            &[
                ("archived-a-pvc-4", Entry::Unknown),
                ("data", Entry::Unknown),
            ],
        ),
    ]);
    let r = compare(&target(), &[], None, &snap, &policy(Some(7)));
    assert_eq!(paths(&r.orphans, |o| &o.path), ["mixed"]);
    assert_eq!(
        actions(&r),
        [
            ("gone-ns/archived-a-pvc-1", ArchiveAction::WouldPrune),
            ("gone-ns/archived-b-pvc-2", ArchiveAction::Keep),
        ]
    );
}

#[test]
fn anything_a_pv_points_at_is_never_pruned() {
    // Every one of these archives is old enough to prune, but a PV still needs it.
    let mut pvs = vec![
        // A static PV reading an archive back, on another name of the same server.
        foreign("restore", "nfs.example", "/srv/k8s/archived-x-pvc-1/"),
        // A PV inside an archive.
        foreign("inside", "10.0.0.5", "/srv/k8s/archived-y-pvc-2/sub"),
        // A PV of ours, released and mid-reclaim: the archive carries its name.
        ours("pvc-3", "z-pvc-3", "Released"),
        // A volume whose own directory is named like an archive.
        ours("pvc-4", "archived-looking", "Bound"),
    ];
    // Someone else's dynamically provisioned PV, elsewhere.
    pvs.push(foreign("pvc-5", "other", "/elsewhere/w"));
    let snap = snapshot(&[(
        "",
        &[
            ("archived-x-pvc-1", dir(30)),
            ("archived-y-pvc-2", dir(30)),
            ("archived-z-pvc-3", dir(30)),
            ("archived-looking", dir(30)),
            ("archived-w-pvc-5", dir(30)),
            ("archived-free", dir(30)),
        ],
    )]);
    let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
    let protected = |by: &[&str]| ArchiveAction::Protected {
        by: by.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(
        actions(&r),
        [
            ("archived-free", ArchiveAction::WouldPrune),
            ("archived-w-pvc-5", protected(&["pvc-5"])),
            ("archived-z-pvc-3", protected(&["pvc-3"])),
        ]
    );
    // Pointed-at directories are volumes, not archives; pvc-3's is missing.
    assert_eq!(paths(&r.missing, |m| &m.pv), ["pvc-3"]);
    assert!(r.orphans.is_empty());
    // The rule itself, for paths the walk never offers as archives.
    let ptrs = Pointers::new("/srv/k8s", &pvs);
    let p = |s: &str| s.split('/').map(String::from).collect::<Vec<_>>();
    assert_eq!(ptrs.protecting(&p("archived-x-pvc-1")), ["restore"]);
    assert_eq!(ptrs.protecting(&p("archived-y-pvc-2")), ["inside"]);
    assert_eq!(ptrs.protecting(&p("archived-looking/deeper")), ["pvc-4"]);
    assert!(ptrs.protecting(&p("archived-free")).is_empty());
}

#[test]
fn inside_a_volume_only_nested_volumes_are_looked_at() {
    let pvs = [
        ours("pvc-1", "team", "Bound"),
        ours("pvc-2", "team/inner", "Bound"),
        ours("pvc-3", "team/inner-missing", "Bound"),
    ];
    let snap = snapshot(&[
        ("", &[("team", dir(1))]),
        (
            "team",
            &[
                ("inner", dir(1)),
                ("users-file", stat(Kind::File, NOW)),
                ("archived-theirs", dir(30)),
            ],
        ),
    ]);
    let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
    assert_eq!(paths(&r.missing, |m| &m.pv), ["pvc-3"]);
    assert!(r.orphans.is_empty() && r.archives.is_empty());

    // A static PV of the whole export covers the root: only nested volumes count.
    let mut pvs = pvs.to_vec();
    pvs.push(foreign("whole", "10.0.0.5", "/srv/k8s"));
    let snap = snapshot(&[(
        "",
        &[("team", dir(1)), ("stuff", dir(1)), ("archived-q", dir(30))],
    )]);
    let r = compare(&target(), &pvs, None, &snap, &policy(Some(7)));
    assert_eq!(r.covered_by, ["whole"]);
    assert!(r.orphans.is_empty() && r.archives.is_empty());
}

#[test]
fn under_limits_the_audit_to_a_subtree() {
    let pvs = [
        ours("pvc-1", "base/live", "Bound"),
        ours("pvc-2", "base/gone", "Bound"),
        ours("pvc-3", "not-base/x", "Bound"),
    ];
    let snap = snapshot(&[("base", &[("live", dir(1)), ("junk", stat(Kind::File, NOW))])]);
    let under = RelPath::parse("base").unwrap();
    let r = compare(&target(), &pvs, Some(&under), &snap, &policy(None));
    assert_eq!(r.volumes, 2);
    assert_eq!(paths(&r.missing, |m| &m.pv), ["pvc-2"]);
    assert_eq!(paths(&r.orphans, |o| &o.path), ["base/junk"]);
    assert_eq!(r.under.as_deref(), Some("base"));
}

#[test]
fn paths_compare_as_paths() {
    assert_eq!(relative("/srv/k8s", "/srv/k8s/a/b"), Some(p2("a", "b")));
    assert_eq!(relative("/srv/k8s", "/srv//k8s/a/"), Some(vec!["a".into()]));
    assert_eq!(relative("/srv/k8s", "/srv/k8s"), Some(vec![]));
    assert_eq!(relative("/srv/k8s", "/srv/k8s-2/a"), None);
    assert_eq!(relative("/srv/k8s", "/srv/k8s/../etc"), None);
    assert_eq!(relative("/", "/a/b"), Some(p2("a", "b")));
    let ptrs = Pointers::new(
        "/srv",
        &[
            foreign("ab", "s", "/srv/a/b"),
            foreign("a-b", "s", "/srv/a-b"),
        ],
    );
    assert!(ptrs.has_below(&["a".to_string()]));
    assert!(!ptrs.has_below(&p2("a", "b")));
    assert!(!ptrs.has_below(&["a-".to_string()]));
    assert_eq!(ptrs.at_or_below(&["a".to_string()]), ["ab"]);
}

fn p2(a: &str, b: &str) -> Vec<String> {
    vec![a.into(), b.into()]
}

#[test]
fn adopted_volumes_are_counted_and_checked_like_ours() {
    let incumbent = "k8s-sigs.io/nfs-subdir-external-provisioner";
    let adopted = |name: &str, path: &str| {
        let mut pv = foreign(name, "10.0.0.5", path);
        pv.metadata.annotations = Some(BTreeMap::from([(
            ANN_PROVISIONED_BY.to_string(),
            incumbent.to_string(),
        )]));
        pv
    };
    let pvs = [
        ours("pvc-1", "ns-a-pvc-1", "Bound"),
        adopted("pvc-old", "/srv/k8s/ns-b-old-pvc-old"),
        adopted("pvc-gone", "/srv/k8s/ns-b-gone-pvc-gone"),
        adopted("pvc-far", "/srv/elsewhere/x"),
    ];
    let snap = snapshot(&[("", &[("ns-a-pvc-1", dir(1)), ("ns-b-old-pvc-old", dir(1))])]);
    let without = compare(&target(), &pvs, None, &snap, &policy(None));
    assert_eq!(without.volumes, 1);
    assert!(without.missing.is_empty());

    let mut with = policy(None);
    with.adopt = Some(crate::plan::adopt::Adoption {
        provisioners: vec![incumbent.into()],
        server: "10.0.0.5".into(),
        share: "/srv/k8s".into(),
    });
    let r = compare(&target(), &pvs, None, &snap, &with);
    assert_eq!(r.volumes, 3, "ours and the two adopted PVs on this share");
    assert_eq!(paths(&r.missing, |m| &m.pv), ["pvc-gone"]);
    assert!(r.orphans.is_empty(), "{:?}", r.orphans);
}

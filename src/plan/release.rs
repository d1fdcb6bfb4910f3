//! What a released volume may do to its directory when other PVs use it too, and what
//! an archive is called.

use crate::params::OnDelete;
use crate::path::{PathError, RelPath, compare_key, nests};

use super::{ARCHIVE_PREFIX, fnv1a};

/// Another PV whose directory equals or lies inside the released one's.
#[derive(Clone, Debug)]
pub struct CoUser<'a> {
    pub name: &'a str,
    pub path: &'a str,
    /// Released, failed or being deleted.
    pub releasing: bool,
    /// What it recorded for its own release; `None` for PVs that are not ours, which
    /// count as live users whatever their phase: their owner never said the data may go.
    pub on_delete: Option<OnDelete>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedRelease {
    /// Nobody else, or every other user of the same directory is released too and this
    /// volume is the one that acts (the first by name): do what the most careful of them
    /// asked (retain over archive over delete).
    Act(OnDelete),
    /// Still used by live volumes: finish without touching the directory; the last of
    /// them to go reclaims it.
    LeaveToLive(Vec<String>),
    /// Released volumes inside this one go first, then the one that acts for a shared
    /// directory: wait for them, so the data is dealt with once and as asked.
    WaitFor(Vec<String>),
}

fn careful(a: OnDelete, b: OnDelete) -> OnDelete {
    let rank = |o| match o {
        OnDelete::Delete => 0,
        OnDelete::Archive => 1,
        OnDelete::Retain => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Decides for the released PV `me` at `full_path` with its own `on_delete`. Volumes on a
/// directory above it do not take part: they are not removed with it.
pub fn shared_release<'a>(
    me: &str,
    full_path: &str,
    on_delete: OnDelete,
    others: impl IntoIterator<Item = CoUser<'a>>,
) -> SharedRelease {
    let mine = compare_key(full_path, false);
    let mut live = Vec::new();
    let mut inner = Vec::new();
    let mut same = Vec::new();
    for o in others.into_iter().filter(|o| o.name != me) {
        let theirs = compare_key(o.path, false);
        if !nests(&theirs, &mine) {
            continue;
        }
        // Another provisioner's PV, in whatever phase, is not ours to wait for: its data
        // stays for whoever made it.
        if !o.releasing || o.on_delete.is_none() {
            live.push(o.name.to_string());
        } else if theirs == mine {
            same.push(o);
        } else {
            inner.push(o.name.to_string());
        }
    }
    if !live.is_empty() {
        return SharedRelease::LeaveToLive(live);
    }
    if !inner.is_empty() {
        return SharedRelease::WaitFor(inner);
    }
    if let Some(first) = same.iter().map(|o| o.name).filter(|n| *n < me).min() {
        return SharedRelease::WaitFor(vec![first.to_string()]);
    }
    let merged = same.iter().fold(on_delete, |acc, o| {
        careful(acc, o.on_delete.unwrap_or(OnDelete::Retain))
    });
    SharedRelease::Act(merged)
}

/// NAME_MAX of the servers we know: an archive name must fit in one directory entry.
const MAX_NAME: usize = 255;

/// The archive name for a directory: `archived-<leaf>` beside it, plus the PV name when
/// the leaf alone does not already identify the volume, so archives of templated paths
/// (the same claim name recreated, a shared per-namespace pattern) never collide. A name
/// that would pass 255 bytes keeps the start of the leaf and a hash of all of it, before
/// the PV name: still recognisable, still unique, and the same on every retry.
pub fn archive_target(dir: &RelPath, pv_name: &str) -> Result<RelPath, PathError> {
    let leaf = dir.leaf();
    let plain = if leaf.contains(pv_name) {
        format!("{ARCHIVE_PREFIX}{leaf}")
    } else {
        format!("{ARCHIVE_PREFIX}{leaf}-{pv_name}")
    };
    if plain.len() <= MAX_NAME {
        return dir.with_leaf(&plain);
    }
    let hash = fnv1a(leaf.as_bytes());
    let tail = format!("-{hash:016x}-{pv_name}");
    let room = MAX_NAME.saturating_sub(ARCHIVE_PREFIX.len() + tail.len());
    let mut cut = room.min(leaf.len());
    while !leaf.is_char_boundary(cut) {
        cut -= 1;
    }
    dir.with_leaf(&format!("{ARCHIVE_PREFIX}{}{tail}", &leaf[..cut]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn co<'a>(name: &'a str, path: &'a str, releasing: bool, od: Option<OnDelete>) -> CoUser<'a> {
        CoUser {
            name,
            path,
            releasing,
            on_delete: od,
        }
    }

    #[test]
    fn two_released_volumes_on_one_directory_finish_one_after_the_other() {
        let a = co("pv-a", "/srv/shared/team", true, Some(OnDelete::Delete));
        let b = co("pv-b", "/srv/shared/team", true, Some(OnDelete::Archive));
        // The first by name acts, with the more careful of the two wishes.
        assert_eq!(
            shared_release("pv-a", a.path, OnDelete::Delete, [a.clone(), b.clone()]),
            SharedRelease::Act(OnDelete::Archive)
        );
        assert_eq!(
            shared_release("pv-b", b.path, OnDelete::Archive, [a.clone(), b.clone()]),
            SharedRelease::WaitFor(vec!["pv-a".into()])
        );
        // Once pv-a is gone, pv-b acts too; the directory is already archived by then,
        // and archiving a missing directory is a no-op.
        assert_eq!(
            shared_release("pv-b", b.path, OnDelete::Archive, [b.clone()]),
            SharedRelease::Act(OnDelete::Archive)
        );
    }

    #[test]
    fn live_users_keep_the_directory_and_foreign_pvs_count_as_retain() {
        let live = co("pv-live", "/srv/shared/team", false, Some(OnDelete::Delete));
        assert_eq!(
            shared_release("pv-z", "/srv/shared/team", OnDelete::Delete, [live]),
            SharedRelease::LeaveToLive(vec!["pv-live".into()])
        );
        let foreign = co("pv-0", "/srv/shared/team", true, None);
        assert_eq!(
            shared_release("pv-z", "/srv/shared/team", OnDelete::Delete, [foreign]),
            SharedRelease::LeaveToLive(vec!["pv-0".into()])
        );
    }

    #[test]
    fn inner_volumes_go_first_and_parents_do_not_take_part() {
        let inner = co("pv-in", "/srv/a/b", true, Some(OnDelete::Delete));
        assert_eq!(
            shared_release("pv-out", "/srv/a", OnDelete::Delete, [inner.clone()]),
            SharedRelease::WaitFor(vec!["pv-in".into()])
        );
        let parent = co("pv-parent", "/srv/a", false, None);
        assert_eq!(
            shared_release("pv-in", "/srv/a/b", OnDelete::Delete, [parent]),
            SharedRelease::Act(OnDelete::Delete)
        );
        let sibling = co("pv-sib", "/srv/ab", false, None);
        assert_eq!(
            shared_release("pv-out", "/srv/a", OnDelete::Delete, [sibling]),
            SharedRelease::Act(OnDelete::Delete)
        );
    }

    #[test]
    fn archive_names_never_collide() {
        let d = RelPath::parse("team-a-data-pvc-1").unwrap();
        assert_eq!(
            archive_target(&d, "pvc-1").unwrap().to_string(),
            "archived-team-a-data-pvc-1"
        );
        let nested = RelPath::parse("team-a/data").unwrap();
        assert_eq!(
            archive_target(&nested, "pvc-1").unwrap().to_string(),
            "team-a/archived-data-pvc-1"
        );
        assert_ne!(
            archive_target(&nested, "pvc-1").unwrap(),
            archive_target(&nested, "pvc-2").unwrap()
        );
    }

    #[test]
    fn long_names_are_shortened_deterministically_and_stay_distinct() {
        let pv = "pvc-0b5e8a3c-1111-2222-3333-444455556666";
        let a = RelPath::parse(&format!("ns/{}", "\u{e9}".repeat(127))).unwrap();
        let b = RelPath::parse(&format!("ns/{}x", "\u{e9}".repeat(126))).unwrap();
        let ta = archive_target(&a, pv).unwrap();
        let tb = archive_target(&b, pv).unwrap();
        assert!(ta.leaf().len() <= 255 && tb.leaf().len() <= 255);
        assert!(ta.leaf().starts_with("archived-\u{e9}") && ta.leaf().ends_with(pv));
        assert_ne!(ta, tb);
        assert_eq!(ta, archive_target(&a, pv).unwrap());
        assert_eq!(ta.parent_segments(), ["ns"]);
    }
}

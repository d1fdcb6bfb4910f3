//! Events on claims and volumes: how a note is cut to fit, how distinct warnings stay
//! distinct events, and publishing with or without waiting for the API server.

use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use super::{Context, cut_to};
use crate::plan;

impl Context {
    /// Publishes without holding up the caller: for events that follow the work, so a
    /// worker slot is free again as soon as the work is done.
    pub(super) fn publish_detached<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &'static str,
        note: String,
    ) {
        let recorder = self.recorder.clone();
        let reference = obj.object_ref(&());
        let ev = event(type_, reason, note);
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                warn!(error = %e, reason, "could not publish event");
            }
        });
    }

    pub(super) async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = event(type_, reason, note);
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    let note = cap_note(note);
    // kube's Recorder counts events with the same type, reason and action as one series
    // and keeps the first note: a claim whose failure changes (another volume's
    // directory, then an unrecorded one) would keep showing the first. The action
    // carries a hash of the note, so each distinct message is an event of its own and
    // a repeated one still counts up.
    let action = match type_ {
        EventType::Normal => reason.to_string(),
        EventType::Warning => format!("{reason}-{:016x}", plan::fnv1a(note.as_bytes())),
    };
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action,
        secondary: None,
    }
}

/// The API refuses notes over 1 kB (bytes, not characters): cut at a character boundary.
fn cap_note(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        cut_to(&mut note, MAX - 3);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_fit_in_1024_bytes_whatever_the_characters() {
        for s in [
            "a".repeat(5000),
            "\u{e9}".repeat(2000),
            "\u{1F600}".repeat(700),
        ] {
            let n = cap_note(s.clone());
            assert!(n.len() <= 1024, "{}", n.len());
            assert!(n.ends_with("..."));
        }
        assert_eq!(cap_note("short".into()), "short");
        // The API server counts bytes (Go's len): 512 two-byte characters (1024 bytes)
        // are accepted as they are, 513 (1026 bytes, 513 characters) are refused. So a
        // note of 513 such characters must be cut, and one of 512 must not.
        let at_limit = "\u{e9}".repeat(512);
        assert_eq!(cap_note(at_limit.clone()), at_limit);
        let over = cap_note("\u{e9}".repeat(513));
        assert!(
            over.len() <= 1024 && over.ends_with("..."),
            "{}",
            over.len()
        );
    }

    #[test]
    fn different_warnings_are_different_events_and_the_same_one_repeats() {
        let a = event(EventType::Warning, "ProvisioningFailed", "one".into());
        let b = event(EventType::Warning, "ProvisioningFailed", "two".into());
        let a2 = event(EventType::Warning, "ProvisioningFailed", "one".into());
        assert_ne!(a.action, b.action);
        assert_eq!(a.action, a2.action);
        assert!(a.action.starts_with("ProvisioningFailed-") && a.action.len() < 128);
        let n = event(EventType::Normal, "Provisioning", "x".into());
        assert_eq!(n.action, "Provisioning");
    }
}

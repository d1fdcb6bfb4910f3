//! Health state: what this replica is (single, standby, leader) and whether it is ready,
//! set by the controllers, the election and the share check, read by `/readyz`. Apart
//! from the HTTP server so the controllers depend on this state, not on the server.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// What this replica is doing, for `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// No leader election: always acts.
    Single = 0,
    /// Leader election on, and this replica does not hold the Lease.
    Standby = 1,
    /// Holds the Lease and acts.
    Leader = 2,
}

/// What `/readyz` reports.
///
/// - A replica that acts (no leader election, or the Lease holder) is ready once its
///   caches of classes, claims and volumes are synced and the default share (if
///   `NFS_SERVER`/`NFS_PATH` are set) answers. Right after it takes the Lease it is
///   not ready until its caches have synced again (usually well under a second).
/// - A standby is ready once it has read the Lease from the API server (so it knows
///   who leads and can take over) and the default share answers. It keeps no caches,
///   so it does not wait for any.
///
/// `/healthz` only says the process serves; it is the liveness probe.
pub struct Readiness {
    role: AtomicU8,
    synced: AtomicBool,
    lease_read: AtomicBool,
    share_ok: AtomicBool,
    share_checked: AtomicBool,
    holder: Mutex<Option<String>>,
}

impl Readiness {
    pub fn new(role: Role) -> Self {
        Readiness {
            role: AtomicU8::new(role as u8),
            synced: AtomicBool::new(false),
            lease_read: AtomicBool::new(false),
            share_ok: AtomicBool::new(false),
            share_checked: AtomicBool::new(false),
            holder: Mutex::new(None),
        }
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            0 => Role::Single,
            1 => Role::Standby,
            _ => Role::Leader,
        }
    }

    /// Becoming leader means syncing caches afresh; becoming standby drops them.
    pub fn set_role(&self, role: Role) {
        self.synced.store(false, Ordering::Release);
        self.role.store(role as u8, Ordering::Release);
    }

    pub fn set_synced(&self, v: bool) {
        self.synced.store(v, Ordering::Release);
    }

    /// The Lease was read; `holder` holds it (None: nobody).
    pub fn lease_read(&self, holder: Option<&str>) {
        *self.holder.lock().unwrap_or_else(|p| p.into_inner()) = holder.map(str::to_string);
        self.lease_read.store(true, Ordering::Release);
    }

    pub fn set_share(&self, ok: bool) {
        self.share_ok.store(ok, Ordering::Release);
        self.share_checked.store(true, Ordering::Release);
    }

    /// For a provisioner with no default share.
    pub fn no_share_to_check(&self) {
        self.set_share(true);
    }

    pub fn report(&self) -> (bool, String) {
        let role = self.role();
        let share =
            self.share_checked.load(Ordering::Acquire) && self.share_ok.load(Ordering::Acquire);
        let share_text = match (
            self.share_checked.load(Ordering::Acquire),
            self.share_ok.load(Ordering::Acquire),
        ) {
            (false, _) => "not checked yet",
            (true, true) => "reachable",
            (true, false) => "not reachable",
        };
        let (own_ok, own_text) = match role {
            Role::Single | Role::Leader => {
                let synced = self.synced.load(Ordering::Acquire);
                (
                    synced,
                    if synced {
                        "caches: synced"
                    } else {
                        "caches: not synced"
                    }
                    .to_string(),
                )
            }
            Role::Standby => {
                let read = self.lease_read.load(Ordering::Acquire);
                let holder = self
                    .holder
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "nobody".into());
                if read {
                    (true, format!("lease: held by {holder}"))
                } else {
                    (false, "lease: not read yet".to_string())
                }
            }
        };
        let role_text = match role {
            Role::Single => "single",
            Role::Standby => "standby",
            Role::Leader => "leader",
        };
        let text = format!("role: {role_text}\n{own_text}\ndefault share: {share_text}\n");
        (own_ok && share, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_of_a_standby_and_a_leader() {
        let r = Readiness::new(Role::Standby);
        r.no_share_to_check();
        let (ok, text) = r.report();
        assert!(!ok, "a standby that has not read the Lease: {text}");
        r.lease_read(Some("replica-a"));
        let (ok, text) = r.report();
        assert!(ok, "{text}");
        assert!(text.contains("held by replica-a"), "{text}");
        r.set_role(Role::Leader);
        let (ok, text) = r.report();
        assert!(!ok, "a new leader syncs its caches first: {text}");
        r.set_synced(true);
        assert!(r.report().0);
        r.set_share(false);
        let (ok, text) = r.report();
        assert!(!ok && text.contains("not reachable"), "{text}");
    }

    #[test]
    fn a_share_not_yet_checked_is_not_ready() {
        let r = Readiness::new(Role::Single);
        r.set_synced(true);
        let (ok, text) = r.report();
        assert!(!ok && text.contains("not checked yet"), "{text}");
    }
}

//! When to try again: the controllers' error, which failures need an administrator (and
//! are retried slowly), per-object exponential backoff, and what this process remembers
//! of the volumes it has just reclaimed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::controller::Action;
use thiserror::Error;
use tracing::warn;

use super::Context;
use crate::backend::BackendError;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Refused(String),
    /// The claim's directory exists and nothing says it may be handed over.
    #[error("{0}")]
    Existing(String),
    /// Another volume goes first; this one is retried.
    #[error("{0}")]
    Waiting(String),
    /// The directory is still used by live volumes; retried until they are released.
    #[error("{0}")]
    InUse(String),
}

impl Error {
    /// Whether retrying soon can help. Permanent failures need someone to act (access
    /// denied or a read-only export, a name the server refuses, an edited PV annotation,
    /// an API request the server rejects as forbidden or invalid): they are reported
    /// once per retry and retried slowly, every [`PERMANENT_RETRY`].
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => matches!(s.code, 400 | 403 | 404 | 405 | 413 | 422),
            Error::Kube(_) => false,
            Error::Backend(e) => e.is_permanent(),
            Error::Refused(_) | Error::Existing(_) => true,
            Error::Waiting(_) | Error::InUse(_) => false,
        }
    }

    /// What the event says about the next attempt.
    pub(crate) fn retry_note(&self) -> &'static str {
        if self.is_permanent() {
            "this needs an administrator to act; retrying every 5 minutes"
        } else {
            "will retry"
        }
    }
}

/// How often a permanent failure is tried again: it may have been fixed meanwhile.
const PERMANENT_RETRY: Duration = Duration::from_secs(300);

/// How far this process got with reclaiming one volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reclaimed {
    Data,
    Finalizer,
}

/// How long a reclaimed uid is remembered: far longer than the one event it is for.
const RECLAIMED_MEMORY: Duration = Duration::from_secs(600);

impl Context {
    pub(super) fn mark_reclaimed(&self, uid: &str, stage: Reclaimed) {
        if uid.is_empty() {
            return;
        }
        let mut r = self.reclaimed.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        r.retain(|_, (at, _)| now.duration_since(*at) < RECLAIMED_MEMORY);
        let entry = r.entry(uid.to_string()).or_insert((now, stage));
        *entry = (now, entry.1.max(stage));
    }

    pub(super) fn reclaimed(&self, uid: &str) -> Option<Reclaimed> {
        self.reclaimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .filter(|(at, _)| at.elapsed() < RECLAIMED_MEMORY)
            .map(|(_, stage)| *stage)
    }

    pub(super) fn succeeded(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// 1 s, 2 s, 4 s ... capped at 5 minutes, per object, with up to a fifth added at
    /// random so objects that failed together (a server outage) do not all come back in
    /// the same instant: a claim keeps being retried, and one bad claim does not slow
    /// the others.
    pub(super) fn backoff(&self, uid: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Longer than the longest backoff: an entry not renewed that long is for an
        // object that is gone.
        f.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_MEMORY);
        let (n, at) = f.entry(uid.to_string()).or_insert((0, now));
        *n = n.saturating_add(1);
        *at = now;
        let base = backoff_delay(*n);
        let fifth = u64::try_from(base.as_millis() / 5).unwrap_or(0).max(1);
        let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(fifth)) as u64;
        base + Duration::from_millis(jitter)
    }
}

const FAILURE_MEMORY: Duration = Duration::from_secs(3600);

pub fn backoff_delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

pub(super) fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    if matches!(err, Error::Waiting(_)) {
        // Soon: the volume it waits for is usually reclaimed within seconds.
        return Action::requeue(Duration::from_secs(5));
    }
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let backoff = ctx.backoff(&uid);
    let delay = if err.is_permanent() {
        backoff.max(PERMANENT_RETRY)
    } else {
        backoff
    };
    warn!(name = obj.meta().name.as_deref().unwrap_or(""), error = %err, permanent = err.is_permanent(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_that_need_an_administrator_are_told_apart() {
        use crate::backend::{BackendError, NfsStatus};
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ))
        };
        let status = |status| {
            Error::Backend(BackendError::Status {
                op: "MKDIR",
                path: "p".into(),
                status,
            })
        };
        for (err, permanent) in [
            (api(403), true),
            (api(422), true),
            (api(409), false),
            (api(500), false),
            (api(429), false),
            (status(NfsStatus::NFS3ERR_ACCES), true),
            (status(NfsStatus::NFS3ERR_ROFS), true),
            (status(NfsStatus::NFS3ERR_NAMETOOLONG), true),
            (status(NfsStatus::NFS3ERR_JUKEBOX), false),
            (status(NfsStatus::NFS3ERR_NOSPC), false),
            (Error::Refused("bad annotation".into()), true),
            (Error::Waiting("first".into()), false),
            (Error::InUse("shared".into()), false),
        ] {
            assert_eq!(err.is_permanent(), permanent, "{err}");
            assert_eq!(err.retry_note().contains("administrator"), permanent);
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let got: Vec<u64> = (1..=12).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}

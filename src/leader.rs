//! Leader election on a coordination.k8s.io Lease, with client-go's semantics: the
//! holder renews every retry period and stops acting once a renew deadline passes
//! without a successful renewal; a standby polls the Lease and takes it when its holder
//! released it, or when the record has not changed for a whole lease duration by the
//! standby's own clock (so clock skew between replicas does not matter). Every write is
//! an update on the resourceVersion just read, so two replicas can never both win.
//!
//! A leader that shuts down clears `holderIdentity` ([`Elector::release`]): a standby
//! sees that at its next poll and takes over at once instead of waiting for expiry.
//! The Lease verbs needed are `get`, `create` and `update`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use thiserror::Error;
use tokio::time::Instant;
use tracing::{debug, info, warn};

#[derive(Debug, Error)]
pub enum LeaderError {
    #[error("Lease {lease}: {source}")]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {lease}: no answer within {after:?}")]
    Timeout { lease: String, after: Duration },
}

/// Which Lease, who we are in it, and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
}

/// The three periods of client-go's leader election, in its default proportions
/// (15 s lease, 10 s renew deadline, 2 s retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease record lasts without being renewed.
    pub duration: Duration,
    /// The holder stops acting when it has not renewed for this long: the lease
    /// duration minus this is the margin in which its controllers stop before any
    /// other replica may take the Lease.
    pub renew_deadline: Duration,
    /// How often the holder renews, and the pause between failed attempts.
    pub retry: Duration,
    /// How often a standby reads the Lease: what bounds a takeover after a release.
    pub poll: Duration,
}

impl Timing {
    pub fn for_duration(duration: Duration) -> Self {
        let duration = duration.max(Duration::from_secs(2));
        let retry = (duration / 7).clamp(Duration::from_millis(200), Duration::from_secs(2));
        Timing {
            duration,
            renew_deadline: duration * 2 / 3,
            retry,
            // A read a second is cheap, and it keeps a hand-over well under 3 s.
            poll: retry.min(Duration::from_secs(1)),
        }
    }
}

/// Why a holder stopped holding.
#[derive(Debug, PartialEq, Eq)]
pub enum Lost {
    /// No successful renewal for the renew deadline: the API server is unreachable or
    /// too slow, and another replica may take over once the lease expires.
    RenewDeadline { since_last_renew: Duration },
    /// Someone else holds the Lease now.
    TakenBy(String),
    /// Someone else wrote the Lease since our last renewal.
    Overwritten,
}

/// What one look at the Lease found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Held,
    HeldBy(String),
    /// Another replica wrote the Lease between our read and our write: who holds it
    /// now is not known until the next read.
    Raced,
}

/// The part of the record whose change means the holder is alive.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    duration_seconds: Option<i32>,
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    timing: Timing,
    /// The last record seen and when it was first seen with that content.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        let timing = Timing::for_duration(config.duration);
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            timing,
            observed: None,
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Polls the Lease until this replica holds it. `on_look` is told who holds it
    /// after every successful read (None: nobody), so readiness can say so.
    pub async fn acquire(&mut self, mut on_look: impl FnMut(Option<&str>)) {
        loop {
            let timeout = self.timing.renew_deadline;
            match self.bounded(timeout, |e| e.attempt()).await {
                Ok(Attempt::Held) => {
                    on_look(Some(&self.config.identity));
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => on_look(Some(&holder)),
                Ok(Attempt::Raced) => {}
                Err(e) => warn!(error = %e, "cannot read the Lease; retrying"),
            }
            tokio::time::sleep(self.timing.poll).await;
        }
    }

    /// Renews the Lease every retry period while it is held; resolves when it is not
    /// any more. Call right after [`Elector::acquire`], whose success counts as the
    /// first renewal.
    pub async fn hold(&mut self) -> Lost {
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep_until(last_renew + self.timing.retry).await;
            loop {
                let started = Instant::now();
                let deadline = last_renew + self.timing.renew_deadline;
                let Some(left) = deadline.checked_duration_since(started) else {
                    return Lost::RenewDeadline {
                        since_last_renew: started - last_renew,
                    };
                };
                match self.bounded(left, |e| e.attempt()).await {
                    Ok(Attempt::Held) => {
                        // The record we wrote says `started` or later: count from there.
                        last_renew = started;
                        break;
                    }
                    Ok(Attempt::HeldBy(holder)) => return Lost::TakenBy(holder),
                    Ok(Attempt::Raced) => return Lost::Overwritten,
                    Err(e) => {
                        warn!(error = %e, left = ?left, "renewing the Lease failed");
                        let pause = self.timing.retry.min(left);
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Gives the Lease up if we still hold it, so a standby takes over at its next poll
    /// rather than after the lease duration. Bounded by the renew deadline.
    pub async fn release(&mut self) -> Result<bool, LeaderError> {
        let timeout = self.timing.renew_deadline;
        self.bounded(timeout, |e| e.release_once()).await
    }

    async fn bounded<'a, T, F, Fut>(&'a mut self, limit: Duration, f: F) -> Result<T, LeaderError>
    where
        F: FnOnce(&'a mut Self) -> Fut,
        Fut: std::future::Future<Output = Result<T, LeaderError>> + 'a,
    {
        let lease = self.config.name.clone();
        tokio::time::timeout(limit, f(self))
            .await
            .unwrap_or(Err(LeaderError::Timeout {
                lease,
                after: limit,
            }))
    }

    fn api_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            lease: self.config.name.clone(),
            source,
        }
    }

    /// One read and, if the Lease is ours, free or expired, one write.
    async fn attempt(&mut self) -> Result<Attempt, LeaderError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX);
        let existing = match self.api.get(&self.config.name).await {
            Ok(lease) => lease,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        info!(lease = self.config.name, "created the Lease; holding it");
                        Ok(Attempt::Held)
                    }
                    // Another replica created it first: look again at the next poll.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
                    Err(e) => Err(self.api_error(e)),
                };
            }
            Err(e) => return Err(self.api_error(e)),
        };
        let mut spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = Record {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            duration_seconds: spec.lease_duration_seconds,
        };
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => Instant::now(),
        };
        let record_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.timing.duration);
        self.observed = Some((record, seen_at));

        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(other) = holder.as_ref().filter(|_| !ours)
            && seen_at.elapsed() < record_duration
        {
            return Ok(Attempt::HeldBy(other.clone()));
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            spec.holder_identity = Some(self.config.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        // Someone wrote it since we read it (only one task of ours writes): they hold
        // it now, or will be seen to at the next read.
        if !self.replace(&existing.metadata, spec).await? {
            return Ok(Attempt::Raced);
        }
        if !ours {
            info!(lease = self.config.name, previous = ?holder, "took the Lease");
        } else {
            debug!(lease = self.config.name, "renewed the Lease");
        }
        Ok(Attempt::Held)
    }

    /// Writes `spec` over the Lease as it was read (`read`, whose resourceVersion makes
    /// the write conditional). False when it changed since: a conflict, not an error.
    async fn replace(&self, read: &ObjectMeta, spec: LeaseSpec) -> Result<bool, LeaderError> {
        let update = Lease {
            metadata: read.clone(),
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &update)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.api_error(e)),
        }
    }

    async fn release_once(&mut self) -> Result<bool, LeaderError> {
        let existing = match self.api.get(&self.config.name).await {
            Ok(lease) => lease,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
            Err(e) => return Err(self.api_error(e)),
        };
        let mut spec = existing.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        // As client-go releases: no holder, a 1 s duration, renewed now.
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        // Changed since we read it: it is not ours to release any more.
        self.replace(&existing.metadata, spec).await
    }
}

/// Whether the elector thread holds the Lease. Each term has its own number, so a
/// Lease lost and taken again between two looks is still seen as lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Standby,
    Leading(u64),
}

type ReleaseReply = tokio::sync::oneshot::Sender<Result<bool, LeaderError>>;

/// The elector, run on a thread and a runtime of its own with a client of its own:
/// controllers busy with a large initial list, or a connection pool full of watches,
/// must not delay a renewal, nor the discovery that renewals fail.
pub struct ElectorThread {
    pub state: tokio::sync::watch::Receiver<State>,
    release: Option<tokio::sync::oneshot::Sender<ReleaseReply>>,
    timing: Timing,
}

impl ElectorThread {
    /// Starts competing. `on_look` is told who holds the Lease after every read.
    pub fn spawn(
        config: LeaseConfig,
        on_look: impl Fn(Option<&str>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let timing = Timing::for_duration(config.duration);
        let (state_tx, state) = tokio::sync::watch::channel(State::Standby);
        let (release, mut release_rx) = tokio::sync::oneshot::channel::<ReleaseReply>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("leader-election".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let client = loop {
                        match Client::try_default().await {
                            Ok(c) => break c,
                            Err(e) => warn!(error = %e, "leader election: no client yet"),
                        }
                        tokio::time::sleep(timing.poll).await;
                    };
                    let mut elector = Elector::new(client, config);
                    let mut term = 0u64;
                    loop {
                        tokio::select! {
                            () = elector.acquire(&on_look) => {}
                            reply = &mut release_rx => {
                                if let Ok(reply) = reply {
                                    let _ = reply.send(Ok(false));
                                }
                                return;
                            }
                        }
                        term += 1;
                        let _ = state_tx.send(State::Leading(term));
                        tokio::select! {
                            lost = elector.hold() => {
                                warn!(?lost, "lost the Lease");
                                let _ = state_tx.send(State::Standby);
                            }
                            reply = &mut release_rx => {
                                let released = elector.release().await;
                                let _ = state_tx.send(State::Standby);
                                if let Ok(reply) = reply {
                                    let _ = reply.send(released);
                                }
                                return;
                            }
                        }
                    }
                })
            })?;
        Ok(ElectorThread {
            state,
            release: Some(release),
            timing,
        })
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Stops competing and gives the Lease up if held: true if it was released.
    pub async fn release(&mut self) -> Result<bool, LeaderError> {
        let Some(release) = self.release.take() else {
            return Ok(false);
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if release.send(reply).is_err() {
            return Ok(false);
        }
        answer.await.unwrap_or(Ok(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_keeps_client_go_proportions() {
        let t = Timing::for_duration(Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry, Duration::from_secs(2));
        assert_eq!(t.poll, Duration::from_secs(1));
        let short = Timing::for_duration(Duration::from_secs(3));
        assert_eq!(short.renew_deadline, Duration::from_secs(2));
        assert!(short.retry < short.renew_deadline / 4);
        assert!(short.poll <= short.retry);
        // Less than 2 s is raised to 2 s: renewals need room.
        assert_eq!(
            Timing::for_duration(Duration::ZERO).duration,
            Duration::from_secs(2)
        );
    }
}

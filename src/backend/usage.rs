//! What a volume holds ([`Usage`]) and the pace a scan of it keeps ([`Pace`]): the
//! types both backends' walks share. The walks themselves are `nfs3/usage.rs` and
//! `mounted/usage.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A volume's contents, counted without following a symlink or leaving its directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Space the entries take on the server's disk (NFS `used`, `st_blocks` * 512), the
    /// volume's own directory included: what fills the share, sparse files counted for
    /// what they hold. A file with several links counts once per link.
    pub bytes: u64,
    /// Sum of the entries' sizes, as `ls` shows them.
    pub apparent_bytes: u64,
    /// Entries that are not directories: files, symlinks, sockets, devices.
    pub files: u64,
    /// Directories below the volume's own.
    pub dirs: u64,
    /// Directories that could not be read (a tenant's `chmod 000`); what they hold is
    /// not counted, and the walk goes on with the rest.
    pub unreadable: u64,
    /// Calls the walk made: NFS calls over NFSv3, directory reads and stats on a mount.
    pub calls: u64,
}

/// A token bucket: at most `rate` calls a second on average, bursts of at most one
/// second's worth. One per share, shared by every walk on it, so one share's scans never
/// exceed the budget however many volumes it holds. Cloning shares the bucket.
#[derive(Clone, Debug, Default)]
pub struct Pace(Option<Arc<Mutex<Bucket>>>);

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    /// May go below zero: callers reserve ahead and each waits for its own turn.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes one token at `now`; how long the caller must wait before its call.
    fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

impl Pace {
    /// No limit at all.
    pub fn unlimited() -> Self {
        Self(None)
    }

    /// `calls_per_second` of 0 means no limit.
    pub fn per_second(calls_per_second: u32) -> Self {
        if calls_per_second == 0 {
            return Self::unlimited();
        }
        let rate = f64::from(calls_per_second);
        Self(Some(Arc::new(Mutex::new(Bucket {
            rate,
            burst: rate,
            tokens: rate,
            last: Instant::now(),
        }))))
    }

    fn wait_at(&self, now: Instant) -> Duration {
        match &self.0 {
            None => Duration::ZERO,
            Some(b) => b.lock().unwrap_or_else(|p| p.into_inner()).take(now),
        }
    }

    /// Waits for the turn of one call.
    pub async fn call(&self) {
        let wait = self.wait_at(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The same, from a blocking thread (the mounted backend's walk).
    pub fn call_blocking(&self) {
        let wait = self.wait_at(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: f64, start: Instant) -> Bucket {
        Bucket {
            rate,
            burst: rate,
            tokens: rate,
            last: start,
        }
    }

    #[test]
    fn a_burst_of_one_second_then_one_call_per_token() {
        let t0 = Instant::now();
        let mut b = bucket(10.0, t0);
        for i in 0..10 {
            assert_eq!(b.take(t0), Duration::ZERO, "call {i} of the burst");
        }
        // The 11th waits a tenth of a second, the 12th two tenths: reservations queue.
        assert_eq!(b.take(t0).as_millis(), 100);
        assert_eq!(b.take(t0).as_millis(), 200);
        // Three seconds idle refill at most the burst, not thirty tokens.
        let later = t0 + Duration::from_secs(3);
        for _ in 0..10 {
            assert_eq!(b.take(later), Duration::ZERO);
        }
        assert_eq!(b.take(later).as_millis(), 100);
    }

    #[test]
    fn the_long_run_rate_is_the_limit() {
        let t0 = Instant::now();
        let mut b = bucket(50.0, t0);
        // Each caller sleeps what it is told, then calls again: simulated time.
        let mut now = t0;
        let mut calls = 0u32;
        while now < t0 + Duration::from_secs(10) {
            now += b.take(now);
            calls += 1;
        }
        // 50 a second for 10 s, plus the first second's burst.
        assert!((540..=551).contains(&calls), "{calls} calls in 10 s");
    }

    #[test]
    fn a_clock_going_backwards_does_not_mint_tokens() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut b = bucket(1.0, t0);
        assert_eq!(b.take(t0), Duration::ZERO);
        let earlier = t0 - Duration::from_secs(5);
        assert!(b.take(earlier) > Duration::ZERO);
    }

    #[tokio::test]
    async fn unlimited_never_waits_and_a_limit_is_kept_in_real_time() {
        let free = Pace::per_second(0);
        let started = Instant::now();
        for _ in 0..10_000 {
            free.call().await;
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // 20 a second: the burst of 20, then 10 more take at least half a second.
        let paced = Pace::per_second(20);
        let started = Instant::now();
        for _ in 0..30 {
            paced.call().await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
    }
}

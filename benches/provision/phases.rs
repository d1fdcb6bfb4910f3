//! The phases of one run (burst provision, idle, restart, burst reclaim) and the ceiling
//! (plain PV creates); `Bench` holds what every phase needs.

use crate::cluster::release_namespace_volumes;
use crate::env::Env;
use crate::objects::{
    create_burst, create_class, create_namespace, create_pvs, delete_namespace_and_wait,
};
use crate::prelude::*;
use crate::requests::{flow_counts, requests_between};
use crate::results::RunResult;
use crate::sampling::{PhaseMeter, ProcStat, Sampler};
use crate::stats::{Burst, timeline};
use crate::subjects::{Launch, Proc, Subject, tail};
use crate::watch::{Track, stage, wait_flag, watch_claims, watch_pv_deleted};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};

pub(crate) struct Bench {
    pub(crate) env: Env,
    pub(crate) client: Client,
    pub(crate) sampler: Arc<Sampler>,
    pub(crate) ours: Option<Launch>,
    pub(crate) incumbent: Option<Launch>,
    pub(crate) files: usize,
    pub(crate) phase_timeout: Option<Duration>,
    /// The incumbent's provision and reclaim phases stop here and report what they
    /// completed (it runs at client-go's 5 requests/s: a full N=1000 takes ~10 min).
    pub(crate) incumbent_cap: Duration,
}

/// How a waiting phase ended.
enum Ended {
    Done,
    /// The incumbent's cap: a partial figure, reported as such.
    Capped,
    /// The phase limit: an error.
    TimedOut,
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Bench {
    pub(crate) fn phase_limit(&self, n: usize) -> Duration {
        self.phase_timeout
            .unwrap_or(Duration::from_secs_f64(300.0 + 1.5 * n as f64))
    }

    pub(crate) fn launch(&self, s: Subject) -> Option<&Launch> {
        match s {
            Subject::Ours => self.ours.as_ref(),
            Subject::Incumbent => self.incumbent.as_ref(),
            Subject::Ceiling | Subject::Limit => None,
        }
    }

    /// The incumbent's cap if it is shorter than the phase limit.
    fn cap(&self, s: Subject, limit: Duration) -> Option<Duration> {
        (s == Subject::Incumbent && self.incumbent_cap < limit).then_some(self.incumbent_cap)
    }

    pub(crate) async fn run(&self, s: Subject, n: usize, out: &mut RunResult) -> Res<()> {
        out.subject = Some(s);
        out.n = n;
        out.loadavg_start = loadavg();
        let ns = format!("nfs3p-bench-{}-n{n}", s.name());
        delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(120)).await;
        create_namespace(&self.client, &ns).await?;
        let class = create_class(&self.client, s).await?;
        let limit = self.phase_limit(n);
        let result = if s == Subject::Ceiling {
            self.ceiling(n, &ns, &class, out).await
        } else {
            self.run_in(s, n, &ns, &class, limit, out).await
        };
        out.loadavg_end = loadavg();
        // Clean up whatever happened (the subject's process is gone by now).
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        let _ = claims
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        if !s.is_process() {
            let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
            let _ = pvs
                .delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels(&format!("nfs3p-bench={}", s.name())),
                )
                .await;
        }
        release_namespace_volumes(&self.env, &self.client, &ns).await;
        delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(120)).await;
        let _ = Api::<StorageClass>::all(self.client.clone())
            .delete(&class, &DeleteParams::default())
            .await;
        result
    }

    /// The API server's PV-create rate at the provisioners' concurrency: N plain PVs,
    /// nothing bound. "Bound" in the tables is "created" here.
    async fn ceiling(&self, n: usize, ns: &str, class: &str, out: &mut RunResult) -> Res<()> {
        log(format!("ceiling: creating {n} PVs"));
        let t0 = Instant::now();
        let made = create_pvs(&self.client, ns, class, n, &self.env.nfs_server).await?;
        let all = t0.elapsed().as_secs_f64();
        let done: Vec<Instant> = made.iter().map(|m| m.2).collect();
        out.provision = Burst {
            n,
            create_s: all,
            all_done_s: all,
            per_s: n as f64 / all.max(1e-9),
            lat: made
                .iter()
                .map(|(_, sent, back)| back.saturating_duration_since(*sent).as_secs_f64())
                .collect(),
            timeline: timeline(t0, &done),
            done: made.len(),
        };
        log(format!(
            "ceiling: {n} PVs created in {all:.2}s ({:.1}/s)",
            out.provision.per_s
        ));
        Ok(())
    }

    async fn run_in(
        &self,
        s: Subject,
        n: usize,
        ns: &str,
        class: &str,
        limit: Duration,
        out: &mut RunResult,
    ) -> Res<()> {
        let launch = self.launch(s);
        let mut proc = None;
        if let Some(l) = launch {
            if s == Subject::Incumbent {
                self.forget_incumbent_leader();
            }
            let (p, secs) = l
                .start_ready(&format!("n{n}-start"), Duration::from_secs(120))
                .await?;
            log(format!(
                "{}: ready after {secs:.2}s (pid {})",
                s.name(),
                p.pid()
            ));
            out.cold_start_s = Some(secs);
            proc = Some(p);
            tokio::time::sleep(Duration::from_secs(2)).await; // let start-up work settle
        }

        let before = flow_counts(&self.env)?;
        self.provision(s, n, ns, class, limit, proc.as_mut(), out)
            .await?;
        let (Some(launch), Some(p)) = (launch, proc) else {
            if s != Subject::Limit {
                out.provision_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
            }
            return Ok(());
        };
        if out.error.is_some() {
            out.provision_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
            return Ok(());
        }

        // Idle with the N volumes. Requests still under way (events queued behind a
        // client rate limit) count to the provisioning: its window ends after this.
        let meter = PhaseMeter::begin(&self.sampler, p.pid());
        tokio::time::sleep(IDLE_WINDOW).await;
        out.idle_fp = Some(meter.end(&self.sampler));
        out.provision_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));

        let p = self.restart(s, n, launch, p, out).await?;
        self.reclaim(s, ns, limit, p, out).await
    }

    /// The incumbent's leader lock (an Endpoints object named after the provisioner) left
    /// by the previous run's killed process would make a cold start wait for it to
    /// expire, as a restart does: a cold start begins without it.
    pub(crate) fn forget_incumbent_leader(&self) {
        let _ = self.env.kubectl(&[
            "delete",
            "--ignore-not-found",
            "-n",
            BENCH_NS,
            "endpoints,lease",
            &INCUMBENT_NAME.replace('/', "-"),
        ]);
    }

    #[allow(clippy::too_many_arguments)]
    /// Waits until `done()` reaches `n`: Done, Capped (the incumbent's cap) or TimedOut.
    async fn wait_count(
        &self,
        s: Subject,
        what: &str,
        n: usize,
        t0: Instant,
        limit: Duration,
        done: impl Fn() -> usize,
        mut proc: Option<&mut Proc>,
    ) -> Res<Ended> {
        let cap = self.cap(s, limit);
        let mut last_report = Instant::now();
        loop {
            let k = done();
            if k >= n {
                return Ok(Ended::Done);
            }
            if cap.is_some_and(|c| t0.elapsed() > c) {
                log(format!(
                    "{}: {what} capped at {:.0}s with {k}/{n} done",
                    s.name(),
                    t0.elapsed().as_secs_f64()
                ));
                return Ok(Ended::Capped);
            }
            if t0.elapsed() > limit {
                return Ok(Ended::TimedOut);
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                log(format!(
                    "{}: {what} {k}/{n} after {:.0}s",
                    s.name(),
                    t0.elapsed().as_secs_f64()
                ));
                last_report = Instant::now();
            }
            if let Some(p) = proc.as_mut()
                && !p.alive()
            {
                return Err(format!("{} died; log:\n{}", s.name(), tail(&p.log, 30)).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// 1. Burst provision: N claims at once, until all are Bound (or the cap / limit).
    #[allow(clippy::too_many_arguments)]
    async fn provision(
        &self,
        s: Subject,
        n: usize,
        ns: &str,
        class: &str,
        limit: Duration,
        proc: Option<&mut Proc>,
        out: &mut RunResult,
    ) -> Res<()> {
        let track = watch_claims(&self.client, ns);
        let bound = track.bound.clone();
        let t_w = Instant::now();
        while track.started.load(Ordering::SeqCst) < 2 {
            if t_w.elapsed() > Duration::from_secs(30) {
                return Err("watches did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let meter = proc
            .as_ref()
            .map(|p| PhaseMeter::begin(&self.sampler, p.pid()));
        log(format!("{}: creating {n} claims", s.name()));
        let t0 = Instant::now();
        let server = self.env.nfs_server.clone();
        let created = create_burst(
            &self.client,
            ns,
            class,
            n,
            (s == Subject::Limit).then_some(server.as_str()),
        )
        .await?;
        let create_s = t0.elapsed().as_secs_f64();
        log(format!(
            "{}: {n} claims created in {create_s:.2}s; waiting for Bound",
            s.name()
        ));
        let ended = self
            .wait_count(
                s,
                "Bound",
                n,
                t0,
                limit,
                || bound.lock().unwrap().len(),
                proc,
            )
            .await?;
        let bound_at: HashMap<String, Instant> = bound.lock().unwrap().clone();
        let last = bound_at.values().max().copied().unwrap_or(t0);
        let all_done_s = match ended {
            // A capped rate is what it completed in the time it had.
            Ended::Capped => t0.elapsed().as_secs_f64(),
            _ => last.saturating_duration_since(t0).as_secs_f64(),
        };
        match ended {
            Ended::Done => {}
            Ended::Capped => out.capped.push(format!(
                "provision: {}/{n} Bound in the {:.0} s cap",
                bound_at.len(),
                all_done_s
            )),
            Ended::TimedOut => {
                out.error = Some(format!(
                    "only {}/{n} claims Bound after {limit:?}",
                    bound_at.len()
                ))
            }
        }
        out.provision = Burst {
            n,
            create_s,
            all_done_s,
            per_s: bound_at.len() as f64 / all_done_s.max(1e-9),
            lat: bound_at
                .iter()
                .filter_map(|(k, b)| {
                    created
                        .get(k)
                        .map(|c| b.saturating_duration_since(*c).as_secs_f64())
                })
                .collect(),
            timeline: timeline(t0, &bound_at.values().copied().collect::<Vec<_>>()),
            done: bound_at.len(),
        };
        out.stages = stages(s, &track, &created, &bound_at);
        log(format!(
            "{}: {}/{n} Bound in {all_done_s:.2}s ({:.1}/s), p50 {:.2}s p99 {:.2}s",
            s.name(),
            bound_at.len(),
            out.provision.per_s,
            out.provision.p(50.0),
            out.provision.p(99.0)
        ));
        if let Some(m) = &meter {
            out.provision_fp = Some(m.end(&self.sampler));
        }
        Ok(())
    }

    /// 2. Restart: SIGKILL, start again with the volumes there; time to ready and the
    ///    requests until ready + 10 s.
    async fn restart(
        &self,
        s: Subject,
        n: usize,
        launch: &Launch,
        mut p: Proc,
        out: &mut RunResult,
    ) -> Res<Proc> {
        let before = flow_counts(&self.env)?;
        p.kill9();
        drop(p);
        let (p, ready_s) = launch
            .start_ready(&format!("n{n}-restart"), Duration::from_secs(120))
            .await?;
        self.sampler.watch(p.pid());
        // The restart's own start-up cost counts: CPU from the process's birth.
        let meter = PhaseMeter {
            pid: p.pid(),
            start: ProcStat::default(),
        };
        tokio::time::sleep(RESTART_WINDOW).await;
        out.restart_ready_s = Some(ready_s);
        out.restart_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
        out.restart_fp = Some(meter.end(&self.sampler));
        log(format!(
            "{}: restart ready after {ready_s:.2}s; {} writes, {} requests until ready+10s",
            s.name(),
            out.restart_req.map(|r| r.writes).unwrap_or_default(),
            out.restart_req.map(|r| r.all).unwrap_or_default()
        ));
        Ok(p)
    }

    /// 3. Burst reclaim: `files` files into each volume's directory, then every claim
    ///    deleted at once; until every PV and directory is gone (or the cap / limit).
    async fn reclaim(
        &self,
        s: Subject,
        ns: &str,
        limit: Duration,
        mut p: Proc,
        out: &mut RunResult,
    ) -> Res<()> {
        let pvs: Vec<PersistentVolume> = Api::<PersistentVolume>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .and_then(|c| c.namespace.as_deref())
                    == Some(ns)
            })
            .collect();
        let dirs: Vec<PathBuf> = pvs
            .iter()
            .filter_map(|pv| {
                pv.spec
                    .as_ref()?
                    .nfs
                    .as_ref()
                    .map(|n| PathBuf::from(&n.path))
            })
            .collect();
        let files = self.files;
        let dirs_w = dirs.clone();
        log(format!(
            "{}: writing {files} files into each of {} directories",
            s.name(),
            dirs.len()
        ));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for d in &dirs_w {
                for i in 0..files {
                    std::fs::write(d.join(format!("f{i:03}")), b"nfs3p-bench small file\n")?;
                }
            }
            Ok(())
        })
        .await??;
        let names: HashSet<String> = pvs
            .iter()
            .filter_map(|pv| pv.metadata.name.clone())
            .collect();
        let (gone, watching) = watch_pv_deleted(&self.client, names.clone());
        wait_flag(&watching, Duration::from_secs(30)).await?;
        let meter = PhaseMeter::begin(&self.sampler, p.pid());
        let before = flow_counts(&self.env)?;
        let t0 = Instant::now();
        // The deletecollection call itself can outlast the client's read timeout on a
        // loaded API server (it answers once every claim is marked): the watches time
        // the reclaim, so the call runs beside them and a late answer is only logged.
        // The API server gives up on it after its own 60 s request timeout, leaving the
        // rest of the claims unmarked (seen at N=5000): then it is asked again.
        let claims = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns);
        tokio::spawn(async move {
            for _ in 0..10 {
                if let Err(e) = claims
                    .delete_collection(&DeleteParams::default(), &ListParams::default())
                    .await
                {
                    log(format!("reclaim: deletecollection of the claims: {e}"));
                }
                match claims.list_metadata(&ListParams::default()).await {
                    Ok(l) => {
                        let left = l
                            .items
                            .iter()
                            .filter(|c| c.metadata.deletion_timestamp.is_none())
                            .count();
                        if left == 0 {
                            return;
                        }
                        log(format!(
                            "reclaim: {left} claims not marked yet; asking again"
                        ));
                    }
                    Err(e) => log(format!("reclaim: listing the claims left: {e}")),
                }
            }
        });
        let dirs_left = Mutex::new(dirs.clone());
        let dirs_done: Mutex<Option<f64>> = Mutex::new(None);
        let ended = self
            .wait_count(
                s,
                "reclaim",
                names.len() + dirs.len(),
                t0,
                limit,
                || {
                    let mut left = dirs_left.lock().unwrap();
                    left.retain(|d| d.exists());
                    let mut dd = dirs_done.lock().unwrap();
                    if left.is_empty() && dd.is_none() {
                        *dd = Some(t0.elapsed().as_secs_f64());
                    }
                    gone.lock().unwrap().len() + dirs.len() - left.len()
                },
                Some(&mut p),
            )
            .await?;
        let dirs_done = *dirs_done.lock().unwrap();
        let dirs_gone = dirs.len() - dirs_left.lock().unwrap().len();
        let gone_at: Vec<Instant> = gone.lock().unwrap().values().copied().collect();
        let last = gone_at.iter().max().copied().unwrap_or(t0);
        let all = match ended {
            Ended::Capped => t0.elapsed().as_secs_f64(),
            _ => last
                .saturating_duration_since(t0)
                .as_secs_f64()
                .max(dirs_done.unwrap_or(0.0)),
        };
        let summary = format!(
            "{}/{} volumes and {dirs_gone}/{} directories gone",
            gone_at.len(),
            names.len(),
            dirs.len()
        );
        match ended {
            Ended::Done => {}
            Ended::Capped => out
                .capped
                .push(format!("reclaim: {summary} in the {all:.0} s cap")),
            Ended::TimedOut => out.error = Some(format!("reclaim: {summary} after {limit:?}")),
        }
        out.reclaim = Some(Burst {
            n: names.len(),
            create_s: 0.0,
            all_done_s: all,
            per_s: gone_at.len() as f64 / all.max(1e-9),
            lat: gone_at
                .iter()
                .map(|g| g.saturating_duration_since(t0).as_secs_f64())
                .collect(),
            timeline: timeline(t0, &gone_at),
            done: gone_at.len(),
        });
        out.reclaim_dirs_s = dirs_done;
        out.reclaim_fp = Some(meter.end(&self.sampler));
        out.reclaim_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
        log(format!("{}: reclaim: {summary} in {all:.2}s", s.name()));
        Ok(())
    }
}

/// Where a claim's time to Bound went, from the bench's watches.
fn stages(
    s: Subject,
    track: &Track,
    created: &HashMap<String, Instant>,
    bound_at: &HashMap<String, Instant>,
) -> Vec<(&'static str, Option<(f64, f64)>)> {
    if s == Subject::Limit {
        return vec![("claim created → Bound (binder)", stage(created, bound_at))];
    }
    let handed = track.handed.lock().unwrap().clone();
    let pv = track.pv.lock().unwrap().clone();
    vec![
        (
            "claim created → handed to provisioner (binder)",
            stage(created, &handed),
        ),
        ("handed → PV created (provisioner)", stage(&handed, &pv)),
        ("PV created → claim Bound (binder)", stage(&pv, bound_at)),
    ]
}

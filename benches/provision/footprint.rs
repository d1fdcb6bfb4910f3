//! Footprint among pre-existing volumes: N pre-bound PVs and claims made by the bench
//! (provisioned by neither subject), each provisioner started among them: RSS 30 s after
//! ready, time to ready, and a restart (time to ready, API requests).

use crate::objects::{create_burst, create_class, create_namespace, delete_namespace_and_wait};
use crate::phases::{Bench, loadavg};
use crate::prelude::*;
use crate::requests::{flow_counts, requests_between};
use crate::results::RunResult;
use crate::sampling::{PhaseMeter, ProcStat};
use crate::subjects::Subject;
use crate::watch::watch_claims;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use kube::api::{DeleteParams, ListParams};

impl Bench {
    /// N pre-bound PV+claim pairs (made like the limit's), then each provisioner started
    /// among them: RSS and CPU 30 s after ready, and a restart (time to ready, requests).
    pub(crate) async fn footprint(&self, n: usize, subjects: &[Subject]) -> Vec<RunResult> {
        let mut results = vec![];
        let ns = format!("nfs3p-bench-limit-fp{n}");
        // BENCH_FOOTPRINT_REUSE: the objects of an earlier, stopped run are still there
        // (making 20 000 pairs takes minutes on a loaded machine): measure among them as
        // they are, and leave them for `cluster.sh down --purge`.
        let reuse = std::env::var("BENCH_FOOTPRINT_REUSE").is_ok_and(|v| !v.is_empty());
        let track = watch_claims(&self.client, &ns);
        let prep = async {
            if reuse {
                let have = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &ns)
                    .list_metadata(&ListParams::default())
                    .await?
                    .items
                    .len();
                log(format!("footprint: reusing {have} claims in {ns}"));
                // The Bound count comes from the watches: let them list first.
                let t0 = Instant::now();
                while track.started.load(Ordering::SeqCst) < 2
                    && t0.elapsed() < Duration::from_secs(120)
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return Ok(());
            }
            delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(120)).await;
            create_namespace(&self.client, &ns).await?;
            let class = create_class(&self.client, Subject::Limit).await?;
            log(format!(
                "footprint: creating {n} pre-bound volumes and claims"
            ));
            let t0 = Instant::now();
            create_burst(
                &self.client,
                &ns,
                &class,
                n,
                Some(self.env.nfs_server.as_str()),
            )
            .await?;
            let limit = self.phase_limit(n);
            while track.bound.lock().unwrap().len() < n && t0.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            log(format!(
                "footprint: {}/{n} Bound after {:.0}s",
                track.bound.lock().unwrap().len(),
                t0.elapsed().as_secs_f64()
            ));
            Ok::<_, BoxError>(())
        };
        if let Err(e) = prep.await {
            log(format!("footprint set-up failed: {e}"));
        } else {
            for &s in subjects {
                let launch = self.launch(s);
                let Some(launch) = launch else { continue };
                let mut r = RunResult {
                    subject: Some(s),
                    n,
                    footprint_only: true,
                    ..Default::default()
                };
                r.loadavg_start = loadavg();
                // How many of the claims were Bound when this subject started.
                r.provision.n = n;
                r.provision.done = track.bound.lock().unwrap().len();
                if s == Subject::Incumbent {
                    self.forget_incumbent_leader();
                }
                let run = async {
                    let (p, ready) = launch
                        .start_ready(&format!("fp{n}-start"), Duration::from_secs(300))
                        .await?;
                    r.cold_start_s = Some(ready);
                    let meter = PhaseMeter {
                        pid: p.pid(),
                        start: ProcStat::default(),
                    };
                    self.sampler.watch(p.pid());
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    r.idle_fp = Some(meter.end(&self.sampler));
                    let before = flow_counts(&self.env)?;
                    drop(p);
                    let (p, ready) = launch
                        .start_ready(&format!("fp{n}-restart"), Duration::from_secs(300))
                        .await?;
                    self.sampler.watch(p.pid());
                    tokio::time::sleep(RESTART_WINDOW).await;
                    r.restart_ready_s = Some(ready);
                    r.restart_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
                    r.restart_fp = Some(
                        PhaseMeter {
                            pid: p.pid(),
                            start: ProcStat::default(),
                        }
                        .end(&self.sampler),
                    );
                    Ok::<_, BoxError>(())
                };
                if let Err(e) = run.await {
                    r.error = Some(e.to_string());
                }
                r.loadavg_end = loadavg();
                log(format!(
                    "footprint {} with {n} PVs: RSS {:.1} MiB, restart ready {:.2}s, {} writes",
                    s.name(),
                    r.idle_fp.as_ref().map(|f| f.rss_end_mb).unwrap_or(f64::NAN),
                    r.restart_ready_s.unwrap_or(f64::NAN),
                    r.restart_req.map(|q| q.writes).unwrap_or(f64::NAN)
                ));
                results.push(r);
            }
        }
        if !reuse {
            let _ = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &ns)
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await;
            let _ = Api::<PersistentVolume>::all(self.client.clone())
                .delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels("nfs3p-bench=limit"),
                )
                .await;
            delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(300)).await;
        }
        results
    }
}

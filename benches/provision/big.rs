//! Big volumes: the reclaim of one volume holding a wide tree (100 000 files in 1 000
//! directories) and of one deep tree (2 000 levels), per subject, against the server
//! host's own `rm -rf` of the same tree on local disk as the physical reference.

use crate::cluster::release_namespace_volumes;
use crate::objects::{claim, create_class, create_namespace, delete_namespace_and_wait};
use crate::phases::{Bench, loadavg};
use crate::prelude::*;
use crate::sampling::{PhaseMeter, proc_stat};
use crate::stats::round;
use crate::subjects::Subject;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use rustix::fs::{Mode, OFlags, mkdirat, openat};

/// The shape of a big volume's tree.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tree {
    /// `dirs` directories of `files` empty files each.
    Wide { dirs: usize, files: usize },
    /// One directory inside the other, `depth` levels.
    Deep { depth: usize },
}

impl Tree {
    pub(crate) fn label(self) -> String {
        match self {
            Tree::Wide { dirs, files } => {
                format!("{} files in {dirs} directories", dirs * files)
            }
            Tree::Deep { depth } => format!("{depth}-level deep tree"),
        }
    }
    fn key(self) -> &'static str {
        match self {
            Tree::Wide { .. } => "wide",
            Tree::Deep { .. } => "deep",
        }
    }

    /// Builds the tree under `root` (which exists) on local disk.
    fn build(self, root: &Path) -> std::io::Result<()> {
        match self {
            Tree::Wide { dirs, files } => {
                for d in 0..dirs {
                    let dir = root.join(format!("d{d:04}"));
                    std::fs::create_dir(&dir)?;
                    for f in 0..files {
                        std::fs::File::create(dir.join(format!("f{f:04}")))?;
                    }
                }
                Ok(())
            }
            Tree::Deep { depth } => {
                // Relative to a descriptor at each level: the full path is far beyond
                // PATH_MAX.
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
                let mut fd = openat(rustix::fs::CWD, root, flags, Mode::empty())?;
                for _ in 0..depth {
                    mkdirat(&fd, "d", Mode::from_raw_mode(0o755))?;
                    fd = openat(&fd, "d", flags, Mode::empty())?;
                }
                Ok(())
            }
        }
    }
}

/// One reclaim of one big volume (or the reference `rm -rf`, `subject` None).
#[derive(Clone, Debug, Default)]
pub(crate) struct BigResult {
    pub(crate) subject: Option<Subject>,
    pub(crate) tree: String,
    pub(crate) build_s: Option<f64>,
    /// Claim deleted (or `rm -rf` started) until the directory is gone.
    pub(crate) dir_gone_s: Option<f64>,
    /// Claim deleted until the PV is gone.
    pub(crate) pv_gone_s: Option<f64>,
    pub(crate) rss_before_mb: Option<f64>,
    pub(crate) rss_peak_mb: Option<f64>,
    pub(crate) cpu_s: Option<f64>,
    pub(crate) loadavg: String,
    pub(crate) error: Option<String>,
}

impl BigResult {
    pub(crate) fn who(&self) -> &'static str {
        self.subject
            .map(|s| s.name())
            .unwrap_or("rm -rf (server host, local disk)")
    }
    pub(crate) fn json(&self) -> Value {
        let r = |v: Option<f64>, d| v.map(|x| round(x, d));
        json!({
            "subject": self.who(),
            "tree": self.tree,
            "build_s": r(self.build_s, 2),
            "dir_gone_s": r(self.dir_gone_s, 3),
            "pv_gone_s": r(self.pv_gone_s, 3),
            "rss_before_mb": r(self.rss_before_mb, 1),
            "rss_peak_mb": r(self.rss_peak_mb, 1),
            "cpu_s": r(self.cpu_s, 2),
            "loadavg": self.loadavg,
            "error": self.error,
        })
    }
}

async fn build(tree: Tree, root: PathBuf) -> Res<f64> {
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || tree.build(&root)).await??;
    Ok(t0.elapsed().as_secs_f64())
}

impl Bench {
    /// Every tree for every subject given, then the reference `rm -rf` of each tree.
    pub(crate) async fn big_volumes(&self, trees: &[Tree], subjects: &[Subject]) -> Vec<BigResult> {
        let mut out = vec![];
        for &tree in trees {
            for &s in subjects.iter().filter(|s| s.is_process()) {
                let mut r = BigResult {
                    subject: Some(s),
                    tree: tree.label(),
                    loadavg: loadavg(),
                    ..Default::default()
                };
                if let Err(e) = self.big_one(s, tree, &mut r).await {
                    log(format!("big volume {} {}: {e}", s.name(), tree.label()));
                    r.error = Some(e.to_string());
                }
                out.push(r);
            }
            out.push(self.reference_rm(tree).await);
        }
        out
    }

    async fn big_one(&self, s: Subject, tree: Tree, r: &mut BigResult) -> Res<()> {
        let Some(launch) = self.launch(s) else {
            return Ok(());
        };
        let ns = format!("nfs3p-bench-big-{}-{}", s.name(), tree.key());
        delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(120)).await;
        create_namespace(&self.client, &ns).await?;
        let class = create_class(&self.client, s).await?;
        let result = async {
            if s == Subject::Incumbent {
                self.forget_incumbent_leader();
            }
            let (p, _) = launch
                .start_ready(&format!("big-{}", tree.key()), Duration::from_secs(120))
                .await?;
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
            claims
                .create(&PostParams::default(), &claim(&ns, "big", &class, None)?)
                .await?;
            let pv_name = self.wait_bound(&claims, "big").await?;
            let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
            let dir = pvs
                .get(&pv_name)
                .await?
                .spec
                .and_then(|s| s.nfs)
                .map(|n| PathBuf::from(n.path))
                .ok_or("the PV has no NFS path")?;
            log(format!("big volume {}: building {}", s.name(), tree.label()));
            r.build_s = Some(build(tree, dir.clone()).await?);
            r.rss_before_mb = proc_stat(p.pid()).map(|st| st.rss_kb as f64 / 1024.0);
            let meter = PhaseMeter::begin(&self.sampler, p.pid());
            let t0 = Instant::now();
            claims.delete("big", &DeleteParams::default()).await?;
            let limit = self.phase_limit(1000);
            while r.pv_gone_s.is_none() || r.dir_gone_s.is_none() {
                if r.dir_gone_s.is_none() && dir.symlink_metadata().is_err() {
                    r.dir_gone_s = Some(t0.elapsed().as_secs_f64());
                }
                if r.pv_gone_s.is_none() && pvs.get_opt(&pv_name).await?.is_none() {
                    r.pv_gone_s = Some(t0.elapsed().as_secs_f64());
                }
                if t0.elapsed() > limit {
                    return Err(format!("not reclaimed after {limit:?}").into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let fp = meter.end(&self.sampler);
            r.rss_peak_mb = Some(fp.rss_peak_mb);
            r.cpu_s = Some(fp.cpu_s);
            log(format!(
                "big volume {} {}: directory gone after {:.2}s, PV after {:.2}s, peak RSS {:.1} MiB",
                s.name(),
                tree.label(),
                r.dir_gone_s.unwrap_or(f64::NAN),
                r.pv_gone_s.unwrap_or(f64::NAN),
                fp.rss_peak_mb
            ));
            drop(p);
            Ok::<_, BoxError>(())
        }
        .await;
        release_namespace_volumes(&self.env, &self.client, &ns).await;
        delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(120)).await;
        let _ = Api::<StorageClass>::all(self.client.clone())
            .delete(&class, &DeleteParams::default())
            .await;
        result
    }

    /// The claim's volume name once it is Bound.
    async fn wait_bound(&self, claims: &Api<PersistentVolumeClaim>, name: &str) -> Res<String> {
        let t0 = Instant::now();
        loop {
            if let Some(c) = claims.get_opt(name).await?
                && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                && let Some(v) = c.spec.and_then(|s| s.volume_name)
            {
                return Ok(v);
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err(format!("claim {name} not Bound after 120 s").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The physical reference: the same tree built beside the volumes on the same disk,
    /// removed by the host's `rm -rf`.
    async fn reference_rm(&self, tree: Tree) -> BigResult {
        let mut r = BigResult {
            tree: tree.label(),
            loadavg: loadavg(),
            ..Default::default()
        };
        let root = self
            .env
            .export1
            .join(format!("nfs3p-bench-ref-{}", tree.key()));
        let run = async {
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir(&root)?;
            r.build_s = Some(build(tree, root.clone()).await?);
            let t0 = Instant::now();
            let target = root.clone();
            let status = tokio::task::spawn_blocking(move || {
                Command::new("rm").arg("-rf").arg(&target).status()
            })
            .await??;
            if !status.success() {
                return Err(format!("rm -rf {} failed: {status}", root.display()).into());
            }
            r.dir_gone_s = Some(t0.elapsed().as_secs_f64());
            log(format!(
                "big volume reference: rm -rf of {} in {:.2}s",
                tree.label(),
                r.dir_gone_s.unwrap_or(f64::NAN)
            ));
            Ok::<_, BoxError>(())
        };
        if let Err(e) = run.await {
            r.error = Some(e.to_string());
        }
        let _ = std::fs::remove_dir_all(&root);
        r
    }
}

//! The bench's view of the local environment: paths and kubectl of the control plane
//! (tests/e2e/cluster.sh env), the admin client, and kube-controller-manager's rate limit
//! (read from its command line, changed by restarting it through cluster.sh).

use crate::prelude::*;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::io::Write;

pub(crate) struct Env {
    pub(crate) repo: PathBuf,
    pub(crate) e2e_dir: PathBuf,
    pub(crate) admin_kubeconfig: PathBuf,
    pub(crate) kubectl: PathBuf,
    pub(crate) nfs_server: String,
    pub(crate) export1: PathBuf,
    pub(crate) out: PathBuf,
}

pub(crate) fn script(repo: &Path, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Res<String> {
    let out = Command::new(repo.join("tests/e2e").join(name))
        .args(args)
        .envs(envs.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run tests/e2e/{name}: {e}"))?;
    if !out.status.success() {
        return Err(format!("tests/e2e/{name} {} failed: {}", args.join(" "), out.status).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Env {
    pub(crate) fn kubectl(&self, args: &[&str]) -> Res<String> {
        self.kubectl_in(args, None)
    }

    pub(crate) fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Res<String> {
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(args)
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn apply(&self, yaml: &str) -> Res<()> {
        self.kubectl_in(&["apply", "-f", "-"], Some(yaml))
            .map(|_| ())
    }

    /// A kubeconfig that authenticates with `token`.
    pub(crate) fn token_kubeconfig(&self, file: &Path, token: &str, namespace: &str) -> Res<()> {
        let server = self.kubectl(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])?;
        let ca = self.kubectl(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ])?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: bench\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: bench\n    namespace: {namespace}\ncurrent-context: e2e\n"
        );
        std::fs::write(file, text)?;
        Ok(())
    }
}

pub(crate) async fn admin_client(env: &Env) -> Res<Client> {
    let kc = Kubeconfig::read_from(&env.admin_kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// kube-controller-manager's --kube-api-qps / --kube-api-burst as it runs now.
pub(crate) fn kcm_qps(env: &Env) -> (String, String) {
    let pid = std::fs::read_to_string(env.e2e_dir.join("k8s/kube-controller-manager.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let cmdline = pid
        .and_then(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    let flag = |name: &str, default: &str| {
        cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
            .unwrap_or_else(|| format!("{default} (default)"))
    };
    (flag("kube-api-qps", "20"), flag("kube-api-burst", "30"))
}

/// Restarts kube-controller-manager with `qps` (None: the defaults).
pub(crate) fn restart_kcm(env: &Env, qps: Option<u32>) -> Res<()> {
    let pidfile = env.e2e_dir.join("k8s/kube-controller-manager.pid");
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "kube-controller" {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let t0 = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && t0.elapsed() < Duration::from_secs(15)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let (q, b) = qps
        .map(|q| (q.to_string(), (q * 3 / 2).to_string()))
        .unwrap_or_default();
    let envs: Vec<(&str, &str)> = if qps.is_some() {
        vec![("KCM_API_QPS", q.as_str()), ("KCM_API_BURST", b.as_str())]
    } else {
        vec![]
    };
    script(&env.repo, "cluster.sh", &["up"], &envs).map(|_| ())
}

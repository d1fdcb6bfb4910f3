//! Command line and environment. Every flag has an environment variable, as Kubernetes
//! manifests set them; NFS_SERVER and NFS_PATH match nfs-subdir-external-provisioner.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::nfs3::Nfs3Options;
use crate::plan::adopt::{AdoptConfigError, Adoption};

pub const DEFAULT_PROVISIONER: &str = "nfs3-provisioner.io/nfs";

#[derive(Parser, Debug)]
#[command(
    name = "nfs3-provisioner",
    version,
    about = "Dynamic NFS provisioner for Kubernetes that speaks NFSv3 from user space"
)]
pub struct Cli {
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch claims and provision or reclaim their directories.
    Run(RunArgs),
    /// Probe a share: create, chmod, rename and remove a directory, and report space.
    Check(CheckArgs),
    /// Compare our PVs with their shares: missing directories, orphans, old archives.
    Audit(AuditArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Talk NFSv3 to the server directly: no mount needed.
    Nfs3,
    /// Work on a share mounted at --mount-root.
    Mounted,
}

#[derive(Args, Debug, Clone)]
pub struct NfsArgs {
    /// AUTH_SYS uid the provisioner acts as on NFS servers.
    #[arg(long, env = "NFS_AUTH_UID", default_value_t = 0)]
    pub auth_uid: u32,
    /// AUTH_SYS gid the provisioner acts as on NFS servers.
    #[arg(long, env = "NFS_AUTH_GID", default_value_t = 0)]
    pub auth_gid: u32,
    /// Connect from a source port below 1024, for exports with `secure` (needs NET_BIND_SERVICE).
    #[arg(long, env = "NFS_PRIVILEGED_PORT", default_value_t = false)]
    pub privileged_port: bool,
    /// Deadline for each NFS call, in seconds.
    #[arg(long, env = "NFS_TIMEOUT_SECONDS", default_value_t = 10)]
    pub nfs_timeout_seconds: u64,
    /// NFS connections per share: the bound on concurrent calls to one server.
    #[arg(long, env = "NFS_CONNECTIONS_PER_SHARE", default_value_t = 8)]
    pub connections_per_share: usize,
    /// Portmapper port on NFS servers.
    #[arg(long, env = "NFS_PORTMAPPER_PORT", default_value_t = 111)]
    pub portmapper_port: u16,
}

impl NfsArgs {
    pub fn options(&self) -> Nfs3Options {
        Nfs3Options {
            uid: self.auth_uid,
            gid: self.auth_gid,
            privileged_port: self.privileged_port,
            timeout: Duration::from_secs(self.nfs_timeout_seconds.max(1)),
            max_connections: self.connections_per_share.max(1),
            portmapper_port: self.portmapper_port,
        }
    }
}

/// Volumes of another provisioner (nfs-subdir-external-provisioner) to reclaim as it
/// would have; see `plan::adopt`.
#[derive(Args, Debug, Clone, Default)]
pub struct AdoptArgs {
    /// Reclaim the released PVs whose `pv.kubernetes.io/provisioned-by` is this name, as
    /// nfs-subdir-external-provisioner would (repeat it, or a comma list).
    #[arg(
        long = "adopt-provisioned-by",
        env = "ADOPT_PROVISIONED_BY",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub provisioned_by: Vec<String>,
    /// The adopted provisioner's NFS_SERVER: adopted PVs must name this server.
    #[arg(
        long = "adopt-nfs-server",
        env = "ADOPT_NFS_SERVER",
        value_name = "SERVER"
    )]
    pub adopt_nfs_server: Option<String>,
    /// The adopted provisioner's NFS_PATH: adopted PVs' paths must lie inside it.
    #[arg(long = "adopt-nfs-path", env = "ADOPT_NFS_PATH", value_name = "PATH")]
    pub adopt_nfs_path: Option<String>,
}

impl AdoptArgs {
    /// What to adopt, `None` for nothing.
    pub fn adoption(&self) -> Result<Option<Adoption>, AdoptConfigError> {
        Adoption::new(
            &self.provisioned_by,
            self.adopt_nfs_server.as_deref(),
            self.adopt_nfs_path.as_deref(),
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The name StorageClasses give as `provisioner:`.
    #[arg(long, env = "PROVISIONER_NAME", default_value = DEFAULT_PROVISIONER)]
    pub provisioner_name: String,
    /// NFS server for classes that name none.
    #[arg(long, env = "NFS_SERVER")]
    pub nfs_server: Option<String>,
    /// Export path for classes that name none.
    #[arg(long, env = "NFS_PATH")]
    pub nfs_path: Option<String>,
    #[arg(long, env = "BACKEND", value_enum, default_value_t = BackendKind::Nfs3)]
    pub backend: BackendKind,
    /// Where the share is mounted, for the mounted backend.
    #[arg(long, env = "MOUNT_ROOT", default_value = "/persistentvolumes")]
    pub mount_root: PathBuf,
    #[command(flatten)]
    pub nfs: NfsArgs,
    /// Claims and volumes worked on at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,
    /// Clone copies run at once; more clone claims wait for a slot (each copy runs
    /// apart from the claim workers, which it never holds).
    #[arg(long, env = "MAX_CONCURRENT_CLONES", default_value_t = 2)]
    pub max_concurrent_clones: usize,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Act only while holding a Lease, so replicas can stand by.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    #[arg(long, env = "LEASE_NAME", default_value = "nfs3-provisioner")]
    pub lease_name: String,
    /// Namespace of the Lease (the pod's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This instance's identity in events and the Lease.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Seconds a Lease lasts without renewal; a standby takes over after this.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// On SIGTERM, how long reconciles under way may take to finish before the Lease
    /// is released and the process exits (keep it below the pod's grace period).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 20)]
    pub shutdown_timeout_seconds: u64,
    #[command(flatten)]
    pub adopt: AdoptArgs,
    /// Pause between passes of archive retention (classes with archiveRetention); each
    /// pass removes one archive at a time.
    #[arg(long, env = "ARCHIVE_RETENTION_INTERVAL", default_value = "10m", value_parser = crate::units::parse_age)]
    pub archive_retention_interval: Duration,
    /// How often every volume's usage is counted (10m, 1h, 30s); 0 turns the scan off.
    #[arg(long, env = "USAGE_SCAN_INTERVAL", default_value = "10m", value_parser = parse_interval)]
    pub usage_scan_interval: Duration,
    /// NFS calls a second the usage scan may make on each share; 0 for no limit.
    #[arg(long, env = "USAGE_SCAN_CALLS_PER_SECOND", default_value_t = 100)]
    pub usage_scan_calls_per_second: u32,
}

/// An age as `units::parse_age` reads it, or a bare 0 for "off".
fn parse_interval(raw: &str) -> Result<Duration, crate::units::DurationError> {
    if raw.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    crate::units::parse_age(raw)
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// NFS server (name or address).
    #[arg(long, env = "NFS_SERVER")]
    pub server: String,
    /// Export path.
    #[arg(long, env = "NFS_PATH")]
    pub share: String,
    #[command(flatten)]
    pub nfs: NfsArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    Yaml,
}

#[derive(Args, Debug, Clone)]
pub struct AuditArgs {
    /// Audit the PVs whose `pv.kubernetes.io/provisioned-by` is this name.
    #[arg(long, env = "PROVISIONER_NAME", default_value = DEFAULT_PROVISIONER)]
    pub provisioner_name: String,
    /// Also audit this server's share (pair each with a --share), even if no PV names it.
    #[arg(long = "server", value_name = "SERVER", requires = "shares")]
    pub servers: Vec<String>,
    /// Export path going with the --server at the same position.
    #[arg(long = "share", value_name = "PATH", requires = "servers")]
    pub shares: Vec<String>,
    /// List archives older than this (7d, 12h, 30m, 45s) as to prune.
    #[arg(long, value_name = "AGE", value_parser = crate::units::parse_age)]
    pub prune_archives_older_than: Option<Duration>,
    /// Really remove the archives listed as to prune (the default is a dry run).
    #[arg(long, requires = "prune_archives_older_than")]
    pub apply: bool,
    /// How to print the report.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Also count what each of our volumes holds (bytes, files, directories) against
    /// its capacity: walks every volume, so it takes longer.
    #[arg(long)]
    pub usage: bool,
    #[command(flatten)]
    pub nfs: NfsArgs,
    /// The adopted provisioner's PVs are audited too, on its share.
    #[command(flatten)]
    pub adopt: AdoptArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn adoption_flags_repeat_or_take_a_comma_list() {
        let cli = Cli::try_parse_from([
            "nfs3-provisioner",
            "run",
            "--adopt-provisioned-by",
            "a.io/x,b.io/y",
            "--adopt-provisioned-by",
            "c.io/z",
            "--adopt-nfs-server",
            "10.0.0.9",
            "--adopt-nfs-path",
            "/srv/nfs/",
            "--nfs-server",
            "10.0.0.5",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        let a = run.adopt.adoption().unwrap().unwrap();
        assert_eq!(a.provisioners, ["a.io/x", "b.io/y", "c.io/z"]);
        assert_eq!(
            (a.server.as_str(), a.share.as_str()),
            ("10.0.0.9", "/srv/nfs")
        );
        assert_eq!(run.nfs_server.as_deref(), Some("10.0.0.5"));

        let cli = Cli::try_parse_from([
            "nfs3-provisioner",
            "audit",
            "--adopt-provisioned-by",
            "a.io/x",
        ])
        .unwrap();
        let Command::Audit(audit) = cli.command else {
            panic!("audit")
        };
        assert!(audit.adopt.adoption().is_err(), "server and path needed");
    }
}

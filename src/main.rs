//! nfs3-provisioner: a Kubernetes dynamic provisioner that creates a directory per claim
//! on an NFS export, speaking NFSv3 from user space.
//!
//! `run` ([`run`]) watches claims and volumes; the work itself is in
//! [`controller::provision`] and [`controller::reclaim`], with the decisions in [`plan`].
#![forbid(unsafe_code)]

mod backend;
mod check;
mod config;
mod controller;
mod http;
mod leader;
mod metrics;
mod params;
mod path;
mod plan;
mod run;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use config::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Check(args) => check::check(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

//! nfs3-provisioner: a Kubernetes dynamic provisioner that creates a directory per claim
//! on an NFS export, speaking NFSv3 from user space. `ARCHITECTURE.md` is the tour.
//!
//! Layers, each using only the ones below it (`tests/layers.rs` keeps it so):
//!
//! 1. commands: `main`, [`config`] (flags), [`run`], [`check`], [`audit`];
//! 2. services of `run`: [`controller`] (caches and the two reconcilers, which carry
//!    out plans), [`leader`] (election), [`http`] (metrics and probes);
//! 3. [`plan`]: pure decisions, a complete provisioning or reclaim plan per object;
//! 4. what plans are made of and carried out with: [`params`] (class parameters) and
//!    [`backend`] (NFSv3, or a mounted share);
//! 5. leaves: [`path`] (safe paths, templates), [`units`], [`error`], [`metrics`],
//!    [`health`] (readiness state).
#![forbid(unsafe_code)]

// Commands.
pub mod audit;
pub mod check;
pub mod config;
pub mod run;

// Services.
pub mod controller;
pub mod http;
pub mod leader;

// Decisions.
pub mod plan;

// Parameters and backends.
pub mod backend;
pub mod params;

// Leaves.
pub mod error;
pub mod health;
pub mod metrics;
pub mod path;
pub mod units;

//! nfs3-provisioner: a Kubernetes dynamic provisioner that creates a directory per claim
//! on an NFS export, speaking NFSv3 from user space.
//!
//! `run` ([`run`]) watches claims and volumes; the work itself is in
//! [`controller::provision`] and [`controller::reclaim`], with the decisions in [`plan`].
#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod check;
pub mod config;
pub mod controller;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod params;
pub mod path;
pub mod plan;
pub mod run;

//! Leader election on a coordination.k8s.io Lease, through kube-lease-manager (server-side
//! apply makes two holders impossible). Only the holder provisions or deletes.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

pub struct Lease {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration_seconds: u64,
}

/// Starts competing for the Lease; the receiver says whether we hold it now.
pub async fn elect(
    client: Client,
    lease: &Lease,
) -> Result<watch::Receiver<bool>, LeaseManagerError> {
    let duration = lease.duration_seconds.max(2);
    // Renew a third of the way before expiry, so a slow API call does not lose the lease.
    let grace = (duration / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await?;
    let (rx, _task) = manager.watch().await;
    Ok(rx)
}

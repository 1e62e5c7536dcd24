//! Leader election through the controller's Lease (kube-lease-manager), with
//! one thing added. The crate's standby sleeps until the holder's lease would
//! expire, even when the holder released it on its way out, so every planned
//! handover (a deleted Pod, a rolling update) left no controller acting for up
//! to a lease period (30 s): the gap faults.md A6 says must be seconds. Here
//! the standby also watches the Lease, and when it sees it released, it
//! starts a fresh manager, whose first step takes a free Lease at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Error, LeaderElection};

/// Fresh managers are started at most this often: a Lease that shows as free
/// but cannot be taken (say, RBAC) must not make a hot loop.
const RESTART_FLOOR: Duration = Duration::from_secs(1);

/// The held lease: `rx` turns false when it is lost; dropping both releases it.
pub struct Leadership {
    pub rx: watch::Receiver<bool>,
    pub handle: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Waits until this process holds the Lease (`Some`), or until shutdown
/// (`None`). `ready` is set once the Lease is reachable: a standby is ready.
pub async fn lead(
    client: &Client,
    le: &LeaderElection,
    shutdown: &CancellationToken,
    ready: &AtomicBool,
) -> Result<Option<Leadership>, Error> {
    let lease_err = |message: String| Error::Lease {
        namespace: le.namespace.clone(),
        lease: le.lease.clone(),
        message,
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &le.namespace);
    loop {
        let started = tokio::time::Instant::now();
        let manager = LeaseManagerBuilder::new(client.clone(), &le.lease)
            .with_namespace(&le.namespace)
            .with_identity(&le.identity)
            .build()
            .await
            .map_err(|e| lease_err(e.to_string()))?;
        let (mut rx, handle) = manager.watch().await;
        ready.store(true, Ordering::Relaxed);
        info!(lease = %le.lease, identity = %le.identity, "waiting to lead");
        let released = released(leases.clone(), le.lease.clone());
        tokio::pin!(released);
        loop {
            if *rx.borrow_and_update() {
                return Ok(Some(Leadership { rx, handle }));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                changed = rx.changed() => if changed.is_err() {
                    return Err(lease_err("the lease manager stopped".into()));
                },
                () = &mut released => break,
            }
        }
        // The old manager's watcher ends on its closed channel (it holds
        // nothing, so it releases nothing of anyone's).
        drop(rx);
        let _ = handle.await;
        info!(lease = %le.lease, "the Lease was released: trying to take it now");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep_until(started + RESTART_FLOOR) => {}
        }
    }
}

/// Resolves when the Lease, once seen held, is seen with no holder: a
/// release. A Lease free from the start is the lease manager's to take (its
/// first step does); reacting to that too would restart the manager before it
/// could, every second, and nobody would lead. Watch errors are retried with
/// the watcher's default back-off: this only hastens a takeover that the
/// lease manager makes anyway at expiry.
async fn released(leases: Api<Lease>, name: String) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(kube::runtime::WatchStreamExt::default_backoff(
        watcher::watcher(leases, config)
    ));
    let mut seen_held = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                if !is_free(&l) {
                    seen_held = true;
                } else if seen_held {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "watching the Lease"),
        }
    }
    futures::future::pending::<()>().await
}

fn is_free(l: &Lease) -> bool {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn lease(holder: Option<&str>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_with_no_holder_is_free_and_a_held_one_is_not() {
        assert!(is_free(&lease(None)));
        assert!(is_free(&lease(Some(""))));
        assert!(is_free(&Lease::default()));
        assert!(!is_free(&lease(Some("pod-a"))));
    }
}

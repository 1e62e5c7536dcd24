//! kube-runtime wiring: watch every CustomRun (and legacy Run), pick out
//! this controller's, and reconcile each by starting or observing its task.
//! Reconcile never runs a step inline: kube-runtime never reconciles one
//! object twice at once, so an inline step would block its own cancel.

pub mod health;
pub mod reconcile;
pub mod secrets;
pub mod status;
pub mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::Flavor;
use crate::step::Pace;
use crate::step::locks::ImageLocks;
use status::StatusWriter;
use task::StopCause;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the {0} API is not served by this cluster: install Tekton Pipelines (CustomRun needs v0.43 or later)"
    )]
    ApiMissing(&'static str),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Status(#[from] status::StatusError),
    #[error("leader election on Lease {namespace}/{lease}: {message}")]
    Lease {
        namespace: String,
        lease: String,
        message: String,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the private per-connection directories are made (an emptyDir in a pod).
    pub tmp_dir: PathBuf,
    /// At most one progress write per run per interval.
    pub status_interval: Duration,
    /// Deadline of read calls to the peer site: how fast a dead peer is reported.
    pub peer_timeout: Duration,
    pub pace: Pace,
    /// Reconciles run at once (0: unbounded).
    pub concurrency: u16,
    /// Only runs whose labels match.
    pub label_selector: Option<String>,
    /// Leader election through a Lease in this namespace (None: no election).
    pub leader_election: Option<LeaderElection>,
    /// Where `/healthz` and `/readyz` listen (None: nowhere).
    pub health_addr: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tmp_dir: std::env::temp_dir(),
            status_interval: Duration::from_secs(2),
            peer_timeout: Duration::from_secs(10),
            pace: Pace::default(),
            concurrency: 16,
            label_selector: None,
            leader_election: None,
            health_addr: None,
        }
    }
}

type RunKey = (Flavor, String, String);

struct TaskHandle {
    id: u64,
    token: CancellationToken,
    cause: Arc<Mutex<Option<StopCause>>>,
}

pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub locks: Arc<ImageLocks>,
    pub recorder: Recorder,
    tasks: Mutex<HashMap<RunKey, TaskHandle>>,
    next_id: AtomicU64,
}

impl Context {
    pub fn new(client: kube::Client, config: Config) -> Arc<Context> {
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), "rbd-mirror-step".into()),
            client,
            config,
            locks: Arc::new(ImageLocks::default()),
            tasks: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    fn has_task(&self, flavor: Flavor, ns: &str, name: &str) -> bool {
        self.tasks
            .lock()
            .expect("tasks")
            .contains_key(&(flavor, ns.into(), name.into()))
    }

    /// Starts the run's task unless one is running; true when it started one.
    /// The task writes through `writer`, which may already know the run.
    fn ensure_task(self: &Arc<Self>, writer: Arc<StatusWriter>) -> bool {
        let (flavor, ns, name) = writer.key();
        let key = (flavor, ns.to_string(), name.to_string());
        let mut tasks = self.tasks.lock().expect("tasks");
        if tasks.contains_key(&key) {
            return false;
        }
        let handle = TaskHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            token: CancellationToken::new(),
            cause: Arc::new(Mutex::new(None)),
        };
        let spec = task::TaskSpec {
            id: handle.id,
            token: handle.token.clone(),
            cause: handle.cause.clone(),
            writer,
        };
        tasks.insert(key, handle);
        tokio::spawn(task::run(self.clone(), spec));
        true
    }

    /// Tells a running task to stop; false when there is none.
    fn stop_task(&self, flavor: Flavor, ns: &str, name: &str, cause: StopCause) -> bool {
        let tasks = self.tasks.lock().expect("tasks");
        match tasks.get(&(flavor, ns.into(), name.into())) {
            Some(h) => {
                h.cause.lock().expect("cause").get_or_insert(cause);
                h.token.cancel();
                true
            }
            None => false,
        }
    }

    fn forget(&self, flavor: Flavor, ns: &str, name: &str, id: u64) {
        let mut tasks = self.tasks.lock().expect("tasks");
        let key = (flavor, ns.to_string(), name.to_string());
        if tasks.get(&key).is_some_and(|h| h.id == id) {
            tasks.remove(&key);
        }
    }

    pub fn running_tasks(&self) -> usize {
        self.tasks.lock().expect("tasks").len()
    }
}

async fn served(client: &kube::Client, flavor: Flavor) -> bool {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &flavor.api_resource());
    api.list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .is_ok()
}

async fn controller_for(ctx: Arc<Context>, flavor: Flavor, shutdown: CancellationToken) {
    let ar = flavor.api_resource();
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ar);
    // Watch every run: there is no server-side filter on customRef, so
    // foreign runs are dropped in reconcile, cheaply.
    let mut wc = watcher::Config::default().any_semantic();
    if let Some(sel) = &ctx.config.label_selector {
        wc = wc.labels(sel);
    }
    Controller::new_with(api, wc, ar)
        .with_config(ControllerConfig::default().concurrency(ctx.config.concurrency))
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(
            move |obj, ctx| reconcile::reconcile(obj, ctx, flavor),
            reconcile::error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                match e {
                    kube::runtime::controller::Error::ReconcilerFailed(err, obj) => {
                        warn!(run = %obj, error = %err, "reconcile failed; retrying")
                    }
                    other => warn!(error = %other, "controller stream"),
                }
            }
        })
        .await;
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run(client: kube::Client, config: Config) -> Result<(), Error> {
    let swept = crate::ceph::connection::sweep_stale(&config.tmp_dir);
    if swept > 0 {
        info!(swept, dir = %config.tmp_dir.display(), "removed stale connection directories");
    }
    if !served(&client, Flavor::CustomRun).await {
        return Err(Error::ApiMissing("tekton.dev/v1beta1 CustomRun"));
    }
    let legacy = served(&client, Flavor::Run).await;
    let health = Arc::new(health::Health::default());
    if let Some(addr) = config.health_addr {
        tokio::spawn(health::serve(addr, health.clone()));
    }
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutting down");
            shutdown.cancel();
        });
    }
    // Only the lease holder acts: two replicas must never both run a step.
    // A replica that loses the lease exits; the next leader resumes every
    // run from its status.
    let mut leadership = None;
    if let Some(le) = &config.leader_election {
        let lease_err = |message: String| Error::Lease {
            namespace: le.namespace.clone(),
            lease: le.lease.clone(),
            message,
        };
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &le.lease)
            .with_namespace(&le.namespace)
            .with_identity(&le.identity)
            .build()
            .await
            .map_err(|e| lease_err(e.to_string()))?;
        let (mut rx, handle) = manager.watch().await;
        health.ready.store(true, Ordering::Relaxed);
        info!(lease = %le.lease, identity = %le.identity, "waiting to lead");
        while !*rx.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = rx.changed() => if changed.is_err() {
                    return Err(lease_err("the lease manager stopped".into()));
                }
            }
        }
        info!("leading");
        leadership = Some((rx, handle));
    }
    let ctx = Context::new(client, config);
    health.ready.store(true, Ordering::Relaxed);
    info!(legacy_run = legacy, "controller started");
    let lost = async {
        match &mut leadership {
            Some((rx, _)) => loop {
                if rx.changed().await.is_err() || !*rx.borrow_and_update() {
                    return;
                }
            },
            None => futures::future::pending().await,
        }
    };
    let controllers = async {
        let custom = controller_for(ctx.clone(), Flavor::CustomRun, shutdown.clone());
        if legacy {
            futures::join!(
                custom,
                controller_for(ctx.clone(), Flavor::Run, shutdown.clone())
            );
        } else {
            custom.await;
        }
    };
    let lost_lease = tokio::select! {
        _ = controllers => false,
        _ = lost => true,
    };
    if lost_lease {
        error!("lost the leader lease: exiting so that no step runs twice");
        return Err(Error::Lease {
            namespace: String::new(),
            lease: String::new(),
            message: "lost the lease".into(),
        });
    }
    if let Some((rx, handle)) = leadership {
        drop(rx);
        if let Ok(Ok(manager)) = handle.await {
            let _ = manager.release().await;
        }
    }
    // Steps in flight are not cancelled: their runs resume from their status
    // when a controller starts again (children die with this process).
    if ctx.running_tasks() > 0 {
        info!(
            tasks = ctx.running_tasks(),
            "leaving running steps to be resumed"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                futures::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

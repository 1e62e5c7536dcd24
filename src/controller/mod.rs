//! kube-runtime wiring: watch every CustomRun (and legacy Run), pick out
//! this controller's, and reconcile each by starting or observing its task.
//! Reconcile never runs a step inline: kube-runtime never reconciles one
//! object twice at once, so an inline step would block its own cancel.

pub mod access;
pub mod health;
pub mod leadership;
pub mod owner;
pub mod pvcs;
pub mod reconcile;
pub mod secrets;
pub mod status;
pub mod task;
pub mod tasks;
mod watch_backoff;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::Flavor;
use crate::step::Pace;
use crate::step::locks::ImageLocks;
use status::StatusWriter;
use tasks::{StopCause, TaskKey, TaskTable};
use watch_backoff::WatchBackoff;

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
    #[error("cannot make this process's directory for keyrings in {dir}: {message}")]
    TmpDir { dir: String, message: String },
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
    /// ceph-csi's config ConfigMap, for volumes that do not carry their
    /// RADOS namespace (older ceph-csi). None: such volumes have none.
    pub ceph_csi_config: Option<pvcs::CsiConfigRef>,
    /// Namespaces whose Rook objects a run may name as `cluster:
    /// <namespace>/<secret>` (an admin opt-in: Rook's Secrets carry no label).
    pub ceph_namespaces: Vec<String>,
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
            ceph_csi_config: None,
            ceph_namespaces: vec![],
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub locks: Arc<ImageLocks>,
    /// Cluster fsids by monitor set: part of every image lock key.
    pub fsids: crate::ceph::fsid::FsidCache,
    pub recorder: Recorder,
    tasks: Arc<TaskTable>,
    /// This process, as run owners are recorded (owner.rs).
    pub instance: String,
}

impl Context {
    pub fn new(client: kube::Client, config: Config) -> Arc<Context> {
        let instance =
            owner::instance_id(config.leader_election.as_ref().map(|l| l.identity.as_str()));
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), "rbd-mirror-step".into()),
            client,
            config,
            locks: Arc::new(ImageLocks::default()),
            fsids: Default::default(),
            tasks: Arc::new(TaskTable::default()),
            instance,
        })
    }

    fn has_task(&self, flavor: Flavor, uid: &str) -> bool {
        self.tasks.contains(&TaskKey {
            flavor,
            uid: uid.into(),
        })
    }

    /// Starts the run's task unless one is running; true when it started one.
    /// The task writes through `writer`, which may already know the run.
    fn ensure_task(self: &Arc<Self>, writer: Arc<StatusWriter>) -> bool {
        let (flavor, ns, name) = writer.key();
        // Reconcile hands in runs read from the API server, which all have one.
        let Some(uid) = writer.uid() else {
            warn!(namespace = %ns, name = %name, "a run without a uid: not started");
            return false;
        };
        let span = tracing::info_span!("run", namespace = %ns, name = %name, kind = flavor.kind(), uid = %uid);
        let (ns, name) = (ns.to_string(), name.to_string());
        let (ctx, panic_ctx, panic_writer) = (self.clone(), self.clone(), writer.clone());
        self.tasks.start(
            TaskKey { flavor, uid },
            &ns,
            &name,
            span,
            move |s| {
                task::run(
                    ctx,
                    task::TaskSpec {
                        stopper: s.stopper,
                        writer,
                    },
                )
            },
            move |message| async move {
                task::fail_after_panic(&panic_ctx, &panic_writer, &message).await
            },
        )
    }

    /// Tells a running task to stop; false when there is none.
    fn stop_task(&self, flavor: Flavor, uid: &str, cause: StopCause) -> bool {
        self.tasks.stop(
            &TaskKey {
                flavor,
                uid: uid.into(),
            },
            cause,
        )
    }

    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    pub fn stop_all(&self, cause: StopCause) {
        self.tasks.stop_all(cause)
    }
}

/// Whether the run `namespace/name` with `uid` no longer exists. A failed
/// read is not proof: the task's own writes will find out.
async fn run_gone(ctx: &Context, flavor: Flavor, namespace: &str, name: &str, uid: &str) -> bool {
    let api: Api<PartialObjectMeta<DynamicObject>> =
        Api::namespaced_with(ctx.client.clone(), namespace, &flavor.api_resource());
    match api.get_metadata_opt(name).await {
        Ok(None) => true,
        Ok(Some(m)) => m.metadata.uid.as_deref() != Some(uid),
        Err(e) => {
            warn!(namespace, name, error = %e, "cannot tell whether a run was deleted");
            false
        }
    }
}

/// Stops the task of a run once it is deleted. The controller's own watch
/// only reconciles objects that still exist, so deletions are watched here
/// (metadata only). Each deletion is confirmed by a read, because a label
/// change that takes a run out of the selector looks the same.
async fn watch_deletions(ctx: Arc<Context>, flavor: Flavor, wc: watcher::Config) {
    let api: Api<PartialObjectMeta<DynamicObject>> =
        Api::all_with(ctx.client.clone(), &flavor.api_resource());
    let mut listing: Option<(std::time::Instant, HashSet<String>)> = None;
    let mut events = std::pin::pin!(watcher(api, wc).backoff(WatchBackoff::default()));
    while let Some(ev) = events.next().await {
        let gone: Vec<(String, String, String)> = match ev {
            Ok(watcher::Event::Delete(m)) => {
                let meta = m.metadata;
                match (meta.namespace, meta.name, meta.uid) {
                    (Some(ns), Some(name), Some(uid)) => vec![(ns, name, uid)],
                    _ => vec![],
                }
            }
            Ok(watcher::Event::Init) => {
                listing = Some((std::time::Instant::now(), HashSet::new()));
                vec![]
            }
            Ok(watcher::Event::InitApply(m)) => {
                if let (Some((_, live)), Some(uid)) = (&mut listing, m.metadata.uid) {
                    live.insert(uid);
                }
                vec![]
            }
            // A relist: deletions while the watch was down have no event.
            // Only tasks older than the list can be judged by it.
            Ok(watcher::Event::InitDone) => match listing.take() {
                Some((at, live)) => ctx.tasks.missing(flavor, &live, at),
                None => vec![],
            },
            Ok(watcher::Event::Apply(_)) => vec![],
            Err(e) => {
                warn!(error = %e, kind = flavor.kind(), "watching deletions");
                vec![]
            }
        };
        for (ns, name, uid) in gone {
            let key = TaskKey {
                flavor,
                uid: uid.clone(),
            };
            if ctx.tasks.contains(&key) && run_gone(&ctx, flavor, &ns, &name, &uid).await {
                info!(namespace = %ns, name = %name, uid = %uid, "run deleted: stopping its task");
                ctx.tasks.stop(&key, StopCause::Deleted);
            }
        }
    }
}

/// Whether the API server serves `flavor`'s resource. Only a 404 says no:
/// an API server that does not answer (restarting, unreachable) is asked
/// again, with a growing pause, until it does, so that a controller started
/// while its API server restarts waits for it instead of exiting with a
/// wrong diagnosis.
async fn served(client: &kube::Client, flavor: Flavor) -> bool {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &flavor.api_resource());
    let mut pause = Duration::from_millis(500);
    loop {
        match api
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await
        {
            Ok(_) => return true,
            Err(kube::Error::Api(e)) if e.code == 404 => return false,
            Err(e) => {
                warn!(error = %e, retry_in = ?pause, "the API server did not answer whether it serves {}", flavor.kind());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
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
    let deletions = watch_deletions(ctx.clone(), flavor, wc.clone());
    let nf_ctx = ctx.clone();
    let controller = Controller::new_with(api, wc, ar)
        .with_config(ControllerConfig::default().concurrency(ctx.config.concurrency))
        .trigger_backoff(WatchBackoff::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(
            move |obj, ctx| reconcile::reconcile(obj, ctx, flavor),
            reconcile::error_policy,
            ctx,
        )
        .for_each(move |res| {
            let ctx = nf_ctx.clone();
            async move {
                match res {
                    Ok(_) => {}
                    Err(kube::runtime::controller::Error::ReconcilerFailed(err, obj)) => {
                        warn!(run = %obj, error = %crate::redact::message(&err.to_string()), "reconcile failed; retrying")
                    }
                    // A requeued run that is no longer there: a backstop
                    // for a deletion the deletion watch did not report.
                    Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                        let (ns, name) =
                            (obj.namespace.clone().unwrap_or_default(), obj.name.clone());
                        if let Some(uid) = obj.extra.uid.clone()
                            && ctx.has_task(flavor, &uid)
                            && run_gone(&ctx, flavor, &ns, &name, &uid).await
                        {
                            info!(namespace = %ns, name = %name, "run deleted: stopping its task");
                            ctx.stop_task(flavor, &uid, StopCause::Deleted);
                        }
                    }
                    Err(other) => warn!(error = %other, "controller stream"),
                }
            }
        });
    // The deletion watch never ends by itself: it stops with the controller.
    tokio::select! {
        _ = controller => {}
        _ = deletions => {}
    }
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run(client: kube::Client, mut config: Config) -> Result<(), Error> {
    let swept = crate::ceph::connection::sweep_stale(&config.tmp_dir);
    if swept > 0 {
        info!(swept, dir = %config.tmp_dir.display(), "removed stale connection directories");
    }
    // Held until this function returns; a killed process leaves it for the
    // next one's sweep.
    let owner =
        crate::ceph::connection::OwnerDir::create(&config.tmp_dir).map_err(|e| Error::TmpDir {
            dir: config.tmp_dir.display().to_string(),
            message: e.to_string(),
        })?;
    config.tmp_dir = owner.path().to_path_buf();
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
        match leadership::lead(&client, le, &shutdown, &health.ready).await? {
            Some(l) => leadership = Some(l),
            None => return Ok(()),
        }
        info!("leading");
    }
    let ctx = Context::new(client, config);
    health.ready.store(true, Ordering::Relaxed);
    info!(legacy_run = legacy, "controller started");
    let lost = async {
        match &mut leadership {
            Some(leadership::Leadership { rx, .. }) => loop {
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
    // Whatever the reason, no new mutation starts from here, and the ones
    // running are waited for: a demote or promote cut half-way (the
    // children die with this process) is the one thing a restart cannot
    // repair. The runs resume from their status under the next owner.
    ctx.stop_all(StopCause::Shutdown);
    drain(&ctx).await;
    if lost_lease {
        error!("lost the leader lease: exiting so that no step runs twice");
        return Err(Error::Lease {
            namespace: String::new(),
            lease: String::new(),
            message: "lost the lease".into(),
        });
    }
    if let Some(leadership::Leadership { rx, handle }) = leadership {
        drop(rx);
        if let Ok(Ok(manager)) = handle.await {
            let _ = manager.release().await;
        }
    }
    Ok(())
}

/// How long a stopping controller waits for its mutations and last status
/// writes: inside the Deployment's terminationGracePeriodSeconds (30).
const DRAIN: Duration = Duration::from_secs(25);

/// Waits until no mutating `rbd` runs and every task has written its
/// progress, at most `DRAIN`.
async fn drain(ctx: &Context) {
    let deadline = tokio::time::Instant::now() + DRAIN;
    loop {
        let (mutations, tasks) = (crate::ceph::cli::mutations_in_flight(), ctx.running_tasks());
        if mutations == 0 && tasks == 0 {
            info!("stopped: no mutation in flight");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                mutations,
                tasks, "stopping with work in flight; its runs resume from their status"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

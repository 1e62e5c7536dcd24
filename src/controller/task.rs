//! One task per running run. It owns the run from its first attempt to its
//! final status: reads the Secrets, takes the image locks, executes the
//! step, checkpoints progress (throttled), and writes success, failure,
//! retry, timeout or cancel. Reconcile only starts it, or stops it with a cause.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::events::{Event, EventType};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::Context;
use super::secrets::read_connection;
use super::status::{StatusWriter, unless_done};
use crate::api::{Action, Flavor, RunStatus, TektonRun};
use crate::ceph::connection::{Connection, materialize};
use crate::ceph::{Ceph, ImageSpec};
use crate::contract;
use crate::step::execute::mirror_images;
use crate::step::outcome::{results, summary};
use crate::step::{
    Checkpoint, Execution, Failure, Progress, Reason, ResolvedStep, Selection, Sites, StepEnd,
    execute,
};

/// Why a task was told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    Cancelled,
    TimedOut,
}

/// What this controller keeps in the run's `status.extraFields`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Extra {
    pub step: Option<ResolvedStep>,
    #[serde(default)]
    pub progress: Progress,
}

impl Extra {
    pub fn of(status: &RunStatus) -> Extra {
        status
            .extra_fields
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    pub fn store(&self, status: &mut RunStatus) {
        status.extra_fields = Some(json!({"step": self.step, "progress": self.progress}));
    }
}

pub fn verb(action: Action) -> &'static str {
    match action {
        Action::Status => "checked",
        Action::Demote => "demoted",
        Action::Promote => "promoted",
        Action::Resync => "resynced",
    }
}

/// The message of a running or finished run: progress, and what it waits for.
fn message(step: &ResolvedStep, images: usize, progress: &Progress) -> String {
    summary(verb(step.action), images, progress)
}

fn image_count(step: &ResolvedStep, progress: &Progress) -> usize {
    match &step.selection {
        Selection::Images(l) => l.len(),
        Selection::AllImages => progress.images.as_ref().map_or(0, Vec::len),
    }
}

/// The run a task owns is the one its `writer` writes.
pub struct TaskSpec {
    pub id: u64,
    pub token: CancellationToken,
    pub cause: Arc<Mutex<Option<StopCause>>>,
    pub writer: Arc<StatusWriter>,
}

pub async fn run(ctx: Arc<Context>, t: TaskSpec) {
    let (flavor, namespace, name) = t.writer.key();
    let span =
        tracing::info_span!("run", namespace = %namespace, name = %name, kind = flavor.kind());
    async {
        if let Err(e) = attempts(&ctx, &t).await {
            warn!(error = %e, "task ended without writing a final status; reconcile will resume it");
        }
        ctx.forget(flavor, namespace, name, t.id);
    }
    .instrument(span)
    .await
}

async fn attempts(ctx: &Arc<Context>, t: &TaskSpec) -> Result<(), super::status::StatusError> {
    let writer = t.writer.clone();
    loop {
        // Right after this controller's own write (the start, a retry) that
        // write is the run; otherwise it is read.
        let run = writer.current().await?;
        if contract::is_done(&run.status) {
            return Ok(());
        }
        let extra = Extra::of(&run.status);
        let Some(step) = extra.step.clone() else {
            writer
                .fail_invalid("the run's resolved step is missing from status.extraFields")
                .await?;
            return Ok(());
        };
        let timeout = contract::timeout(&run).ok().flatten();
        let deadline = contract::deadline(&run, timeout);
        let attempt_token = t.token.child_token();
        let timer = deadline.map(|d| {
            let (token, cause) = (attempt_token.clone(), t.cause.clone());
            tokio::spawn(async move {
                let wait = d.duration_since(Timestamp::now());
                let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
                cause
                    .lock()
                    .expect("cause")
                    .get_or_insert(StopCause::TimedOut);
                token.cancel();
            })
        });
        let progress = Arc::new(Mutex::new(extra.progress.clone()));
        let started = std::time::Instant::now();
        let exec = attempt(
            ctx,
            &run,
            &step,
            progress.clone(),
            attempt_token.clone(),
            writer.clone(),
        )
        .await;
        if let Some(timer) = timer {
            timer.abort();
        }
        let exec = match exec {
            Ok(e) => e,
            Err(f) => Execution {
                end: if t.token.is_cancelled() || attempt_token.is_cancelled() {
                    StepEnd::Stopped
                } else {
                    StepEnd::Failed(f)
                },
                progress: progress.lock().expect("progress").clone(),
                images: vec![],
                elapsed: started.elapsed(),
            },
        };
        let cause = t.cause.lock().expect("cause").take();
        let retried = finish(ctx, &writer, &step, exec, cause).await?;
        if !retried {
            return Ok(());
        }
        info!("starting the next attempt");
    }
}

/// Writes the attempt's end; returns true when a new attempt was started.
async fn finish(
    ctx: &Arc<Context>,
    writer: &StatusWriter,
    step: &ResolvedStep,
    exec: Execution,
    cause: Option<StopCause>,
) -> Result<bool, super::status::StatusError> {
    let (flavor, _, _) = writer.key();
    if let StepEnd::Lost(owner) = &exec.end {
        // Another process owns the run: anything written now could undo
        // what it wrote.
        warn!(owner = %owner, "the run is owned by another controller: stopping without writing");
        return Ok(false);
    }
    let images = if exec.images.is_empty() {
        exec.progress
            .images
            .clone()
            .unwrap_or_else(|| step.images().iter().map(ImageSpec::to_string).collect())
    } else {
        exec.images.clone()
    };
    let res = results(&images, &exec.progress, exec.elapsed);
    let msg = message(step, images.len(), &exec.progress);
    let mut retried = false;
    let written = writer
        .update(|run| {
            retried = false;
            unless_done(run, |s| {
                let now = Timestamp::now();
                let mut extra = Extra::of(s);
                extra.progress = exec.progress.clone();
                extra.step = Some(step.clone());
                extra.store(s);
                match (&exec.end, cause) {
                    (StepEnd::Succeeded, _) => contract::succeed(s, now, &msg, res.clone()),
                    (StepEnd::Failed(f), _)
                        if f.reason.retryable() && contract::retries_left(run) =>
                    {
                        retried = true;
                        contract::retry(
                            s,
                            now,
                            f.reason.as_str(),
                            &format!("{}; {msg}", f.message),
                            res.clone(),
                        );
                    }
                    (StepEnd::Failed(f), _) => contract::fail(
                        s,
                        now,
                        f.reason.as_str(),
                        &format!("{}; {msg}", f.message),
                        res.clone(),
                    ),
                    (StepEnd::Stopped, Some(StopCause::TimedOut))
                        if flavor == Flavor::CustomRun && contract::retries_left(run) =>
                    {
                        retried = true;
                        contract::retry(
                            s,
                            now,
                            contract::reason_timed_out(flavor),
                            &format!("attempt timed out; {msg}"),
                            res.clone(),
                        );
                    }
                    (StepEnd::Stopped, Some(StopCause::TimedOut)) => contract::time_out(
                        s,
                        flavor,
                        now,
                        &format!(
                            "{} timed out ({}); {msg}",
                            flavor.kind(),
                            run.spec.timeout.as_deref().unwrap_or("60m default")
                        ),
                        res.clone(),
                    ),
                    (StepEnd::Stopped, _) if run.is_cancelled() => {
                        let why = run
                            .spec
                            .status_message
                            .clone()
                            .unwrap_or_else(|| "cancelled".into());
                        contract::cancel(s, flavor, now, &format!("{why}; {msg}"), res.clone())
                    }
                    // Stopped for no reason the run shows (the controller is
                    // shutting down): progress is recorded, the run resumes later.
                    (StepEnd::Stopped, _) | (StepEnd::Lost(_), _) => {}
                }
            })
        })
        .await?;
    let cond = contract::succeeded_condition(&written.status)
        .cloned()
        .unwrap_or_default();
    info!(status = %cond.status, reason = cond.reason.as_deref().unwrap_or(""), message = cond.message.as_deref().unwrap_or(""), "attempt ended");
    if !exec.progress.forced.is_empty() {
        let note: Vec<String> = exec
            .progress
            .forced
            .iter()
            .map(|(i, w)| format!("{i} (last sync {w})"))
            .collect();
        ctx.event(
            &written,
            EventType::Warning,
            "ForcedPromotion",
            &format!(
                "force-promoted on {}: writes after the last sync are lost: {}",
                step.cluster,
                note.join(", ")
            ),
        )
        .await;
    }
    Ok(retried)
}

/// Writes progress to the run: on demand for write-ahead records, and from
/// a ticker for the rest (at most one write per interval, whatever N is).
struct RunCheckpoint {
    writer: Arc<StatusWriter>,
    step: ResolvedStep,
    progress: Arc<Mutex<Progress>>,
    last: Mutex<Option<Progress>>,
}

impl RunCheckpoint {
    async fn write(&self) -> Result<(), String> {
        let p = self.progress.lock().expect("progress").clone();
        if self.last.lock().expect("last").as_ref() == Some(&p) {
            return Ok(());
        }
        let msg = message(&self.step, image_count(&self.step, &p), &p);
        self.writer
            .update(|run| {
                unless_done(run, |s| {
                    let mut extra = Extra::of(s);
                    extra.progress = p.clone();
                    extra.store(s);
                    contract::progress(s, Timestamp::now(), &msg);
                })
            })
            .await
            .map_err(|e| e.to_string())?;
        *self.last.lock().expect("last") = Some(p);
        Ok(())
    }
}

impl Checkpoint for RunCheckpoint {
    async fn save(&self, _progress: &Progress, durable: bool) -> Result<(), String> {
        if durable { self.write().await } else { Ok(()) }
    }
}

impl Checkpoint for Arc<RunCheckpoint> {
    async fn save(&self, progress: &Progress, durable: bool) -> Result<(), String> {
        self.as_ref().save(progress, durable).await
    }
}

async fn connect(ctx: &Context, run: &TektonRun, secret: &str) -> Result<Connection, Failure> {
    let sa = run
        .spec
        .service_account_name
        .as_deref()
        .unwrap_or("default");
    let data = read_connection(&ctx.client, run.namespace(), sa, secret).await?;
    materialize(secret, &data, &ctx.config.tmp_dir)
        .map_err(|e| Failure::new(Reason::InvalidSecret, e.to_string()))
}

async fn attempt(
    ctx: &Arc<Context>,
    run: &TektonRun,
    step: &ResolvedStep,
    progress: Arc<Mutex<Progress>>,
    token: CancellationToken,
    writer: Arc<StatusWriter>,
) -> Result<Execution, Failure> {
    let (local, peer) = tokio::join!(connect(ctx, run, &step.cluster), async {
        match &step.peer_cluster {
            Some(p) => connect(ctx, run, p).await.map(Some),
            None => Ok(None),
        }
    });
    let (local, peer) = (local?, peer?);
    let peer_cli = peer.as_ref().map(|c| {
        let mut cli = c.rbd();
        cli.read_timeout = ctx.config.peer_timeout;
        cli
    });
    let sites = Sites {
        local: local.rbd(),
        local_name: step.cluster.clone(),
        peer: peer_cli,
        peer_name: step.peer_cluster.clone(),
    };

    // Every image is known before any is touched, so all can be locked at once.
    let images: Vec<String> = match &step.selection {
        Selection::Images(l) => l.iter().map(|i| i.0.clone()).collect(),
        Selection::AllImages => {
            let known = progress.lock().expect("progress").images.clone();
            match known {
                Some(l) => l,
                None => {
                    let list = tokio::select! {
                        _ = token.cancelled() => return Err(Failure::new(Reason::CephError, "stopped")),
                        r = mirror_images(step, &sites.local, &step.cluster) => r?,
                    };
                    progress.lock().expect("progress").images = Some(list.clone());
                    list
                }
            }
        }
    };
    let checkpoint = Arc::new(RunCheckpoint {
        writer,
        step: step.clone(),
        progress: progress.clone(),
        last: Mutex::new(None),
    });
    let ticker = {
        let (cp, interval) = (checkpoint.clone(), ctx.config.status_interval);
        tokio::spawn(async move {
            // The first write waits an interval: a short step needs none.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = cp.write().await {
                    warn!(error = %e, "progress not written");
                }
            }
        })
    };
    let _ticker = AbortOnDrop(ticker);

    let keys: Vec<String> = images
        .iter()
        .map(|i| format!("{}/{}/{i}", run.namespace(), step.cluster))
        .collect();
    let owner = format!("{}/{}", run.namespace(), run.name());
    let held = tokio::select! {
        _ = token.cancelled() => return Err(Failure::new(Reason::CephError, "stopped")),
        h = ctx.locks.acquire(&keys, &owner, |key, holder| {
            let image = key.rsplit_once(&format!("{}/", step.cluster)).map_or(key, |(_, i)| i);
            progress.lock().expect("progress").waiting =
                Some(format!("waiting for run {holder}, which is acting on {image}"));
        }) => h,
    };
    progress.lock().expect("progress").waiting = None;
    let exec = execute(step, &sites, progress, token, &checkpoint, ctx.config.pace).await;
    // The final status write (finish) carries the progress: no write here.
    drop(held);
    drop((local, peer));
    Ok(exec)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Context {
    pub async fn event(&self, run: &TektonRun, type_: EventType, reason: &str, note: &str) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(match run.flavor {
                Flavor::CustomRun => "tekton.dev/v1beta1".into(),
                Flavor::Run => "tekton.dev/v1alpha1".into(),
            }),
            kind: Some(run.flavor.kind().into()),
            name: run.metadata.name.clone(),
            namespace: run.metadata.namespace.clone(),
            uid: run.metadata.uid.clone(),
            ..Default::default()
        };
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            warn!(error = %e, "event not published");
        }
    }
}

/// Re-exported for `main`'s direct `step` command: execute without Kubernetes.
pub async fn execute_direct<C: Ceph>(
    step: &ResolvedStep,
    sites: &Sites<C>,
    token: CancellationToken,
) -> Execution {
    struct NoCheckpoint;
    impl Checkpoint for NoCheckpoint {
        async fn save(&self, _: &Progress, _: bool) -> Result<(), String> {
            Ok(())
        }
    }
    execute(
        step,
        sites,
        Arc::new(Mutex::new(Progress::default())),
        token,
        &NoCheckpoint,
        Default::default(),
    )
    .await
}

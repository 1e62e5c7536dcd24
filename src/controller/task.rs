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
use tracing::{info, warn};

use super::Context;
use super::access::Asker;
use super::owner::{self, OWNER_TTL, Owner};
use super::secrets::read_connection;
use super::status::{StatusError, StatusWriter, Update, unless_done};
pub use super::tasks::{StopCause, Stopper};
use crate::api::{Action, Flavor, RunStatus, TektonRun};
use crate::ceph::connection::{Connection, materialize};
use crate::ceph::image::{check_namespace, check_pool};
use crate::ceph::{Ceph, ImageSpec};
use crate::contract::{self, AttemptEnd};
use crate::step::outcome::{results, summary};
use crate::step::pvc::pvc_results;
use crate::step::resolve::{MAX_CONCURRENCY, MAX_IMAGES};
use crate::step::select::mirror_images;
use crate::step::{
    Checkpoint, Execution, Failure, Progress, Reason, ResolvedStep, Selection, Sites, StepEnd,
    execute,
};

/// The layout of `status.extraFields` this controller writes. Version 1 is
/// the same record without a `version` field (releases before it existed).
pub const EXTRA_VERSION: u64 = 2;

/// What this controller keeps in the run's `status.extraFields`: the resume
/// record. It is read back after a restart, and anyone who can patch the
/// status can edit it, so it is checked before it is trusted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Extra {
    pub step: Option<ResolvedStep>,
    #[serde(default)]
    pub progress: Progress,
    /// The process acting on the run (owner.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// Why a run's resume record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("status.extraFields is not a resume record this controller can read: {0}")]
    Parse(#[source] serde_json::Error),
    #[error(
        "status.extraFields has version {0}; this controller reads versions 1 to {EXTRA_VERSION} (was the run written by a newer release?)"
    )]
    Version(Value),
    #[error("the run's resolved step is missing from status.extraFields")]
    Missing,
    #[error("the resolved step in status.extraFields no longer validates: {0}")]
    Invalid(String),
}

use serde_json::Value;

impl Extra {
    /// Reads the record, of either version; `None` when there is none.
    pub fn read(status: &RunStatus) -> Result<Option<Extra>, ResumeError> {
        let Some(v) = status.extra_fields.as_ref().filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        match v.get("version") {
            None => {}
            Some(n) if n.as_u64().is_some_and(|n| (1..=EXTRA_VERSION).contains(&n)) => {}
            Some(other) => return Err(ResumeError::Version(other.clone())),
        }
        serde_json::from_value(v.clone())
            .map(Some)
            .map_err(ResumeError::Parse)
    }

    /// The record, or an empty one when it cannot be read: for reporting
    /// (results of a cancelled run), where a bad record only costs detail.
    pub fn of(status: &RunStatus) -> Extra {
        Extra::read(status).ok().flatten().unwrap_or_default()
    }

    pub fn store(&self, status: &mut RunStatus) {
        let mut v = json!({
            "version": EXTRA_VERSION,
            "step": self.step,
            "progress": self.progress,
        });
        if let Some(o) = &self.owner {
            v["owner"] = json!(o);
        }
        status.extra_fields = Some(v);
    }

    /// The step to resume, checked as strictly as when it was resolved: the
    /// executor relies on names being valid (it is never handed one that is not).
    pub fn resumable(status: &RunStatus) -> Result<(ResolvedStep, Progress), ResumeError> {
        let extra = Extra::read(status)?.ok_or(ResumeError::Missing)?;
        let step = extra.step.ok_or(ResumeError::Missing)?;
        check_resolved(&step, &extra.progress).map_err(ResumeError::Invalid)?;
        Ok((step, extra.progress))
    }
}

/// The checks `validate` made when the step was resolved, on what a resumed
/// run will act on (the listed images of an allImages step included).
fn check_resolved(step: &ResolvedStep, progress: &Progress) -> Result<(), String> {
    if step.cluster.trim().is_empty() {
        return Err("no cluster".into());
    }
    if !(1..=MAX_CONCURRENCY).contains(&step.concurrency) {
        return Err(format!(
            "concurrency {} is not between 1 and {MAX_CONCURRENCY}",
            step.concurrency
        ));
    }
    if !step.pool.is_empty() {
        check_pool(&step.pool).map_err(|e| e.to_string())?;
    }
    if let Some(ns) = &step.rados_namespace {
        check_namespace(ns).map_err(|e| e.to_string())?;
    }
    let names: Vec<&str> = match &step.selection {
        Selection::Images(l) => l.iter().map(|i| i.0.as_str()).collect(),
        Selection::AllImages => progress
            .images
            .iter()
            .flatten()
            .map(String::as_str)
            .collect(),
    };
    if names.len() > MAX_IMAGES {
        return Err(format!("{} images; at most {MAX_IMAGES}", names.len()));
    }
    crate::step::resolve::check_name_budget(names.iter().copied()).map_err(|e| e.0)?;
    // A claim may only name an image the step acts on: the PVC results must
    // not report an image that was never selected.
    if let Some(p) = &step.pvcs
        && let Some((claim, image)) = p
            .images
            .iter()
            .find(|(_, i)| !names.contains(&i.0.as_str()))
    {
        return Err(format!(
            "PVC {claim} names image {}, which the step does not select",
            image.0
        ));
    }
    for n in names {
        ImageSpec::parse(n, &step.pool, step.rados_namespace.as_deref())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
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

/// The run a task owns is the one its `writer` writes (by UID).
pub struct TaskSpec {
    pub stopper: Stopper,
    pub writer: Arc<StatusWriter>,
}

/// The task's body; the task table (tasks.rs) spawns it in the run's span,
/// catches a panic and removes it from the table however it ends.
pub async fn run(ctx: Arc<Context>, t: TaskSpec) {
    match attempts(&ctx, &t).await {
        Ok(()) => {}
        Err(e) if e.is_gone() => {
            info!(error = %e, "the run is gone: its task ends without writing")
        }
        Err(e) => {
            warn!(error = %crate::redact::message(&e.to_string()), "task ended without writing a final status; reconcile will resume it")
        }
    }
}

/// A write of this process's task: skipped (and `lost` set to the owner)
/// when another process owns the run, else `f`'s status with the ownership
/// renewed. Decided on the run the write is based on, so a write that meets
/// a 409 decides again on the run as it is now.
fn owned(
    run: &TektonRun,
    me: &str,
    lost: &Mutex<Option<String>>,
    f: impl FnOnce(&mut RunStatus),
) -> Update {
    let current = Extra::of(&run.status).owner;
    if !owner::holds(current.as_ref(), me) {
        *lost.lock().expect("lost") = current.map(|o| o.id);
        return Update::Skip;
    }
    match unless_done(run, f) {
        Update::Write(mut s) => {
            let mut extra = Extra::of(&s);
            extra.owner = Some(Owner::now(me));
            extra.store(&mut s);
            Update::Write(s)
        }
        skip => skip,
    }
}

/// Takes the run for this process, or says who holds it. A run taken over
/// from another process waits for the mutations it recorded in flight.
async fn adopt(ctx: &Context, writer: &StatusWriter) -> Result<Option<String>, StatusError> {
    let me = ctx.instance.clone();
    let mut previous = None;
    let written = writer
        .update(|run| {
            if contract::is_done(&run.status) {
                return Update::Skip;
            }
            let extra = Extra::of(&run.status);
            if !owner::may_adopt(extra.owner.as_ref(), &me, Timestamp::now()) {
                return Update::Skip;
            }
            previous = extra.owner.clone().filter(|o| o.id != me);
            let mut s = run.status.clone();
            let mut extra = extra;
            extra.owner = Some(Owner::now(&me));
            extra.store(&mut s);
            Update::Write(s)
        })
        .await?;
    let extra = Extra::of(&written.status);
    match extra.owner {
        Some(o) if o.id != me => return Ok(Some(o.id)),
        _ => {}
    }
    if let Some(prev) = previous {
        let wait = owner::in_flight_wait(&extra.progress, Timestamp::now(), owner::IN_FLIGHT_CAP);
        info!(previous = %prev.id, wait_secs = wait.as_secs(), "took the run over from another controller");
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(None)
}

/// Ends the run of a task that panicked, so that it does not hang forever.
pub async fn fail_after_panic(ctx: &Context, writer: &StatusWriter, panic: &str) {
    let message = format!(
        "the controller failed internally while running this step ({panic}); the step's progress is in status.extraFields, other runs are unaffected"
    );
    match writer.fail(Reason::InternalError, &message).await {
        Ok(written) => ctx.final_event(&written).await,
        Err(e) => {
            warn!(error = %crate::redact::message(&e.to_string()), "could not fail the run of a panicked task")
        }
    }
}

async fn attempts(ctx: &Arc<Context>, t: &TaskSpec) -> Result<(), StatusError> {
    let writer = t.writer.clone();
    loop {
        // Right after this controller's own write (the start, a retry) that
        // write is the run; otherwise it is read.
        let run = writer.current().await?;
        if contract::is_done(&run.status) {
            return Ok(());
        }
        // Checked before any Ceph call: an edited or foreign record must end
        // the run with a reason, not reach the executor.
        if let Some(holder) = adopt(ctx, &writer).await? {
            // Reconcile looks again within the owner's TTL.
            info!(owner = %holder, "another controller owns the run: leaving it");
            return Ok(());
        }
        let run = writer.current().await?;
        let (step, resumed) = match Extra::resumable(&run.status) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %crate::redact::message(&e.to_string()), "unreadable resume record");
                let written = writer.fail(Reason::InternalError, &e.to_string()).await?;
                ctx.final_event(&written).await;
                return Ok(());
            }
        };
        let timeout = contract::timeout(&run).ok().flatten();
        let deadline = contract::deadline(&run, timeout);
        let attempt = t.stopper.child();
        let attempt_token = attempt.token.clone();
        let timer = deadline.map(|d| {
            let attempt = attempt.clone();
            tokio::spawn(async move {
                let wait = d.duration_since(Timestamp::now());
                let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
                attempt.stop(StopCause::TimedOut);
            })
        });
        let progress = Arc::new(Mutex::new(resumed));
        let started = std::time::Instant::now();
        let exec = attempt_once(
            ctx,
            &run,
            &step,
            progress.clone(),
            attempt_token.clone(),
            writer.clone(),
            t.stopper.clone(),
        )
        .await;
        if let Some(timer) = timer {
            timer.abort();
        }
        let exec = match exec {
            Ok(e) => e,
            Err(f) => Execution {
                end: if t.stopper.token.is_cancelled() || attempt_token.is_cancelled() {
                    StepEnd::Stopped
                } else {
                    StepEnd::Failed(f)
                },
                progress: progress.lock().expect("progress").clone(),
                images: vec![],
                elapsed: started.elapsed(),
            },
        };
        let cause = t.stopper.take_cause();
        if cause == Some(StopCause::Deleted) {
            // Whatever object now has the run's name is not this task's.
            info!("the run was deleted: its task stops without writing");
            return Ok(());
        }
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
    let mut res = results(&images, &exec.progress, exec.elapsed);
    res.extend(pvc_results(step, &exec.progress));
    let msg = message(step, images.len(), &exec.progress);
    let mut retried = false;
    let lost = Mutex::new(None);
    // A controller stopping (SIGTERM, lost lease) gives its runs up as it
    // records their progress: the next one takes them at once instead of
    // after the owner TTL. Its mutations have returned by now (the step
    // ends only then), so there is nothing in flight to wait for.
    let release = exec.end == StepEnd::Stopped && cause == Some(StopCause::Shutdown);
    let written = writer
        .update(|run| {
            retried = false;
            let update = owned(run, &ctx.instance, &lost, |s| {
                let now = Timestamp::now();
                let mut extra = Extra::of(s);
                extra.progress = exec.progress.clone();
                extra.step = Some(step.clone());
                extra.store(s);
                let (end, message) = match (&exec.end, cause) {
                    (StepEnd::Succeeded, _) => (AttemptEnd::Succeeded, msg.clone()),
                    (StepEnd::Failed(f), _) => (
                        AttemptEnd::Failed {
                            reason: f.reason.as_str(),
                            retryable: f.reason.retryable(),
                        },
                        format!("{}; {msg}", f.message),
                    ),
                    (StepEnd::Stopped, Some(StopCause::TimedOut)) => (
                        AttemptEnd::TimedOut,
                        format!(
                            "{} timed out ({}); {msg}",
                            flavor.kind(),
                            run.spec.timeout.as_deref().unwrap_or("60m default")
                        ),
                    ),
                    (StepEnd::Stopped, _) if run.is_cancelled() => {
                        let why = run
                            .spec
                            .status_message
                            .clone()
                            .unwrap_or_else(|| "cancelled".into());
                        (AttemptEnd::Cancelled, format!("{why}; {msg}"))
                    }
                    // Stopped for no reason the run shows (the controller is
                    // shutting down): progress is recorded, the run resumes later.
                    (StepEnd::Stopped, _) | (StepEnd::Lost(_), _) => return,
                };
                retried = contract::end_attempt(s, run, now, end, &message, res.clone());
            });
            match update {
                Update::Write(mut s) if release => {
                    let mut extra = Extra::of(&s);
                    extra.owner = None;
                    extra.store(&mut s);
                    Update::Write(s)
                }
                other => other,
            }
        })
        .await?;
    if let Some(holder) = lost.lock().expect("lost").take() {
        warn!(owner = %holder, "the run was taken over by another controller: its outcome is not written here");
        return Ok(false);
    }
    let cond = contract::succeeded_condition(&written.status)
        .cloned()
        .unwrap_or_default();
    // The message was sanitized on its way into the status.
    info!(status = %cond.status, reason = cond.reason.as_deref().unwrap_or(""), message = cond.message.as_deref().unwrap_or(""), "attempt ended");
    ctx.final_event(&written).await;
    for (image, note) in &exec.progress.acted_by_another {
        ctx.acted_by_another(&written, image, note).await;
    }
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
    /// Stops the task when its run turns out to be gone.
    stopper: Stopper,
    step: ResolvedStep,
    progress: Arc<Mutex<Progress>>,
    last: Mutex<Option<Progress>>,
    /// When this process last wrote the run (its ownership renewal).
    last_at: Mutex<std::time::Instant>,
    /// This process (owner.rs).
    me: String,
    /// Set when another process owns the run: nothing more is written.
    lost: Mutex<Option<String>>,
}

impl RunCheckpoint {
    /// Writes progress when it changed, or to renew ownership.
    async fn write(&self) -> Result<(), String> {
        let p = self.progress.lock().expect("progress").clone();
        let renew = self.last_at.lock().expect("last_at").elapsed() > OWNER_TTL / 3;
        if self.last.lock().expect("last").as_ref() == Some(&p) && !renew {
            return Ok(());
        }
        self.write_now(p).await
    }

    async fn write_now(&self, p: Progress) -> Result<(), String> {
        if let Some(holder) = self.lost.lock().expect("lost").clone() {
            return Err(holder);
        }
        let msg = message(&self.step, image_count(&self.step, &p), &p);
        self.writer
            .update(|run| {
                owned(run, &self.me, &self.lost, |s| {
                    let mut extra = Extra::of(s);
                    extra.progress = p.clone();
                    extra.store(s);
                    contract::progress(s, Timestamp::now(), &msg);
                })
            })
            .await
            .map_err(|e| {
                if e.is_gone() {
                    self.stopper.stop(StopCause::Deleted);
                }
                e.to_string()
            })?;
        if let Some(holder) = self.lost.lock().expect("lost").clone() {
            return Err(holder);
        }
        *self.last.lock().expect("last") = Some(p);
        *self.last_at.lock().expect("last_at") = std::time::Instant::now();
        Ok(())
    }
}

impl Checkpoint for RunCheckpoint {
    async fn save(&self, _progress: &Progress, durable: bool) -> Result<(), String> {
        if durable { self.write().await } else { Ok(()) }
    }

    /// The mutation is recorded in flight and the run's ownership proven by
    /// one conditional write, always sent (never deduplicated).
    async fn claim(&self, _image: &str, _action: &str) -> Result<(), String> {
        let p = self.progress.lock().expect("progress").clone();
        match self.write_now(p).await {
            Ok(()) => Ok(()),
            Err(e) => match self.lost.lock().expect("lost").clone() {
                Some(holder) => Err(holder),
                // Not proven (the API server did not answer): no mutation.
                None => Err(format!("the run could not be claimed: {e}")),
            },
        }
    }
}

impl Checkpoint for Arc<RunCheckpoint> {
    async fn save(&self, progress: &Progress, durable: bool) -> Result<(), String> {
        self.as_ref().save(progress, durable).await
    }

    async fn claim(&self, image: &str, action: &str) -> Result<(), String> {
        self.as_ref().claim(image, action).await
    }
}

async fn connect(ctx: &Context, run: &TektonRun, secret: &str) -> Result<Connection, Failure> {
    let sa = run
        .spec
        .service_account_name
        .as_deref()
        .unwrap_or("default");
    let asker = Asker {
        namespace: run.namespace(),
        service_account: sa,
    };
    let data = read_connection(&ctx.client, asker, secret, &ctx.config.ceph_namespaces).await?;
    materialize(secret, &data, &ctx.config.tmp_dir)
        .map_err(|e| Failure::new(Reason::InvalidSecret, e.to_string()))
}

async fn attempt_once(
    ctx: &Arc<Context>,
    run: &TektonRun,
    step: &ResolvedStep,
    progress: Arc<Mutex<Progress>>,
    token: CancellationToken,
    writer: Arc<StatusWriter>,
    stopper: Stopper,
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
                    // mirror_images already capped the list (select_all).
                    crate::step::resolve::check_name_budget(list.iter().map(String::as_str))
                        .map_err(|e| Failure::new(Reason::InvalidParams, e.0))?;
                    progress.lock().expect("progress").images = Some(list.clone());
                    list
                }
            }
        }
    };
    let checkpoint = Arc::new(RunCheckpoint {
        writer,
        stopper,
        step: step.clone(),
        progress: progress.clone(),
        last: Mutex::new(None),
        last_at: Mutex::new(std::time::Instant::now()),
        me: ctx.instance.clone(),
        lost: Mutex::new(None),
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
                    warn!(error = %crate::redact::message(&e), "progress not written");
                }
            }
        })
    };
    let _ticker = AbortOnDrop(ticker);

    // An image is known by its cluster, not by the Secret that reached it:
    // runs in two namespaces, or through two Secrets of one cluster, lock
    // the same image. Two runs collide when they share any identity of the
    // cluster: its fsid (when `ceph fsid` answers) or a monitor address (a
    // Secret naming none locks by its own name).
    let mut clusters: Vec<String> = if local.monitors.is_empty() {
        vec![format!("secret:{}/{}", run.namespace(), step.cluster)]
    } else {
        local.monitors.clone()
    };
    let fsid = tokio::select! {
        _ = token.cancelled() => return Err(Failure::new(Reason::CephError, "stopped")),
        f = ctx.fsids.get(&local, ctx.config.peer_timeout) => f,
    };
    match fsid {
        Ok(f) => clusters.push(format!("fsid:{f}")),
        Err(e) => {
            warn!(error = %e, "cluster fsid unknown: images are locked by monitor address only")
        }
    }
    let keys: Vec<String> = images
        .iter()
        .flat_map(|i| clusters.iter().map(move |c| format!("{c}|{i}")))
        .collect();
    let owner = format!("{}/{}", run.namespace(), run.name());
    let held = tokio::select! {
        _ = token.cancelled() => return Err(Failure::new(Reason::CephError, "stopped")),
        h = ctx.locks.acquire(&keys, &owner, |key, holder| {
            let image = key.split_once('|').map_or(key, |(_, i)| i);
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
    /// The event of a run that a write just finished (or moved on): Normal
    /// `Succeeded`, Warning `Failed` (and `SplitBrain` when that is why).
    /// Nothing for a run still running.
    pub async fn final_event(&self, run: &TektonRun) {
        let Some(c) = contract::succeeded_condition(&run.status) else {
            return;
        };
        let reason = c.reason.as_deref().unwrap_or("");
        let message = c.message.as_deref().unwrap_or("");
        match c.status.as_str() {
            "True" => {
                self.event(run, EventType::Normal, "Succeeded", message)
                    .await
            }
            "False" => {
                if reason == Reason::SplitBrain.as_str() {
                    self.event(run, EventType::Warning, "SplitBrain", message)
                        .await;
                }
                self.event(
                    run,
                    EventType::Warning,
                    "Failed",
                    &format!("{reason}: {message}"),
                )
                .await
            }
            _ => {}
        }
    }

    /// A run's step found that another actor changed an image between its
    /// check and its command (someone demoted or promoted it by hand, or
    /// another controller): the outcome is right, but a person should know.
    pub async fn acted_by_another(&self, run: &TektonRun, image: &str, detail: &str) {
        self.event(
            run,
            EventType::Warning,
            "ActedByAnother",
            &format!("another actor acted on {image}: {detail}"),
        )
        .await
    }

    /// Publishes an event about `run`. The recorder aggregates repeats of one
    /// reason for one run into a series instead of new events.
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
            // events.k8s.io/v1 refuses notes over 1 KiB.
            note: Some(crate::redact::message(note)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `status.extraFields` as the last release (no `version` field) wrote
    /// it: its `Extra::store` output for a resync half done.
    const V1_RECORD: &str = r#"{"progress":{"done":{"replicapool/csi-vol-0001":{"outcome":"resynced","state":{"lastSync":"2026-11-27T12:00:00Z","role":"non-primary","state":"up+replaying"}}},"resyncIssued":{"replicapool/csi-vol-0002":"1a2b3c4d5e6f"},"waiting":"waiting for replicapool/csi-vol-0002 to replay"},"step":{"action":"resync","cluster":"site-a","concurrency":8,"force":false,"peerCluster":"site-b","pool":"replicapool","selection":{"images":["replicapool/csi-vol-0001","replicapool/csi-vol-0002"]}}}"#;

    fn status_with(extra: Value) -> RunStatus {
        RunStatus {
            extra_fields: Some(extra),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_of_the_last_release_resumes() {
        let s = status_with(serde_json::from_str(V1_RECORD).unwrap());
        let (step, progress) = Extra::resumable(&s).unwrap();
        assert_eq!(step.action, Action::Resync);
        assert_eq!(step.cluster, "site-a");
        assert_eq!(step.images().len(), 2);
        // The write-ahead record survives: the resync is never issued twice.
        assert_eq!(
            progress
                .resync_issued
                .get("replicapool/csi-vol-0002")
                .map(String::as_str),
            Some("1a2b3c4d5e6f")
        );
        assert_eq!(progress.done.len(), 1);
        // Written back, it carries the current version and reads the same.
        let mut again = RunStatus::default();
        Extra {
            step: Some(step.clone()),
            progress: progress.clone(),
            owner: None,
        }
        .store(&mut again);
        assert_eq!(
            again.extra_fields.as_ref().unwrap()["version"],
            EXTRA_VERSION
        );
        let (step2, progress2) = Extra::resumable(&again).unwrap();
        assert_eq!((step2, progress2), (step, progress));
    }

    #[test]
    fn an_unreadable_record_is_refused_before_any_ceph_call() {
        let mut v: Value = serde_json::from_str(V1_RECORD).unwrap();
        v["version"] = json!(3);
        assert!(matches!(
            Extra::resumable(&status_with(v)),
            Err(ResumeError::Version(_))
        ));
        let v = json!({"version": 2, "step": {"action": "teleport"}});
        assert!(matches!(
            Extra::resumable(&status_with(v)),
            Err(ResumeError::Parse(_))
        ));
        assert!(matches!(
            Extra::resumable(&RunStatus::default()),
            Err(ResumeError::Missing)
        ));
        // An edited image name would reach the executor's names-are-valid invariant.
        let mut v: Value = serde_json::from_str(V1_RECORD).unwrap();
        v["step"]["selection"]["images"][0] = json!("replicapool/--bad name");
        let e = Extra::resumable(&status_with(v)).unwrap_err();
        assert!(matches!(e, ResumeError::Invalid(_)), "{e}");
        let mut v: Value = serde_json::from_str(V1_RECORD).unwrap();
        v["step"]["concurrency"] = json!(0);
        assert!(matches!(
            Extra::resumable(&status_with(v)),
            Err(ResumeError::Invalid(_))
        ));
        let mut v: Value = serde_json::from_str(V1_RECORD).unwrap();
        v["step"]["selection"] = json!("allImages");
        v["progress"]["images"] = json!(["replicapool/ok", "replicapool/a b"]);
        assert!(matches!(
            Extra::resumable(&status_with(v)),
            Err(ResumeError::Invalid(_))
        ));
    }
}

//! Runs a resolved step against Ceph: the thin executor of the per-image
//! planner (`plan`). It performs what the planner asks (reads, records,
//! mutations, waits) with bounded concurrency, stops at once on cancel (no
//! new `rbd` command starts; a mutating one already running finishes),
//! claims the run before every mutation, and checkpoints progress so a
//! restarted controller resumes. Every decision is the planner's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::outcome::{Failure, ImageOutcome, Progress, Reason};
use super::plan::{Command, ImagePlan, Intent, Next, Observed, Read, Record};
use super::resolve::{ResolvedStep, Selection};
use super::select::mirror_images;
use crate::api::Action;
use crate::ceph::{Ceph, ImageSpec, RbdError, RbdErrorKind};

/// Persists progress. `durable` writes (write-ahead records) must be stored
/// before the step goes on; the others may be throttled (the caller also
/// sees progress through the shared `Arc<Mutex<Progress>>`).
pub trait Checkpoint: Send + Sync {
    fn save(
        &self,
        progress: &Progress,
        durable: bool,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Called before every mutation: proves this process still owns the run
    /// (a status write conditioned on what it last saw), so that a deposed
    /// leader or a second instance finds out instead of acting. `Err` says
    /// who owns it now; the step then stops without touching anything.
    fn claim(
        &self,
        _image: &str,
        _action: &str,
    ) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// The two sites a step talks to.
pub struct Sites<C> {
    pub local: C,
    pub local_name: String,
    pub peer: Option<C>,
    pub peer_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepEnd {
    Succeeded,
    Failed(Failure),
    /// Stopped by the token: the caller knows whether it was a cancel or a timeout.
    Stopped,
    /// Another process owns the run now: this one must write nothing more.
    Lost(String),
}

pub struct Execution {
    pub end: StepEnd,
    pub progress: Progress,
    pub images: Vec<String>,
    pub elapsed: Duration,
}

/// How often a wait looks again, at most.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        // Ceph allows a promote within seconds of the demotion (ceph-lab.md
        // section 7): a slow backoff would add most of a step's time for nothing.
        Pace {
            first: Duration::from_millis(100),
            max: Duration::from_millis(500),
        }
    }
}

enum ImageEnd {
    Done(ImageOutcome),
    Failed(Failure),
    /// A demote's checks passed: held until every image is checked.
    Checked(Box<ImagePlan>),
    /// Not (or no further) acted on: the step stopped, or a demote failed
    /// elsewhere and no new demote may start.
    Stopped,
    /// The claim before a mutation was refused: another process owns the run
    /// (recorded in `Ctx::lost`).
    Lost,
}

type Step<T> = Result<T, ImageEnd>;

struct Ctx<'a, C, K> {
    step: &'a ResolvedStep,
    sites: &'a Sites<C>,
    checkpoint: &'a K,
    progress: Arc<Mutex<Progress>>,
    /// Cancelled by the caller (cancel, timeout): reads are abandoned, no
    /// mutation starts.
    stop: CancellationToken,
    /// Cancelled after a failed demote: no new mutation starts, but reads
    /// and waits go on, so what was done is still recorded.
    halt_mutations: CancellationToken,
    /// Set when a claim is refused (who owns the run now): nothing more may
    /// be done or written by this process.
    lost: Mutex<Option<String>>,
    pace: Pace,
}

pub async fn execute<C: Ceph, K: Checkpoint>(
    step: &ResolvedStep,
    sites: &Sites<C>,
    progress: Arc<Mutex<Progress>>,
    cancel: CancellationToken,
    checkpoint: &K,
    pace: Pace,
) -> Execution {
    let started = Instant::now();
    let ctx = Ctx {
        step,
        sites,
        checkpoint,
        progress,
        stop: cancel.child_token(),
        halt_mutations: CancellationToken::new(),
        lost: Mutex::new(None),
        pace,
    };
    let images = match ctx.image_list().await {
        Ok(list) => list,
        Err(end) => {
            let end = match end {
                ImageEnd::Failed(f) => StepEnd::Failed(f),
                _ => StepEnd::Stopped,
            };
            return ctx.finish(end, vec![], started);
        }
    };
    let intent = Intent {
        action: step.action,
        force: step.force,
        wait_for: step.wait_for,
        site: sites.local_name.clone(),
        peer: sites.peer.as_ref().and(sites.peer_name.clone()),
    };
    let plans: Vec<ImagePlan> = {
        let mut p = ctx.progress.lock().expect("progress");
        // A new attempt takes its failed images up again.
        p.failed.clear();
        let mut plans = vec![];
        let todo: Vec<&String> = images.iter().filter(|i| !p.done.contains_key(*i)).collect();
        for i in todo {
            match ImageSpec::parse(i, &step.pool, step.rados_namespace.as_deref()) {
                Ok(spec) => {
                    let recorded = p.resync_issued.get(&spec.to_string()).cloned();
                    plans.push(ImagePlan::new(intent.clone(), spec, recorded));
                }
                // Only an edited status can get here: names were validated
                // when the step was resolved.
                Err(e) => {
                    p.failed.insert(
                        i.clone(),
                        Failure::new(Reason::InvalidParams, format!("{i}: {e}")),
                    );
                }
            }
        }
        plans
    };
    let concurrency = step.concurrency as usize;
    let ctx_ref = &ctx;
    // A demote checks every image before the first is touched: a
    // half-demoted application is the worst state a failover can leave.
    let plans = if step.action == Action::Demote && !plans.is_empty() {
        let checks: Vec<(String, ImageEnd)> = futures::stream::iter(plans)
            .map(|plan| async move {
                let img = plan.image().to_string();
                (img, ctx_ref.run(plan).await)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut checked = vec![];
        for (img, end) in checks {
            match end {
                ImageEnd::Checked(plan) => checked.push(*plan),
                other => ctx.record_end(img, other).await,
            }
        }
        let failed = !ctx.progress.lock().expect("progress").failed.is_empty();
        if failed || ctx.stop.is_cancelled() {
            return ctx.conclude(images, started);
        }
        checked
    } else {
        plans
    };
    let mut runs = futures::stream::iter(plans)
        .map(|plan| async move {
            let img = plan.image().to_string();
            (img, ctx_ref.run(plan).await)
        })
        .buffer_unordered(concurrency);
    while let Some((img, end)) = runs.next().await {
        ctx.record_end(img, end).await;
    }
    drop(runs);
    ctx.conclude(images, started)
}

impl<C: Ceph, K: Checkpoint> Ctx<'_, C, K> {
    /// Records how one image ended.
    async fn record_end(&self, img: String, end: ImageEnd) {
        match end {
            ImageEnd::Done(outcome) => {
                let snapshot = {
                    let mut p = self.progress.lock().expect("progress");
                    p.done.insert(img, outcome);
                    p.waiting = None;
                    p.clone()
                };
                // Progress writes are throttled by the checkpoint; a lost one
                // only costs a repeated idempotent check after a restart.
                let _ = self.checkpoint.save(&snapshot, false).await;
            }
            ImageEnd::Failed(f) => {
                self.progress
                    .lock()
                    .expect("progress")
                    .failed
                    .insert(img, f);
                // Promote and resync attempt every image; a demote starts
                // no new one after a failure.
                if self.step.action == Action::Demote {
                    self.halt_mutations.cancel();
                }
            }
            ImageEnd::Checked(_) | ImageEnd::Stopped | ImageEnd::Lost => {}
        }
    }

    /// The step's end from what happened to each image.
    fn conclude(self, images: Vec<String>, started: Instant) -> Execution {
        let failure = {
            let p = self.progress.lock().expect("progress");
            super::outcome::failures_summary(images.len(), &p.failed)
        };
        let lost = self.lost.lock().expect("lost").clone();
        let end = match (lost, failure) {
            (Some(owner), _) => StepEnd::Lost(owner),
            (None, Some(f)) => StepEnd::Failed(f),
            (None, None) if self.stop.is_cancelled() => StepEnd::Stopped,
            (None, None) => StepEnd::Succeeded,
        };
        self.finish(end, images, started)
    }

    fn finish(self, end: StepEnd, images: Vec<String>, started: Instant) -> Execution {
        let progress = {
            let mut p = self.progress.lock().expect("progress");
            // A step stopped (timed out, cancelled) while waiting keeps what
            // it waited for: its final message then says why it never got
            // there (e.g. which rbd-mirror is not reporting).
            if end != StepEnd::Stopped {
                p.waiting = None;
            }
            p.clone()
        };
        Execution {
            end,
            progress,
            images,
            elapsed: started.elapsed(),
        }
    }

    async fn image_list(&self) -> Step<Vec<String>> {
        match &self.step.selection {
            Selection::Images(list) => Ok(list.iter().map(|i| i.0.clone()).collect()),
            Selection::AllImages => {
                if let Some(list) = self.progress.lock().expect("progress").images.clone() {
                    return Ok(list);
                }
                let list = self
                    .abandon_on_stop(mirror_images(
                        self.step,
                        &self.sites.local,
                        &self.sites.local_name,
                    ))
                    .await?
                    .map_err(ImageEnd::Failed)?;
                let snapshot = {
                    let mut p = self.progress.lock().expect("progress");
                    p.images = Some(list.clone());
                    p.clone()
                };
                let _ = self.checkpoint.save(&snapshot, false).await;
                Ok(list)
            }
        }
    }

    /// Drives one image's plan until it ends (or, for a demote, until its
    /// checks passed: `Checked` hands the plan back).
    async fn run(&self, mut plan: ImagePlan) -> ImageEnd {
        match self.drive(&mut plan).await {
            Ok(end) => end,
            Err(end) => end,
        }
    }

    async fn drive(&self, plan: &mut ImagePlan) -> Step<ImageEnd> {
        let began = tokio::time::Instant::now();
        let img = plan.image().clone();
        let mut obs = Observed::default();
        let mut attempt = 0;
        loop {
            let next = plan.next(&obs, began.elapsed());
            if self.step.dry_run
                && let Some(outcome) = super::dry_run::would(&self.step.action, &next, &obs)
            {
                return Ok(ImageEnd::Done(outcome));
            }
            match next {
                Next::Read(reads) => self.observe(&img, &reads, &mut obs).await?,
                Next::Checked => return Ok(ImageEnd::Checked(Box::new(plan.clone()))),
                Next::Record(r) => {
                    if self.stop.is_cancelled() {
                        return Err(ImageEnd::Stopped);
                    }
                    self.record(&img, r).await?;
                    plan.recorded();
                }
                Next::Mutate(cmd) => {
                    let result = self.mutate(&img, cmd).await?;
                    plan.landed(cmd, result, began.elapsed());
                    obs = Observed::default();
                }
                Next::Wait(why) => {
                    self.progress.lock().expect("progress").waiting = Some(why);
                    self.pause(&mut attempt).await?;
                    obs = Observed::default();
                }
                Next::Done(o) => {
                    if let Some(note) = plan.acted_by_another() {
                        self.progress
                            .lock()
                            .expect("progress")
                            .acted_by_another
                            .insert(img.to_string(), note.to_string());
                    }
                    return Ok(ImageEnd::Done(o));
                }
                Next::Fail(f) => return Ok(ImageEnd::Failed(f)),
            }
        }
    }

    /// Makes the reads the planner asked for, at once.
    async fn observe(&self, img: &ImageSpec, reads: &[Read], obs: &mut Observed) -> Step<()> {
        let results = futures::future::join_all(reads.iter().map(|r| self.read(img, *r))).await;
        for result in results {
            result?.store(obs);
        }
        Ok(())
    }

    async fn read(&self, img: &ImageSpec, r: Read) -> Step<Answer> {
        let (local, peer) = (&self.sites.local, self.sites.peer.as_ref());
        let no_peer = || RbdError {
            kind: RbdErrorKind::Other,
            op: crate::ceph::Op::Info,
            target: img.to_string(),
            exit: None,
            detail: "no peer site was given".into(),
        };
        Ok(match r {
            Read::Info => Answer::Info(self.read_twice(|| local.info(img)).await?),
            Read::Status => Answer::Status(self.read_twice(|| local.mirror_status(img)).await?),
            Read::Lockers => Answer::Lockers(self.read_twice(|| local.lockers(img)).await?),
            Read::Journal => Answer::Journal(self.read_twice(|| local.journal_status(img)).await?),
            Read::Snapshots => Answer::Snapshots(self.read_twice(|| local.snapshots(img)).await?),
            Read::PeerInfo => Answer::PeerInfo(match peer {
                Some(p) => self.read_twice(|| p.info(img)).await?,
                None => Err(no_peer()),
            }),
            Read::PeerJournal => Answer::PeerJournal(match peer {
                Some(p) => self.read_twice(|| p.journal_status(img)).await?,
                None => Err(no_peer()),
            }),
        })
    }

    /// A read-only call: abandoned (its child killed) the moment the step stops.
    async fn abandon_on_stop<T>(&self, fut: impl Future<Output = T>) -> Step<T> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Err(ImageEnd::Stopped),
            v = fut => Ok(v),
        }
    }

    /// A read asked a second time when it does not answer: one lost answer
    /// (a slow OSD, a dropped connection) is not a lost site, and an image
    /// failed for it is not retried while another image's failure needs a
    /// person. A dead site costs two deadlines.
    async fn read_twice<T, F, Fut>(&self, call: F) -> Step<Result<T, RbdError>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, RbdError>>,
    {
        match self.abandon_on_stop(call()).await? {
            Err(e) if e.kind == RbdErrorKind::Unavailable => self.abandon_on_stop(call()).await,
            r => Ok(r),
        }
    }

    /// Stores a write-ahead record durably before the command it announces.
    async fn record(&self, img: &ImageSpec, r: Record) -> Step<()> {
        let key = img.to_string();
        let (snapshot, what) = {
            let mut p = self.progress.lock().expect("progress");
            let what = match r {
                Record::Forced { window } => {
                    p.forced.insert(key, window);
                    "the forced promote"
                }
                Record::ResyncIssued { id } => {
                    p.resync_issued.insert(key, id);
                    "the resync"
                }
            };
            (p.clone(), what)
        };
        self.checkpoint.save(&snapshot, true).await.map_err(|e| {
            ImageEnd::Failed(Failure::new(
                Reason::CephError,
                format!("could not record {what} of {img} before issuing it: {e}"),
            ))
        })
    }

    /// A mutating call: never started once the step stops (or, in a demote,
    /// after another image failed), never interrupted once started (librbd
    /// cannot be interrupted safely). A resync whose record is stored goes
    /// out even after a cancel: the record already says it may have.
    async fn mutate(&self, img: &ImageSpec, cmd: Command) -> Step<Result<(), RbdError>> {
        let halted = || {
            !cmd.follows_its_record()
                && (self.stop.is_cancelled() || self.halt_mutations.is_cancelled())
        };
        if halted() {
            return Err(ImageEnd::Stopped);
        }
        self.claim(img, cmd.name()).await?;
        // The claim may have waited on the API server: look again.
        if halted() {
            self.landed(img);
            return Err(ImageEnd::Stopped);
        }
        let local = &self.sites.local;
        let out = match cmd {
            Command::JournalMarker => local.journal_marker(img).await,
            Command::Demote => local.demote(img).await,
            Command::Promote => local.promote(img, false).await,
            Command::ForcePromote => local.promote(img, true).await,
            Command::Resync => local.resync(img).await,
        };
        self.landed(img);
        Ok(out)
    }

    /// A mutation returned: it is no longer in flight.
    fn landed(&self, img: &ImageSpec) {
        self.progress
            .lock()
            .expect("progress")
            .in_flight
            .remove(&img.to_string());
    }

    /// Claims the run for one mutation, recording it as in flight.
    async fn claim(&self, img: &ImageSpec, action: &str) -> Step<()> {
        self.progress.lock().expect("progress").in_flight.insert(
            img.to_string(),
            super::outcome::InFlight {
                action: action.into(),
                since: crate::contract::format_time(jiff::Timestamp::now()),
            },
        );
        if let Err(owner) = self.checkpoint.claim(&img.to_string(), action).await {
            self.landed(img);
            self.lost
                .lock()
                .expect("lost")
                .get_or_insert_with(|| owner.clone());
            self.stop.cancel();
            return Err(ImageEnd::Lost);
        }
        Ok(())
    }

    async fn pause(&self, attempt: &mut u32) -> Step<()> {
        let d = self
            .pace
            .first
            .saturating_mul(1 << (*attempt).min(6))
            .min(self.pace.max);
        *attempt += 1;
        self.abandon_on_stop(tokio::time::sleep(d)).await
    }
}

/// One read's answer, on its way into `Observed`.
enum Answer {
    Info(Result<crate::ceph::model::ImageInfo, RbdError>),
    Status(Result<crate::ceph::model::MirrorImageStatus, RbdError>),
    Lockers(Result<Vec<crate::ceph::model::Locker>, RbdError>),
    Journal(Result<crate::ceph::model::JournalStatus, RbdError>),
    Snapshots(Result<Vec<crate::ceph::model::SnapEntry>, RbdError>),
    PeerInfo(Result<crate::ceph::model::ImageInfo, RbdError>),
    PeerJournal(Result<crate::ceph::model::JournalStatus, RbdError>),
}

impl Answer {
    fn store(self, obs: &mut Observed) {
        match self {
            Answer::Info(r) => obs.info = Some(r),
            Answer::Status(r) => obs.status = Some(r),
            Answer::Lockers(r) => obs.lockers = Some(r),
            Answer::Journal(r) => obs.journal = Some(r),
            Answer::Snapshots(r) => obs.snapshots = Some(r),
            Answer::PeerInfo(r) => obs.peer_info = Some(r),
            Answer::PeerJournal(r) => obs.peer_journal = Some(r),
        }
    }
}

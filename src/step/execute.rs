//! Runs a resolved step against Ceph: per image, with bounded concurrency,
//! waiting for the state each action promises, stopping at once on cancel
//! (no new `rbd` command starts; a mutating one already running finishes),
//! and checkpointing progress so a restarted controller resumes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::outcome::{Failure, ImageOutcome, ImageState, Progress, Reason};
use super::resolve::{ResolvedStep, Selection};
use crate::api::{Action, WaitFor};
use crate::ceph::model::{ImageInfo, MirrorImageStatus, MirrorMode, snapshot_demotion_arrived};
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
    /// Not (or no further) acted on: the step stopped, or a demote failed
    /// elsewhere and no new demote may start.
    Stopped,
    /// The claim before a mutation was refused: another process owns the run
    /// (recorded in `Ctx::lost`).
    Lost,
}

type Step<T> = Result<T, ImageEnd>;

/// What the check of a demote found, before any image is touched.
enum DemotePlan {
    AlreadyNonPrimary,
    /// Demote; `mark` first when the journal has never committed an entry.
    Demote {
        mark: bool,
    },
}

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
    let pending: Vec<ImageSpec> = {
        let mut p = ctx.progress.lock().expect("progress");
        // A new attempt takes its failed images up again.
        p.failed.clear();
        let mut pending = vec![];
        let todo: Vec<&String> = images.iter().filter(|i| !p.done.contains_key(*i)).collect();
        for i in todo {
            match ImageSpec::parse(i, &step.pool, step.rados_namespace.as_deref()) {
                Ok(spec) => pending.push(spec),
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
        pending
    };
    // A demote checks every image before the first is touched: a
    // half-demoted application is the worst state a failover can leave.
    let mut plans = std::collections::HashMap::new();
    if step.action == Action::Demote && !pending.is_empty() {
        let ctx_ref = &ctx;
        let checks: Vec<(ImageSpec, Step<DemotePlan>)> = futures::stream::iter(pending.clone())
            .map(|img| async move {
                let plan = ctx_ref.demote_check(&img).await;
                (img, plan)
            })
            .buffer_unordered(step.concurrency as usize)
            .collect()
            .await;
        for (img, plan) in checks {
            match plan {
                Ok(plan) => {
                    plans.insert(img.to_string(), plan);
                }
                Err(ImageEnd::Failed(f)) => {
                    ctx.progress
                        .lock()
                        .expect("progress")
                        .failed
                        .insert(img.to_string(), f);
                }
                Err(_) => {}
            }
        }
        let failed = !ctx.progress.lock().expect("progress").failed.is_empty();
        if failed || ctx.stop.is_cancelled() {
            return ctx.conclude(images, started);
        }
    }
    let ctx_ref = &ctx;
    let plans = &plans;
    let mut runs = futures::stream::iter(pending)
        .map(|img| async move {
            let end = match ctx_ref.image(&img, plans.get(&img.to_string())).await {
                Ok(o) => ImageEnd::Done(o),
                Err(e) => e,
            };
            (img.to_string(), end)
        })
        .buffer_unordered(step.concurrency as usize);
    while let Some((img, end)) = runs.next().await {
        match end {
            ImageEnd::Done(outcome) => {
                let snapshot = {
                    let mut p = ctx.progress.lock().expect("progress");
                    p.done.insert(img, outcome);
                    p.waiting = None;
                    p.clone()
                };
                // Progress writes are throttled by the checkpoint; a lost one
                // only costs a repeated idempotent check after a restart.
                let _ = ctx.checkpoint.save(&snapshot, false).await;
            }
            ImageEnd::Failed(f) => {
                ctx.progress.lock().expect("progress").failed.insert(img, f);
                // Promote and resync attempt every image; a demote starts
                // no new one after a failure.
                if step.action == Action::Demote {
                    ctx.halt_mutations.cancel();
                }
            }
            ImageEnd::Stopped | ImageEnd::Lost => {}
        }
    }
    drop(runs);
    ctx.conclude(images, started)
}

impl<C: Ceph, K: Checkpoint> Ctx<'_, C, K> {
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
            p.waiting = None;
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
                    .read(mirror_images(
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

    /// A read-only call: abandoned (its child killed) the moment the step stops.
    async fn read<T>(&self, fut: impl Future<Output = T>) -> Step<T> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Err(ImageEnd::Stopped),
            v = fut => Ok(v),
        }
    }

    /// A mutating call: never started once the step stops (or, in a demote,
    /// after another image failed), never interrupted once started (librbd
    /// cannot be interrupted safely).
    async fn mutate<T>(
        &self,
        img: &ImageSpec,
        action: &str,
        fut: impl Future<Output = T>,
    ) -> Step<T> {
        if self.stop.is_cancelled() || self.halt_mutations.is_cancelled() {
            return Err(ImageEnd::Stopped);
        }
        self.claim(img, action).await?;
        // The claim may have waited on the API server: look again.
        if self.stop.is_cancelled() || self.halt_mutations.is_cancelled() {
            self.landed(img);
            return Err(ImageEnd::Stopped);
        }
        let out = fut.await;
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

    /// A read asked a second time when it does not answer: one lost answer
    /// (a slow OSD, a dropped connection) is not a lost site, and an image
    /// failed for it is not retried while another image's failure needs a
    /// person. A dead site costs two deadlines.
    async fn read_twice<T, F, Fut>(&self, call: F) -> Step<Result<T, RbdError>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, RbdError>>,
    {
        match self.read(call()).await? {
            Err(e) if e.kind == RbdErrorKind::Unavailable => self.read(call()).await,
            r => Ok(r),
        }
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
        self.read(tokio::time::sleep(d)).await
    }

    fn set_waiting(&self, what: String) {
        self.progress.lock().expect("progress").waiting = Some(what);
    }

    fn ceph_failure(&self, e: RbdError, site: &str) -> ImageEnd {
        ImageEnd::Failed(ceph_failure(&e, site))
    }

    async fn local_info(&self, img: &ImageSpec) -> Step<ImageInfo> {
        let site = &self.sites.local_name;
        let info = self
            .read_twice(|| self.sites.local.info(img))
            .await?
            .map_err(|e| self.ceph_failure(e, site))?;
        if !info.mirroring_enabled() {
            return Err(ImageEnd::Failed(Failure::new(
                Reason::MirroringDisabled,
                format!(
                    "mirroring is not enabled on {img} on {site}: enable it (rbd mirror image enable {img} snapshot) or drop the image from the step"
                ),
            )));
        }
        Ok(info)
    }

    async fn local_status(&self, img: &ImageSpec) -> Step<Option<MirrorImageStatus>> {
        match self.read(self.sites.local.mirror_status(img)).await? {
            Ok(s) => Ok(Some(s)),
            // Status is advisory; the role comes from `rbd info`.
            Err(e) if e.kind == RbdErrorKind::Unavailable => {
                Err(self.ceph_failure(e, &self.sites.local_name))
            }
            Err(_) => Ok(None),
        }
    }

    /// The peer's role, or PeerUnavailable when it does not answer.
    async fn peer_primary(&self, img: &ImageSpec) -> Step<Option<bool>> {
        let (Some(peer), Some(name)) = (&self.sites.peer, &self.sites.peer_name) else {
            return Ok(None);
        };
        match self.read_twice(|| peer.info(img)).await? {
            Ok(info) => Ok(info.is_primary()),
            Err(e) if e.kind == RbdErrorKind::Unavailable => Err(ImageEnd::Failed(Failure::new(
                Reason::PeerUnavailable,
                format!(
                    "{name} is not answering ({e}): the peer cannot demote, so a planned promote of {img} cannot be proven safe; \
                     if {name} is lost, run an unplanned failover with force: \"true\""
                ),
            ))),
            Err(e) if e.kind == RbdErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.ceph_failure(e, name)),
        }
    }

    async fn image(&self, img: &ImageSpec, plan: Option<&DemotePlan>) -> Step<ImageOutcome> {
        match self.step.action {
            Action::Status => self.status(img).await,
            Action::Demote => match plan {
                Some(plan) => self.demote(img, plan).await,
                None => Err(ImageEnd::Stopped),
            },
            Action::Promote if self.step.force => self.force_promote(img).await,
            Action::Promote => self.promote(img).await,
            Action::Resync => self.resync(img).await,
        }
    }

    async fn observe(&self, img: &ImageSpec, outcome: &str) -> Step<ImageOutcome> {
        let (info, status) = tokio::join!(self.local_info(img), self.local_status(img));
        let (info, status) = (info?, status?);
        Ok(ImageOutcome {
            outcome: outcome.into(),
            state: image_state(&info, status.as_ref()),
        })
    }

    async fn status(&self, img: &ImageSpec) -> Step<ImageOutcome> {
        let mut attempt = 0;
        loop {
            // Two reads at once: each rbd process spends most of its time
            // starting up and connecting, not waiting on the other.
            let (info, status) = tokio::join!(self.local_info(img), self.local_status(img));
            let (info, status) = (info?, status?);
            if let Some(s) = &status
                && s.is_split_brain()
            {
                return Err(split_brain(img, &self.sites.local_name, &s.description));
            }
            if info.is_primary() == Some(true) && self.peer_primary(img).await? == Some(true) {
                return Err(both_primary(
                    img,
                    &self.sites.local_name,
                    self.sites.peer_name.as_deref().unwrap_or(""),
                ));
            }
            let state = image_state(&info, status.as_ref());
            let reached = match self.step.wait_for {
                None => true,
                Some(WaitFor::Primary) => state.role == "primary",
                Some(WaitFor::NonPrimary) => state.role == "non-primary",
                Some(WaitFor::Replaying) => {
                    state.role == "non-primary" && state.state == "up+replaying"
                }
            };
            if reached {
                return Ok(ImageOutcome {
                    outcome: "checked".into(),
                    state,
                });
            }
            let want = self.step.wait_for.map(WaitFor::as_str).unwrap_or("");
            self.set_waiting(format!(
                "waiting for {img} to be {want} on {} (now {} {})",
                self.sites.local_name, state.role, state.state
            ));
            self.pause(&mut attempt).await?;
        }
    }

    /// Everything a demote needs to know before any image is touched: the
    /// role, whether a client holds the image, and (journal mode) whether
    /// the journal ever committed an entry.
    async fn demote_check(&self, img: &ImageSpec) -> Step<DemotePlan> {
        let site = &self.sites.local_name;
        let info = self.local_info(img).await?;
        if info.is_primary() == Some(false) {
            return Ok(DemotePlan::AlreadyNonPrimary);
        }
        if !self.step.force {
            // A lock held for a moment (the local rbd-mirror restarting its
            // replayers, e.g. right after the site came back) is not an
            // application: look again for a few seconds before refusing.
            let since = tokio::time::Instant::now();
            let mut attempt = 0;
            let lockers = loop {
                let lockers = self
                    .read(self.sites.local.lockers(img))
                    .await?
                    .map_err(|e| self.ceph_failure(e, site))?;
                if lockers.is_empty() || since.elapsed() > IN_USE_GRACE {
                    break lockers;
                }
                self.pause(&mut attempt).await?;
            };
            if !lockers.is_empty() {
                let who: Vec<&str> = lockers.iter().map(|l| l.locker.as_str()).collect();
                return Err(ImageEnd::Failed(Failure::new(
                    Reason::ImageInUse,
                    format!(
                        "{img} on {site} is in use (exclusive lock held by {}): stop the application using it first, \
                         or set force: \"true\" to demote anyway (its writer will be cut off)",
                        who.join(", ")
                    ),
                )));
            }
        }
        let mark = if info.mode() == Some(MirrorMode::Journal) {
            let journal = self
                .read(self.sites.local.journal_status(img))
                .await?
                .map_err(|e| self.ceph_failure(e, site))?;
            !journal.master_committed()
        } else {
            false
        };
        Ok(DemotePlan::Demote { mark })
    }

    async fn demote(&self, img: &ImageSpec, plan: &DemotePlan) -> Step<ImageOutcome> {
        let site = &self.sites.local_name;
        let mark = match plan {
            DemotePlan::AlreadyNonPrimary => {
                return self.observe(img, "already-non-primary").await;
            }
            DemotePlan::Demote { mark } => *mark,
        };
        if mark {
            // A journal that never committed an entry would record a
            // demotion the new primary's promotion cannot chain to: the old
            // primary then reports split-brain (JournalStatus::master_committed).
            // One journaled no-op gives the demotion a valid predecessor.
            match self
                .mutate(img, "journal-marker", self.sites.local.journal_marker(img))
                .await?
            {
                Ok(()) => {}
                Err(e) => return Err(self.ceph_failure(e, site)),
            }
            let journal = self
                .read(self.sites.local.journal_status(img))
                .await?
                .map_err(|e| self.ceph_failure(e, site))?;
            if !journal.master_committed() {
                return Err(ImageEnd::Failed(Failure::new(
                    Reason::CephError,
                    format!(
                        "{img} on {site}: its journal has no committed entry even after a journaled no-op, \
                         so a demotion now would leave {site} in split-brain after the promote; not demoted"
                    ),
                )));
            }
        }
        match self
            .mutate(img, "demote", self.sites.local.demote(img))
            .await?
        {
            Ok(()) => {}
            Err(e) if e.kind == RbdErrorKind::NotPrimary => {
                return self.observe(img, "already-non-primary").await;
            }
            Err(e) if e.kind == RbdErrorKind::InUse => {
                return Err(ImageEnd::Failed(Failure::new(
                    Reason::ImageInUse,
                    format!(
                        "{img} on {site} is in use and its lock could not be taken ({e}): stop the application using it first"
                    ),
                )));
            }
            // A failed call does not prove nothing happened: read again.
            Err(e) => {
                return match self.read(self.sites.local.info(img)).await? {
                    Ok(info) if info.is_primary() == Some(false) => {
                        self.confirm(img, false, "demoted").await
                    }
                    Ok(_) => Err(self.ceph_failure(e, site)),
                    Err(read) => Err(unknown_after(img, site, &e, &read)),
                };
            }
        }
        self.confirm(img, false, "demoted").await
    }

    /// The outcome once `rbd info` reports the role the command gave (it
    /// changes at once after the command: a bounded confirmation, not a guess).
    /// `rbd mirror image status` is not read here: right after a role change
    /// it still describes the old role for seconds (rbd-facts P9), and on a
    /// busy host every rbd process counts. A status step reports the state.
    async fn confirm(&self, img: &ImageSpec, primary: bool, outcome: &str) -> Step<ImageOutcome> {
        let role = if primary { "primary" } else { "non-primary" };
        let mut attempt = 0;
        loop {
            let info = self.local_info(img).await?;
            let o = ImageOutcome {
                outcome: outcome.into(),
                state: image_state(&info, None),
            };
            if o.state.role == role {
                return Ok(o);
            }
            self.set_waiting(format!(
                "waiting for {img} to report {role} on {}",
                self.sites.local_name
            ));
            self.pause(&mut attempt).await?;
        }
    }

    // The checks of demote and promote run one after another, not at once:
    // with many images in flight every rbd process competes for the same
    // CPUs, and in the benchmark concurrent checks made a 20-image promote
    // at concurrency 16 slower (6.8 s against 5.6 s), not faster.
    async fn promote(&self, img: &ImageSpec) -> Step<ImageOutcome> {
        let site = self.sites.local_name.clone();
        let peer_name = self
            .sites
            .peer_name
            .clone()
            .unwrap_or_else(|| "the peer site".into());
        let mut attempt = 0;
        loop {
            let info = self.local_info(img).await?;
            if info.is_primary() == Some(true) {
                if self.peer_primary(img).await? == Some(true) {
                    return Err(both_primary(img, &site, &peer_name));
                }
                return self.observe(img, "already-primary").await;
            }
            let peer_primary = self.peer_primary(img).await?;
            // The local replayer's state while it still handles the demotion.
            let mut replayer: Option<String> = None;
            let arrived = match info.mode() {
                Some(MirrorMode::Journal) => {
                    let Some(peer) = &self.sites.peer else {
                        return Err(ImageEnd::Failed(Failure::new(
                            Reason::PeerRequired,
                            format!(
                                "{img} is journal-mirrored: a promote without force needs peerCluster (the other site's Secret) \
                                 to prove the peer demoted and the journal was replayed (a stale promote would otherwise succeed)"
                            ),
                        )));
                    };
                    if peer_primary != Some(false) {
                        false
                    } else {
                        match self.read_twice(|| peer.journal_status(img)).await? {
                            // Caught up is not enough: the local rbd-mirror
                            // must also have finished with the demotion. A
                            // promote while its replayer is still stopping
                            // (within ~1 s of the demotion arriving; Ceph
                            // accepts it) left the old primary in
                            // "split-brain detected" on the lab, 1 time in 3.
                            // Ceph's own QA waits for up+unknown on the
                            // promoting side first (qa/workunits/rbd/rbd_mirror_journal.sh).
                            Ok(j) if j.peers_caught_up() => {
                                let state = self
                                    .local_status(img)
                                    .await?
                                    .map(|s| s.state)
                                    .unwrap_or_default();
                                if state != "up+unknown" {
                                    replayer = Some(state);
                                }
                                replayer.is_none()
                            }
                            Ok(_) => false,
                            Err(e) if e.kind == RbdErrorKind::Unavailable => {
                                return Err(ImageEnd::Failed(Failure::new(
                                    Reason::PeerUnavailable,
                                    format!(
                                        "{peer_name} is not answering ({e}); if it is lost, run an unplanned failover with force: \"true\""
                                    ),
                                )));
                            }
                            Err(_) => false,
                        }
                    }
                }
                _ => {
                    let snaps = self
                        .read_twice(|| self.sites.local.snapshots(img))
                        .await?
                        .map_err(|e| self.ceph_failure(e, &site))?;
                    peer_primary != Some(true) && snapshot_demotion_arrived(&snaps)
                }
            };
            if !arrived && self.sites.peer.is_none() {
                // Without the peer's Secret, a peer whose daemon stopped
                // reporting is the sign of a lost site.
                if let Some(s) = self.local_status(img).await?
                    && !s.peer_sites.is_empty()
                    && s.peer_sites.iter().all(|p| p.state.starts_with("down+"))
                {
                    return Err(ImageEnd::Failed(Failure::new(
                        Reason::PeerUnavailable,
                        format!(
                            "the peer of {img} stopped reporting ({}), so its demotion cannot arrive; \
                             if the peer site is lost, run an unplanned failover with force: \"true\"",
                            s.peer_sites
                                .iter()
                                .map(|p| format!("{} {}", p.site_name, p.state))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )));
                }
            }
            if arrived {
                match self
                    .mutate(img, "promote", self.sites.local.promote(img, false))
                    .await?
                {
                    Ok(()) => return self.confirm(img, true, "promoted").await,
                    Err(e) if e.kind == RbdErrorKind::AlreadyPrimary => {
                        return self.observe(img, "already-primary").await;
                    }
                    // EBUSY: "not yet"; EROFS: a snapshot race. Both clear up.
                    Err(e)
                        if matches!(
                            e.kind,
                            RbdErrorKind::NotYetPropagated | RbdErrorKind::Transient
                        ) => {}
                    // A failed call does not prove nothing happened. The
                    // proof that the peer demoted held before the call, so
                    // primary here (and the peer not) is this promote's doing.
                    Err(e) => {
                        return match self.read(self.sites.local.info(img)).await? {
                            Ok(info) if info.is_primary() == Some(true) => {
                                if self.peer_primary(img).await? == Some(true) {
                                    return Err(both_primary(img, &site, &peer_name));
                                }
                                self.observe(img, "promoted").await
                            }
                            // It did not land and the site answers: a lost
                            // answer, not a refusal. Prove and try again.
                            Ok(_)
                                if matches!(
                                    e.kind,
                                    RbdErrorKind::Unavailable | RbdErrorKind::OutcomeUnknown
                                ) =>
                            {
                                self.set_waiting(format!(
                                    "promote of {img} on {site} did not answer ({e}); trying again"
                                ));
                                self.pause(&mut attempt).await?;
                                continue;
                            }
                            Ok(_) => Err(self.ceph_failure(e, &site)),
                            Err(read) => Err(unknown_after(img, &site, &e, &read)),
                        };
                    }
                }
            }
            let why = match (peer_primary, replayer) {
                (Some(true), _) => format!("{peer_name} is still primary"),
                (_, Some(state)) => format!(
                    "rbd-mirror on {site} is still finishing the replay of {peer_name}'s demotion ({state})"
                ),
                _ => format!("{peer_name}'s demotion has not arrived yet"),
            };
            self.set_waiting(format!("waiting to promote {img} on {site}: {why}"));
            self.pause(&mut attempt).await?;
        }
    }

    async fn force_promote(&self, img: &ImageSpec) -> Step<ImageOutcome> {
        let site = self.sites.local_name.clone();
        let info = self.local_info(img).await?;
        if info.is_primary() == Some(true) {
            return self.observe(img, "already-primary").await;
        }
        let before = self.local_status(img).await?;
        let window = before
            .as_ref()
            .and_then(last_sync)
            .unwrap_or_else(|| "unknown".into());
        // Written ahead: whatever happens next, the run reports that a forced
        // promote was attempted and what it may have cost.
        let snapshot = {
            let mut p = self.progress.lock().expect("progress");
            p.forced.insert(img.to_string(), window.clone());
            p.clone()
        };
        self.checkpoint.save(&snapshot, true).await.map_err(|e| {
            ImageEnd::Failed(Failure::new(
                Reason::CephError,
                format!("could not record the forced promote of {img}: {e}"),
            ))
        })?;
        match self
            .mutate(img, "force-promote", self.sites.local.promote(img, true))
            .await?
        {
            Ok(()) => {}
            Err(e) if e.kind == RbdErrorKind::AlreadyPrimary => {}
            // Read again: a forced promote that took effect despite the
            // error is done; the confirmation below decides.
            Err(e) => match self.read(self.sites.local.info(img)).await? {
                Ok(info) if info.is_primary() == Some(true) => {}
                Ok(_) => return Err(self.ceph_failure(e, &site)),
                Err(read) => return Err(unknown_after(img, &site, &e, &read)),
            },
        }
        let mut o = self.confirm(img, true, "force-promoted").await?;
        if o.state.last_sync.is_none() && window != "unknown" {
            o.state.last_sync = Some(window);
        }
        Ok(o)
    }

    async fn resync(&self, img: &ImageSpec) -> Step<ImageOutcome> {
        let site = self.sites.local_name.clone();
        let key = img.to_string();
        let recorded = self
            .progress
            .lock()
            .expect("progress")
            .resync_issued
            .get(&key)
            .cloned();
        // A send that failed may or may not have taken effect.
        let mut unsure = false;
        let old_id = match recorded {
            // Recorded by an earlier attempt or controller: it may or may
            // not have been sent (a crash between the record and the call,
            // or a call that failed). While the image still has its old id,
            // sending it again is harmless (it sets the same request flag);
            // once the id changed or the image is gone, rbd-mirror acted on
            // it, and a second one would copy the whole image again.
            Some(id) => {
                if let Ok(info) = self.read(self.sites.local.info(img)).await?
                    && info.id == id
                    && info.is_primary() == Some(false)
                {
                    unsure = !self.send_resync(img, &site).await?;
                }
                id
            }
            None => {
                let info = self.local_info(img).await?;
                if info.is_primary() == Some(true) {
                    return Err(ImageEnd::Failed(Failure::new(
                        Reason::ResyncOnPrimary,
                        format!(
                            "{img} is primary on {site}: resync discards the local copy, so it only applies to a non-primary image; demote it first if {site} lost the split-brain"
                        ),
                    )));
                }
                if self.stop.is_cancelled() {
                    return Err(ImageEnd::Stopped);
                }
                let snapshot = {
                    let mut p = self.progress.lock().expect("progress");
                    p.resync_issued.insert(key.clone(), info.id.clone());
                    p.clone()
                };
                self.checkpoint.save(&snapshot, true).await.map_err(|e| {
                    ImageEnd::Failed(Failure::new(
                        Reason::CephError,
                        format!("could not record the resync of {img} before issuing it: {e}"),
                    ))
                })?;
                unsure = !self.send_resync(img, &site).await?;
                info.id
            }
        };
        // Done when the image is back with a new id and replaying; it is
        // absent (or its mirroring disabled) for a while in between
        // (ceph-lab.md P14): after a recorded resync that means "in
        // progress", never a failure.
        let mut attempt = 0;
        let since = tokio::time::Instant::now();
        loop {
            match self.read(self.sites.local.info(img)).await? {
                // rbd-mirror takes a resync up within seconds; a failed send
                // that still shows the old id after this long did not land:
                // send it again (harmless while the id is unchanged).
                Ok(info)
                    if unsure && info.id == old_id && since.elapsed() > RESYNC_UNSURE_AFTER =>
                {
                    unsure = !self.send_resync(img, &site).await?;
                }
                Ok(info) if info.id != old_id && info.is_primary() == Some(false) => {
                    let status = self.local_status(img).await?;
                    if status.as_ref().is_some_and(|s| s.state == "up+replaying") {
                        return Ok(ImageOutcome {
                            outcome: "resynced".into(),
                            state: image_state(&info, status.as_ref()),
                        });
                    }
                    self.set_waiting(format!(
                        "waiting for {img} on {site} to replay after the resync"
                    ));
                }
                Ok(_) => self.set_waiting(format!(
                    "waiting for rbd-mirror on {site} to recreate {img}"
                )),
                Err(e)
                    if matches!(
                        e.kind,
                        RbdErrorKind::NotFound | RbdErrorKind::MirroringDisabled
                    ) =>
                {
                    self.set_waiting(format!("{img} is being copied again on {site}"))
                }
                Err(e) => return Err(self.ceph_failure(e, &site)),
            }
            self.pause(&mut attempt).await?;
        }
    }

    /// Sends a resync whose intent is already recorded: from here it is
    /// issued even if a cancel arrives (the record says it may have been).
    /// True when Ceph confirmed it; false when the call failed in a way that
    /// does not say whether it landed (the wait after it decides).
    async fn send_resync(&self, img: &ImageSpec, site: &str) -> Step<bool> {
        self.claim(img, "resync").await?;
        let sent = self.sites.local.resync(img).await;
        self.landed(img);
        match sent {
            Ok(()) => Ok(true),
            Err(e) if e.kind == RbdErrorKind::ResyncOnPrimary => Err(ImageEnd::Failed(
                Failure::new(Reason::ResyncOnPrimary, format!("{img} on {site}: {e}")),
            )),
            // Gone or disabled right after the call: rbd-mirror took it up.
            Err(e)
                if matches!(
                    e.kind,
                    RbdErrorKind::NotFound | RbdErrorKind::MirroringDisabled
                ) =>
            {
                Ok(true)
            }
            Err(e) if e.kind == RbdErrorKind::PermissionDenied => Err(self.ceph_failure(e, site)),
            // A failed call does not prove nothing happened: "possibly
            // issued" until the id changes.
            Err(_) => Ok(false),
        }
    }
}

/// Every mirror-enabled image of the step's pool (or namespace), as
/// `pool/image`. A name this controller cannot act on, or more images than
/// one step may hold, fails the step naming them: silently dropping one
/// would report a partial failover as a success.
pub async fn mirror_images<C: Ceph>(
    step: &ResolvedStep,
    local: &C,
    site: &str,
) -> Result<Vec<String>, Failure> {
    let (pool, ns) = (&step.pool, step.rados_namespace.as_deref());
    let names = local
        .mirror_images(pool, ns)
        .await
        .map_err(|e| ceph_failure(&e, site))?;
    select_all(&names, pool, ns, site)
}

/// The pure half of `mirror_images`.
pub fn select_all(
    names: &[String],
    pool: &str,
    ns: Option<&str>,
    site: &str,
) -> Result<Vec<String>, Failure> {
    let mut good = vec![];
    let mut bad = vec![];
    for n in names {
        match ImageSpec::parse(n, pool, ns) {
            Ok(s) => good.push(s.to_string()),
            Err(_) => bad.push(n.escape_debug().to_string()),
        }
    }
    if !bad.is_empty() {
        return Err(Failure::new(
            Reason::InvalidParams,
            format!(
                "allImages: {} mirrored image name(s) in {pool} on {site} are not names this controller acts on: {}; \
                 name the images to act on with images instead",
                bad.len(),
                bad.join(", ")
            ),
        ));
    }
    if good.len() > super::resolve::MAX_IMAGES {
        return Err(Failure::new(
            Reason::InvalidParams,
            format!(
                "allImages: {pool} on {site} has {} mirrored images; one step acts on at most {}: \
                 split them over several steps with images",
                good.len(),
                super::resolve::MAX_IMAGES
            ),
        ));
    }
    Ok(good)
}

/// How long a demote looks again at an image's lock holders before it
/// calls the image in use.
const IN_USE_GRACE: Duration = Duration::from_secs(10);

/// How long a resync whose send failed may show its old id before it is
/// sent again.
const RESYNC_UNSURE_AFTER: Duration = Duration::from_secs(10);

/// A mutation failed and the image could not be read after it: whether it
/// took effect is unknown. Retryable: the next attempt reads it first.
fn unknown_after(img: &ImageSpec, site: &str, e: &RbdError, read: &RbdError) -> ImageEnd {
    ImageEnd::Failed(Failure::new(
        Reason::CephUnavailable,
        format!(
            "the outcome on {img} is unknown: the call failed ({e}) and {site} could not be read after it ({read}); \
             the next attempt reads the image again before acting"
        ),
    ))
}

fn split_brain(img: &ImageSpec, site: &str, description: &str) -> ImageEnd {
    ImageEnd::Failed(Failure::new(
        Reason::SplitBrain,
        format!(
            "{img} is in split-brain on {site} ({description}): both sites wrote as primary. Pick the copy to keep, \
             demote the other site and resync it (the failback pipeline does this)"
        ),
    ))
}

fn both_primary(img: &ImageSpec, site: &str, peer: &str) -> ImageEnd {
    ImageEnd::Failed(Failure::new(
        Reason::SplitBrain,
        format!(
            "{img} is primary on both {site} and {peer}: a split-brain (after a forced promote). Pick the copy to keep, \
             demote the other site and resync it"
        ),
    ))
}

pub fn ceph_failure(e: &RbdError, site: &str) -> Failure {
    match e.kind {
        RbdErrorKind::NotFound => Failure::new(
            Reason::ImageNotFound,
            format!(
                "{} was not found on {site} ({e}): check the name, the pool and that it is mirrored to this site",
                e.target
            ),
        ),
        RbdErrorKind::MirroringDisabled => Failure::new(
            Reason::MirroringDisabled,
            format!("mirroring is not enabled on {} on {site} ({e})", e.target),
        ),
        RbdErrorKind::Unavailable => Failure::new(
            Reason::CephUnavailable,
            format!(
                "{site} is not answering ({e}): check its monitors and the connection in its Secret"
            ),
        ),
        RbdErrorKind::PermissionDenied => Failure::new(
            Reason::Forbidden,
            format!(
                "Ceph on {site} refused the client of its Secret ({e}): it needs mon 'profile rbd', osd 'profile rbd pool=...'"
            ),
        ),
        RbdErrorKind::NoBinary => Failure::new(
            Reason::CephError,
            format!("{e}: install ceph-common (the rbd CLI) beside the controller"),
        ),
        _ => Failure::new(Reason::CephError, format!("{e} on {site}")),
    }
}

fn unix_to_rfc3339(secs: i64) -> Option<String> {
    jiff::Timestamp::from_second(secs)
        .ok()
        .map(crate::contract::format_time)
}

/// The last completed sync from the primary, as far as Ceph reports it.
pub fn last_sync(s: &MirrorImageStatus) -> Option<String> {
    let own = s.replay().and_then(|r| r.local_snapshot_timestamp);
    let peer = || {
        s.peer_sites
            .iter()
            .filter_map(|p| crate::ceph::model::parse_replay(&p.description))
            .find_map(|r| r.local_snapshot_timestamp)
    };
    own.or_else(peer).and_then(unix_to_rfc3339)
}

pub fn image_state(info: &ImageInfo, status: Option<&MirrorImageStatus>) -> ImageState {
    ImageState {
        role: match info.is_primary() {
            Some(true) => "primary".into(),
            Some(false) => "non-primary".into(),
            None => "unknown".into(),
        },
        state: status.map(|s| s.state.clone()).unwrap_or_default(),
        last_sync: status.and_then(last_sync),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_images_fails_naming_every_name_it_cannot_act_on() {
        let names = vec![
            "csi-vol-1".to_string(),
            "-n".to_string(),
            "bad name".to_string(),
        ];
        let f = select_all(&names, "rp", None, "site-a").unwrap_err();
        assert_eq!(f.reason, Reason::InvalidParams);
        assert!(
            f.message.contains("2 mirrored image name(s)"),
            "{}",
            f.message
        );
        assert!(f.message.contains("-n") && f.message.contains("bad name"));
        let ok = select_all(&names[..1], "rp", None, "site-a").unwrap();
        assert_eq!(ok, vec!["rp/csi-vol-1".to_string()]);
    }

    #[test]
    fn all_images_is_capped_like_images() {
        let names: Vec<String> = (0..=super::super::resolve::MAX_IMAGES)
            .map(|i| format!("img-{i}"))
            .collect();
        let f = select_all(&names, "rp", None, "site-a").unwrap_err();
        assert!(f.message.contains("at most"), "{}", f.message);
    }
}

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
    Stopped,
}

type Step<T> = Result<T, ImageEnd>;

struct Ctx<'a, C, K> {
    step: &'a ResolvedStep,
    sites: &'a Sites<C>,
    checkpoint: &'a K,
    progress: Arc<Mutex<Progress>>,
    /// Cancelled by the caller (cancel, timeout) or by the first failing image.
    stop: CancellationToken,
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
    let stop = cancel.child_token();
    let ctx = Ctx {
        step,
        sites,
        checkpoint,
        progress,
        stop: stop.clone(),
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
    let pending: Vec<String> = {
        let p = ctx.progress.lock().expect("progress");
        images
            .iter()
            .filter(|i| !p.done.contains_key(*i))
            .cloned()
            .collect()
    };
    let mut first_failure: Option<Failure> = None;
    let mut stopped = false;
    let ctx_ref = &ctx;
    let mut runs = futures::stream::iter(pending)
        .map(|img| async move {
            // A failing image stops images not yet started.
            if ctx_ref.stop.is_cancelled() {
                return (img, ImageEnd::Stopped);
            }
            let spec = ImageSpec::parse(
                &img,
                &ctx_ref.step.pool,
                ctx_ref.step.rados_namespace.as_deref(),
            )
            .expect("image names were validated when the step was resolved");
            let end = match ctx_ref.image(&spec).await {
                Ok(o) => ImageEnd::Done(o),
                Err(e) => e,
            };
            (img, end)
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
                first_failure.get_or_insert(f);
                ctx.stop.cancel();
            }
            ImageEnd::Stopped => stopped = true,
        }
    }
    drop(runs);
    let end = match first_failure {
        Some(f) => StepEnd::Failed(f),
        None if cancel.is_cancelled() || stopped => StepEnd::Stopped,
        None => StepEnd::Succeeded,
    };
    ctx.finish(end, images, started)
}

impl<C: Ceph, K: Checkpoint> Ctx<'_, C, K> {
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

    /// A mutating call: never started once the step stops, never interrupted
    /// once started (librbd cannot be interrupted safely).
    async fn mutate<T>(&self, fut: impl Future<Output = T>) -> Step<T> {
        if self.stop.is_cancelled() {
            return Err(ImageEnd::Stopped);
        }
        Ok(fut.await)
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
            .read(self.sites.local.info(img))
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
        match self.read(peer.info(img)).await? {
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

    async fn image(&self, img: &ImageSpec) -> Step<ImageOutcome> {
        match self.step.action {
            Action::Status => self.status(img).await,
            Action::Demote => self.demote(img).await,
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

    async fn demote(&self, img: &ImageSpec) -> Step<ImageOutcome> {
        let site = &self.sites.local_name;
        let info = self.local_info(img).await?;
        if info.is_primary() == Some(false) {
            return self.observe(img, "already-non-primary").await;
        }
        if !self.step.force {
            let lockers = self
                .read(self.sites.local.lockers(img))
                .await?
                .map_err(|e| self.ceph_failure(e, site))?;
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
        match self.mutate(self.sites.local.demote(img)).await? {
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
            Err(e) => return Err(self.ceph_failure(e, site)),
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
                        match self.read(peer.journal_status(img)).await? {
                            Ok(j) => j.peers_caught_up(),
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
                        .read(self.sites.local.snapshots(img))
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
                match self.mutate(self.sites.local.promote(img, false)).await? {
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
                    Err(e) => return Err(self.ceph_failure(e, &site)),
                }
            }
            let why = match peer_primary {
                Some(true) => format!("{peer_name} is still primary"),
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
        match self.mutate(self.sites.local.promote(img, true)).await? {
            Ok(()) => {}
            Err(e) if e.kind == RbdErrorKind::AlreadyPrimary => {}
            Err(e) => return Err(self.ceph_failure(e, &site)),
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
        let old_id = match recorded {
            // Issued (or about to be) by an earlier attempt or controller:
            // never again, or the image would be copied twice.
            Some(id) => id,
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
                // From here the resync is issued even if a cancel arrives:
                // the record says it may have been.
                match self.sites.local.resync(img).await {
                    Ok(()) => {}
                    Err(e) if e.kind == RbdErrorKind::ResyncOnPrimary => {
                        return Err(ImageEnd::Failed(Failure::new(
                            Reason::ResyncOnPrimary,
                            format!("{img} on {site}: {e}"),
                        )));
                    }
                    Err(e) => return Err(self.ceph_failure(e, &site)),
                }
                info.id
            }
        };
        // Done when the image is back with a new id and replaying; it is
        // absent for a while in between (ceph-lab.md P14).
        let mut attempt = 0;
        loop {
            match self.read(self.sites.local.info(img)).await? {
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
                Err(e) if e.kind == RbdErrorKind::NotFound => {
                    self.set_waiting(format!("{img} is being copied again on {site}"))
                }
                Err(e) => return Err(self.ceph_failure(e, &site)),
            }
            self.pause(&mut attempt).await?;
        }
    }
}

/// Every mirror-enabled image of the step's pool (or namespace), as `pool/image`.
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
    Ok(names
        .iter()
        .filter_map(|n| ImageSpec::parse(n, pool, ns).ok())
        .map(|s| s.to_string())
        .collect())
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

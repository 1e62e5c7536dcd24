//! The per-image planner: from what was observed of one image, and what
//! this step already did to it, to the next thing to do. No I/O and no
//! clock: the executor performs each [`Next`], feeds back what it saw (and
//! the time since the image was taken up), and asks again. So every
//! decision a failover makes can be tested with observations alone, and a
//! controller that resumes a run decides from the same inputs.
//!
//! One round of observations lasts until a mutation or a wait: after either
//! the executor starts from nothing, so no decision rests on a read taken
//! before the last change.

mod demote;
mod force;
mod promote;
mod resync;
mod status;
#[cfg(test)]
mod tests;

use std::time::Duration;

use super::failures::{ceph_failure, mirroring_disabled};
use super::outcome::{Failure, ImageOutcome, image_state};
use crate::api::{Action, WaitFor};
use crate::ceph::model::{ImageInfo, JournalStatus, Locker, MirrorImageStatus, SnapEntry};
use crate::ceph::{ImageSpec, RbdError, RbdErrorKind};

/// What the step was asked to do, the same for every image.
#[derive(Clone, Debug)]
pub struct Intent {
    pub action: Action,
    pub force: bool,
    pub wait_for: Option<WaitFor>,
    /// The site acted on.
    pub site: String,
    /// The other site, when the step was given its Secret (`peerCluster`).
    pub peer: Option<String>,
}

impl Intent {
    fn peer_name(&self) -> &str {
        self.peer.as_deref().unwrap_or("the peer site")
    }
}

/// A read the planner needs before it can decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Read {
    /// `rbd info` on the local site.
    Info,
    /// `rbd mirror image status` on the local site.
    Status,
    /// `rbd lock ls` on the local site.
    Lockers,
    /// `rbd journal status` on the local site.
    Journal,
    /// `rbd snap ls --all` on the local site.
    Snapshots,
    /// `rbd info` on the peer.
    PeerInfo,
    /// `rbd journal status` on the peer.
    PeerJournal,
}

/// A mutating `rbd` command on the local site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// One journaled no-op (image-meta set and remove), so a demotion has a
    /// committed entry to chain to.
    JournalMarker,
    Demote,
    Promote,
    ForcePromote,
    Resync,
}

impl Command {
    /// The name recorded in the run's claim and in-flight record.
    pub fn name(self) -> &'static str {
        match self {
            Command::JournalMarker => "journal-marker",
            Command::Demote => "demote",
            Command::Promote => "promote",
            Command::ForcePromote => "force-promote",
            Command::Resync => "resync",
        }
    }

    /// A resync is sent once its write-ahead record is stored, even if a
    /// cancel arrives in between: the record already says it may have been.
    pub fn follows_its_record(self) -> bool {
        self == Command::Resync
    }
}

/// A write-ahead record the run must hold before the command that follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A forced promote is about to be issued; `window` is the last sync
    /// (the data that may be lost), or "unknown".
    Forced { window: String },
    /// A resync is about to be issued to the image with this id.
    ResyncIssued { id: String },
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Read these (at once), then ask again.
    Read(Vec<Read>),
    /// Every check of a demote passed: the executor holds the image here
    /// until every image of the step is checked, then asks again.
    Checked,
    /// Store this record durably, then ask again.
    Record(Record),
    /// Issue this command, report it with [`ImagePlan::landed`], ask again.
    Mutate(Command),
    /// Nothing to do yet: pause, then ask again with fresh observations.
    Wait(String),
    Done(ImageOutcome),
    Fail(Failure),
}

/// The reads of one round; `None` is "not read yet".
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub info: Option<Result<ImageInfo, RbdError>>,
    pub status: Option<Result<MirrorImageStatus, RbdError>>,
    pub lockers: Option<Result<Vec<Locker>, RbdError>>,
    pub journal: Option<Result<JournalStatus, RbdError>>,
    pub snapshots: Option<Result<Vec<SnapEntry>, RbdError>>,
    pub peer_info: Option<Result<ImageInfo, RbdError>>,
    pub peer_journal: Option<Result<JournalStatus, RbdError>>,
}

impl Observed {
    fn has(&self, r: Read) -> bool {
        match r {
            Read::Info => self.info.is_some(),
            Read::Status => self.status.is_some(),
            Read::Lockers => self.lockers.is_some(),
            Read::Journal => self.journal.is_some(),
            Read::Snapshots => self.snapshots.is_some(),
            Read::PeerInfo => self.peer_info.is_some(),
            Read::PeerJournal => self.peer_journal.is_some(),
        }
    }

    /// The reads of `want` not made yet, or `None` when all are in.
    pub fn missing(&self, want: &[Read]) -> Option<Next> {
        let m: Vec<Read> = want.iter().copied().filter(|r| !self.has(*r)).collect();
        (!m.is_empty()).then_some(Next::Read(m))
    }
}

/// Returns `Next::Read` from the enclosing planner function until the
/// reads are in.
macro_rules! need {
    ($obs:expr, $($r:expr),+) => {
        if let Some(next) = $obs.missing(&[$($r),+]) {
            return next;
        }
    };
}
use need;

/// The local image as a step may act on it: read, and mirror-enabled.
fn enabled<'o>(obs: &'o Observed, img: &ImageSpec, site: &str) -> Result<&'o ImageInfo, Failure> {
    match obs.info.as_ref().expect("info read first") {
        Ok(info) if info.mirroring_enabled() => Ok(info),
        Ok(_) => Err(mirroring_disabled(img, site)),
        Err(e) => Err(ceph_failure(e, site)),
    }
}

/// The local mirror status. It is advisory (the role comes from `rbd
/// info`), so only a site that does not answer fails the image.
fn status<'o>(obs: &'o Observed, site: &str) -> Result<Option<&'o MirrorImageStatus>, Failure> {
    match obs.status.as_ref().expect("status read first") {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind == RbdErrorKind::Unavailable => Err(ceph_failure(e, site)),
        Err(_) => Ok(None),
    }
}

/// Whether the peer is primary (`None`: no peer given, or it lacks the image).
fn peer_primary(obs: &Observed, intent: &Intent, img: &ImageSpec) -> Result<Option<bool>, Failure> {
    let Some(peer) = &intent.peer else {
        return Ok(None);
    };
    match obs.peer_info.as_ref().expect("peer info read first") {
        Ok(info) => Ok(info.is_primary()),
        Err(e) if e.kind == RbdErrorKind::Unavailable => {
            Err(super::failures::peer_unavailable(img, peer, e))
        }
        Err(e) if e.kind == RbdErrorKind::NotFound => Ok(None),
        Err(e) => Err(ceph_failure(e, peer)),
    }
}

/// The reads that decide whether the peer is primary: none without a peer.
fn peer_reads(intent: &Intent) -> Option<Read> {
    intent.peer.as_ref().map(|_| Read::PeerInfo)
}

/// How a successful path ends.
#[derive(Clone, Debug, PartialEq)]
enum Finish {
    /// Read the image and its status and report `outcome`.
    Observe(&'static str),
    /// Wait until `rbd info` reports the role the command gave (it changes
    /// at once after the command: a bounded confirmation, not a guess), then
    /// report `outcome`. The mirror status is not read: right after a role
    /// change it still describes the old role for seconds (rbd-facts P9),
    /// and on a busy host every rbd process counts.
    Confirm {
        primary: bool,
        outcome: &'static str,
        /// A forced promote's data-loss window, reported when Ceph no longer
        /// says when the last sync was.
        window: Option<String>,
    },
}

impl Finish {
    fn next(&self, obs: &Observed, intent: &Intent, img: &ImageSpec) -> Next {
        match self {
            Finish::Observe(outcome) => {
                need!(obs, Read::Info, Read::Status);
                let info = match enabled(obs, img, &intent.site) {
                    Ok(i) => i,
                    Err(f) => return Next::Fail(f),
                };
                match status(obs, &intent.site) {
                    Ok(s) => Next::Done(ImageOutcome {
                        outcome: (*outcome).into(),
                        state: image_state(info, s),
                    }),
                    Err(f) => Next::Fail(f),
                }
            }
            Finish::Confirm {
                primary,
                outcome,
                window,
            } => {
                need!(obs, Read::Info);
                let info = match enabled(obs, img, &intent.site) {
                    Ok(i) => i,
                    Err(f) => return Next::Fail(f),
                };
                if info.is_primary() != Some(*primary) {
                    let role = if *primary { "primary" } else { "non-primary" };
                    return Next::Wait(format!(
                        "waiting for {img} to report {role} on {}",
                        intent.site
                    ));
                }
                let mut state = image_state(info, None);
                if let Some(w) = window.as_ref().filter(|w| *w != "unknown")
                    && state.last_sync.is_none()
                {
                    state.last_sync = Some(w.clone());
                }
                Next::Done(ImageOutcome {
                    outcome: (*outcome).into(),
                    state,
                })
            }
        }
    }
}

/// One image's plan: the action's state machine.
#[derive(Clone, Debug)]
pub struct ImagePlan {
    intent: Intent,
    img: ImageSpec,
    state: State,
    /// Set when a command found its work already done by someone else.
    acted_by_another: Option<String>,
}

#[derive(Clone, Debug)]
enum State {
    Status,
    Demote(demote::Demote),
    Promote(promote::Promote),
    Force(force::Force),
    Resync(resync::Resync),
}

impl ImagePlan {
    /// `resync_recorded`: the image id a resync of an earlier attempt (or
    /// controller) recorded before it may have issued one.
    pub fn new(intent: Intent, img: ImageSpec, resync_recorded: Option<String>) -> ImagePlan {
        let state = match (intent.action, intent.force) {
            (Action::Status, _) => State::Status,
            (Action::Demote, _) => State::Demote(demote::Demote::default()),
            (Action::Promote, true) => State::Force(force::Force::default()),
            (Action::Promote, false) => State::Promote(promote::Promote::default()),
            (Action::Resync, _) => State::Resync(resync::Resync::new(resync_recorded)),
        };
        ImagePlan {
            intent,
            img,
            state,
            acted_by_another: None,
        }
    }

    /// What another actor did to the image between this plan's check and
    /// its command, when the command found the work done (the run reports
    /// it as a Warning event).
    pub fn acted_by_another(&self) -> Option<&str> {
        self.acted_by_another.as_deref()
    }

    pub fn image(&self) -> &ImageSpec {
        &self.img
    }

    /// What to do next, given this round's reads and the time since the
    /// image was taken up.
    pub fn next(&mut self, obs: &Observed, now: Duration) -> Next {
        let (i, img) = (&self.intent, &self.img);
        match &mut self.state {
            State::Status => status::next(i, img, obs),
            State::Demote(d) => d.next(i, img, obs, now),
            State::Promote(p) => p.next(i, img, obs),
            State::Force(f) => f.next(i, img, obs),
            State::Resync(r) => r.next(i, img, obs, now),
        }
    }

    /// The record asked for was stored.
    pub fn recorded(&mut self) {
        match &mut self.state {
            State::Force(f) => f.recorded(),
            State::Resync(r) => r.recorded(),
            _ => {}
        }
    }

    /// The command asked for returned `result`.
    pub fn landed(&mut self, cmd: Command, result: Result<(), RbdError>, now: Duration) {
        if let Err(e) = &result {
            // Checked just before: the image's role changed under us.
            let done_by_another = match cmd {
                Command::Demote => e.kind == RbdErrorKind::NotPrimary,
                Command::Promote | Command::ForcePromote => e.kind == RbdErrorKind::AlreadyPrimary,
                _ => false,
            };
            if done_by_another {
                self.acted_by_another = Some(format!(
                    "{} of {} on {} found it already done ({e})",
                    cmd.name(),
                    self.img,
                    self.intent.site
                ));
            }
        }
        let (i, img) = (&self.intent, &self.img);
        match &mut self.state {
            State::Demote(d) => d.landed(i, img, cmd, result),
            State::Promote(p) => p.landed(i, img, result),
            State::Force(f) => f.landed(result),
            State::Resync(r) => r.landed(i, img, result, now),
            State::Status => {}
        }
    }
}

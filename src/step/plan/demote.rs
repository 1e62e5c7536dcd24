//! A demote. Every image of the step is checked (role, who holds it, its
//! journal) before the first is touched: a half-demoted application is the
//! worst state a failover can leave. After a failed call the image is read
//! again: a demote that took effect is a demote.

use std::time::Duration;

use super::{Command, Finish, Intent, Next, Observed, Read, enabled, need};
use crate::ceph::model::MirrorMode;
use crate::ceph::{ImageSpec, RbdError, RbdErrorKind};
use crate::step::failures::{ceph_failure, unknown_after};
use crate::step::outcome::{Failure, Reason};

/// How long a demote looks again at an image's lock holders before it
/// calls the image in use: a lock held for a moment (the local rbd-mirror
/// restarting its replayers, e.g. right after the site came back) is not an
/// application.
pub const IN_USE_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
pub(super) struct Demote {
    stage: Stage,
}

#[derive(Clone, Debug, Default)]
enum Stage {
    /// Before the barrier: checking. `locked_since`: when a lock holder was
    /// first seen.
    #[default]
    Check,
    Locked {
        since: Duration,
    },
    /// Checked; `mark`: the journal has never committed an entry, so one
    /// journaled no-op comes first.
    Ready {
        mark: bool,
    },
    /// The no-op landed: its entry must now be committed.
    Marked,
    /// The demote failed with this error: read again before deciding.
    Reread(RbdError),
    Finish(Finish),
    Failed(Failure),
}

impl Demote {
    pub(super) fn next(
        &mut self,
        intent: &Intent,
        img: &ImageSpec,
        obs: &Observed,
        now: Duration,
    ) -> Next {
        let site = &intent.site;
        match &self.stage {
            Stage::Check | Stage::Locked { .. } => self.check(intent, img, obs, now),
            Stage::Ready { mark: true } => Next::Mutate(Command::JournalMarker),
            Stage::Ready { mark: false } => Next::Mutate(Command::Demote),
            Stage::Marked => {
                need!(obs, Read::Journal);
                match obs.journal.as_ref().expect("read") {
                    Ok(j) if j.master_committed() => {
                        self.stage = Stage::Ready { mark: false };
                        Next::Mutate(Command::Demote)
                    }
                    Ok(_) => Next::Fail(Failure::new(
                        Reason::CephError,
                        format!(
                            "{img} on {site}: its journal has no committed entry even after a journaled no-op, \
                             so a demotion now would leave {site} in split-brain after the promote; not demoted"
                        ),
                    )),
                    Err(e) => Next::Fail(ceph_failure(e, site)),
                }
            }
            Stage::Reread(e) => {
                need!(obs, Read::Info);
                match obs.info.as_ref().expect("read") {
                    Ok(info) if info.is_primary() == Some(false) => {
                        self.stage = Stage::Finish(demoted());
                        self.next(intent, img, obs, now)
                    }
                    Ok(_) => Next::Fail(ceph_failure(e, site)),
                    Err(read) => Next::Fail(unknown_after(img, site, e, read)),
                }
            }
            Stage::Finish(f) => f.next(obs, intent, img),
            Stage::Failed(f) => Next::Fail(f.clone()),
        }
    }

    fn check(&mut self, intent: &Intent, img: &ImageSpec, obs: &Observed, now: Duration) -> Next {
        let site = &intent.site;
        need!(obs, Read::Info);
        let info = match enabled(obs, img, site) {
            Ok(i) => i,
            Err(f) => return Next::Fail(f),
        };
        if info.is_primary() == Some(false) {
            self.stage = Stage::Finish(Finish::Observe("already-non-primary"));
            return Next::Checked;
        }
        if !intent.force {
            need!(obs, Read::Lockers);
            let lockers = match obs.lockers.as_ref().expect("read") {
                Ok(l) => l,
                Err(e) => return Next::Fail(ceph_failure(e, site)),
            };
            if !lockers.is_empty() {
                let who: Vec<&str> = lockers.iter().map(|l| l.locker.as_str()).collect();
                let since = match self.stage {
                    Stage::Locked { since } => since,
                    _ => now,
                };
                self.stage = Stage::Locked { since };
                if now.saturating_sub(since) <= IN_USE_GRACE {
                    return Next::Wait(format!(
                        "{img} on {site} is locked by {}: looking again before calling it in use",
                        who.join(", ")
                    ));
                }
                return Next::Fail(Failure::new(
                    Reason::ImageInUse,
                    format!(
                        "{img} on {site} is in use (exclusive lock held by {}): stop the application using it first, \
                         or set force: \"true\" to demote anyway (its writer will be cut off)",
                        who.join(", ")
                    ),
                ));
            }
        }
        let mark = if info.mode() == Some(MirrorMode::Journal) {
            need!(obs, Read::Journal);
            match obs.journal.as_ref().expect("read") {
                // A journal that never committed an entry would record a
                // demotion the new primary's promotion cannot chain to: the
                // old primary then reports split-brain
                // (JournalStatus::master_committed).
                Ok(j) => !j.master_committed(),
                Err(e) => return Next::Fail(ceph_failure(e, site)),
            }
        } else {
            false
        };
        self.stage = Stage::Ready { mark };
        Next::Checked
    }

    pub(super) fn landed(
        &mut self,
        intent: &Intent,
        img: &ImageSpec,
        cmd: Command,
        result: Result<(), RbdError>,
    ) {
        let site = &intent.site;
        self.stage = match (cmd, result) {
            (Command::JournalMarker, Ok(())) => Stage::Marked,
            (Command::JournalMarker, Err(e)) => Stage::Failed(ceph_failure(&e, site)),
            (_, Ok(())) => Stage::Finish(demoted()),
            (_, Err(e)) if e.kind == RbdErrorKind::NotPrimary => {
                Stage::Finish(Finish::Observe("already-non-primary"))
            }
            (_, Err(e)) if e.kind == RbdErrorKind::InUse => Stage::Failed(Failure::new(
                Reason::ImageInUse,
                format!(
                    "{img} on {site} is in use and its lock could not be taken ({e}): stop the application using it first"
                ),
            )),
            // A failed call does not prove nothing happened.
            (_, Err(e)) => Stage::Reread(e),
        };
    }
}

fn demoted() -> Finish {
    Finish::Confirm {
        primary: false,
        outcome: "demoted",
        window: None,
    }
}

//! A resync: recorded (with the image's id) before it is sent, and done
//! when the image is back with a new id and replaying. In between the
//! image is absent or its mirroring disabled for a while (ceph-lab.md
//! P14): after a recorded resync that means "in progress", never failure.

use std::time::Duration;

use super::{Command, Intent, Next, Observed, Read, Record, enabled, need, status};
use crate::ceph::{ImageSpec, RbdError, RbdErrorKind};
use crate::step::failures::ceph_failure;
use crate::step::outcome::{Failure, ImageOutcome, Reason, image_state};

/// How long a resync whose send failed may show its old id before it is
/// sent again: rbd-mirror takes a resync up within seconds.
pub const RESYNC_UNSURE_AFTER: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub(super) struct Resync {
    stage: Stage,
}

#[derive(Clone, Debug)]
enum Stage {
    /// Recorded by an earlier attempt or controller: it may or may not have
    /// been sent (a crash between the record and the call, or a call that
    /// failed).
    Resume {
        id: String,
    },
    Check,
    Recording {
        id: String,
    },
    Send {
        id: String,
    },
    /// Sent (or possibly sent); `unsure_since`: when a send failed in a way
    /// that does not say whether it landed.
    Wait {
        id: String,
        unsure_since: Option<Duration>,
    },
    Failed(Failure),
}

impl Resync {
    pub(super) fn new(recorded: Option<String>) -> Resync {
        Resync {
            stage: match recorded {
                Some(id) => Stage::Resume { id },
                None => Stage::Check,
            },
        }
    }

    pub(super) fn next(
        &mut self,
        intent: &Intent,
        img: &ImageSpec,
        obs: &Observed,
        now: Duration,
    ) -> Next {
        let site = &intent.site;
        match &self.stage {
            // While the image still has its old id, sending again is
            // harmless (it sets the same request flag); once the id changed
            // or the image is gone, rbd-mirror acted on it, and a second one
            // would copy the whole image again.
            Stage::Resume { id } => {
                need!(obs, Read::Info);
                let id = id.clone();
                match obs.info.as_ref().expect("read") {
                    Ok(info) if info.id == id && info.is_primary() == Some(false) => {
                        self.stage = Stage::Send { id };
                        Next::Mutate(Command::Resync)
                    }
                    _ => {
                        self.stage = Stage::Wait {
                            id,
                            unsure_since: None,
                        };
                        self.next(intent, img, obs, now)
                    }
                }
            }
            Stage::Check => {
                need!(obs, Read::Info);
                let info = match enabled(obs, img, site) {
                    Ok(i) => i,
                    Err(f) => return Next::Fail(f),
                };
                if info.is_primary() == Some(true) {
                    return Next::Fail(Failure::new(
                        Reason::ResyncOnPrimary,
                        format!(
                            "{img} is primary on {site}: resync discards the local copy, so it only applies to a non-primary image; demote it first if {site} lost the split-brain"
                        ),
                    ));
                }
                self.stage = Stage::Recording {
                    id: info.id.clone(),
                };
                Next::Record(Record::ResyncIssued {
                    id: info.id.clone(),
                })
            }
            Stage::Recording { id } => Next::Record(Record::ResyncIssued { id: id.clone() }),
            Stage::Send { .. } => Next::Mutate(Command::Resync),
            Stage::Wait { id, unsure_since } => {
                need!(obs, Read::Info);
                match obs.info.as_ref().expect("read") {
                    Ok(info)
                        if info.id == *id
                            && unsure_since
                                .is_some_and(|t| now.saturating_sub(t) > RESYNC_UNSURE_AFTER) =>
                    {
                        // A failed send that still shows the old id after
                        // this long did not land: send it again.
                        self.stage = Stage::Send { id: id.clone() };
                        Next::Mutate(Command::Resync)
                    }
                    Ok(info) if info.id != *id && info.is_primary() == Some(false) => {
                        need!(obs, Read::Status);
                        match status(obs, site) {
                            Ok(Some(s)) if s.state == "up+replaying" => Next::Done(ImageOutcome {
                                outcome: "resynced".into(),
                                state: image_state(info, Some(s)),
                            }),
                            Ok(_) => Next::Wait(format!(
                                "waiting for {img} on {site} to replay after the resync"
                            )),
                            Err(f) => Next::Fail(f),
                        }
                    }
                    Ok(_) => Next::Wait(format!(
                        "waiting for rbd-mirror on {site} to recreate {img}"
                    )),
                    Err(e)
                        if matches!(
                            e.kind,
                            RbdErrorKind::NotFound | RbdErrorKind::MirroringDisabled
                        ) =>
                    {
                        Next::Wait(format!("{img} is being copied again on {site}"))
                    }
                    Err(e) => Next::Fail(ceph_failure(e, site)),
                }
            }
            Stage::Failed(f) => Next::Fail(f.clone()),
        }
    }

    pub(super) fn recorded(&mut self) {
        if let Stage::Recording { id } = &self.stage {
            self.stage = Stage::Send { id: id.clone() };
        }
    }

    pub(super) fn landed(
        &mut self,
        intent: &Intent,
        img: &ImageSpec,
        result: Result<(), RbdError>,
        now: Duration,
    ) {
        let Stage::Send { id } = &self.stage else {
            return;
        };
        let id = id.clone();
        let site = &intent.site;
        self.stage = match result {
            Ok(()) => Stage::Wait {
                id,
                unsure_since: None,
            },
            Err(e) if e.kind == RbdErrorKind::ResyncOnPrimary => Stage::Failed(Failure::new(
                Reason::ResyncOnPrimary,
                format!("{img} on {site}: {e}"),
            )),
            // Gone or disabled right after the call: rbd-mirror took it up.
            Err(e)
                if matches!(
                    e.kind,
                    RbdErrorKind::NotFound | RbdErrorKind::MirroringDisabled
                ) =>
            {
                Stage::Wait {
                    id,
                    unsure_since: None,
                }
            }
            Err(e)
                if matches!(
                    e.kind,
                    RbdErrorKind::PermissionDenied | RbdErrorKind::KeyRejected
                ) =>
            {
                Stage::Failed(ceph_failure(&e, site))
            }
            // A failed call does not prove nothing happened: "possibly
            // issued" until the id changes.
            Err(_) => Stage::Wait {
                id,
                unsure_since: Some(now),
            },
        };
    }
}

//! A forced promote (the peer is lost): recorded before it is issued, with
//! the data-loss window, so the run reports it whatever happens next.

use super::{Command, Finish, Intent, Next, Observed, Read, Record, enabled, need, status};
use crate::ceph::{ImageSpec, RbdError, RbdErrorKind};
use crate::step::failures::{ceph_failure, unknown_after};
use crate::step::outcome::last_sync;

#[derive(Clone, Debug, Default)]
pub(super) struct Force {
    stage: Stage,
}

#[derive(Clone, Debug, Default)]
enum Stage {
    #[default]
    Check,
    /// The record of the forced promote is being stored.
    Recording(String),
    Send(String),
    Reread(RbdError, String),
    Finish(Finish),
}

impl Force {
    pub(super) fn next(&mut self, intent: &Intent, img: &ImageSpec, obs: &Observed) -> Next {
        let site = &intent.site;
        match &self.stage {
            Stage::Check => {
                need!(obs, Read::Info);
                let info = match enabled(obs, img, site) {
                    Ok(i) => i,
                    Err(f) => return Next::Fail(f),
                };
                if info.is_primary() == Some(true) {
                    self.stage = Stage::Finish(Finish::Observe("already-primary"));
                    return self.next(intent, img, obs);
                }
                need!(obs, Read::Status);
                let window = match status(obs, site) {
                    Ok(s) => s.and_then(last_sync).unwrap_or_else(|| "unknown".into()),
                    Err(f) => return Next::Fail(f),
                };
                self.stage = Stage::Recording(window.clone());
                Next::Record(Record::Forced { window })
            }
            Stage::Recording(window) => Next::Record(Record::Forced {
                window: window.clone(),
            }),
            Stage::Send(_) => Next::Mutate(Command::ForcePromote),
            // A forced promote that took effect despite the error is done.
            Stage::Reread(e, window) => {
                need!(obs, Read::Info);
                match obs.info.as_ref().expect("read") {
                    Ok(info) if info.is_primary() == Some(true) => {
                        self.stage = Stage::Finish(forced(window.clone()));
                        self.next(intent, img, obs)
                    }
                    Ok(_) => Next::Fail(ceph_failure(e, site)),
                    Err(read) => Next::Fail(unknown_after(img, site, e, read)),
                }
            }
            Stage::Finish(f) => f.next(obs, intent, img),
        }
    }

    pub(super) fn recorded(&mut self) {
        if let Stage::Recording(w) = &self.stage {
            self.stage = Stage::Send(w.clone());
        }
    }

    pub(super) fn landed(&mut self, result: Result<(), RbdError>) {
        let Stage::Send(window) = &self.stage else {
            return;
        };
        let window = window.clone();
        self.stage = match result {
            Ok(()) => Stage::Finish(forced(window)),
            Err(e) if e.kind == RbdErrorKind::AlreadyPrimary => Stage::Finish(forced(window)),
            Err(e) => Stage::Reread(e, window),
        };
    }
}

fn forced(window: String) -> Finish {
    Finish::Confirm {
        primary: true,
        outcome: "force-promoted",
        window: Some(window),
    }
}

//! How a promote without force is guarded against stale data: the one
//! place that decides whether the peer's demotion (and everything written
//! before it) has reached this site, so that promoting here loses nothing
//! and leaves no split-brain.
//!
//! Ceph's own non-forced promote is refused only while the image is
//! non-primary *and* the peer is primary; on an orphan (both sites
//! demoted) it succeeds even when this site missed the last writes
//! (ceph-lab.md P10). So the guard proves the demotion arrived itself:
//! - snapshot mode: the peer is not primary, and the newest mirror
//!   snapshot here is a replayed demotion snapshot (`snapshot_demotion_arrived`);
//! - journal mode (needs the peer's Secret): the peer is non-primary, every
//!   peer client of its journal committed up to the primary's position,
//!   and this site's rbd-mirror has finished with the demotion
//!   (`up+unknown`). A promote while the replayer is still stopping,
//!   within about a second of the demotion arriving, is accepted by Ceph
//!   and left the old primary in "split-brain detected" on the lab, one
//!   time in three; Ceph's own QA waits for `up+unknown` first
//!   (qa/workunits/rbd/rbd_mirror_journal.sh).
//!
//! Without the peer's Secret, a peer whose daemon stopped reporting is the
//! sign of a lost site: the guard refuses instead of waiting forever.

use super::failures::{ceph_failure, peer_unavailable};
use super::outcome::{Failure, Reason};
use super::plan::{Intent, Observed, Read};
use crate::ceph::model::{ImageInfo, MirrorMode, snapshot_demotion_arrived};
use crate::ceph::{ImageSpec, RbdErrorKind};

/// The guard's verdict on a non-primary image.
#[derive(Clone, Debug, PartialEq)]
pub enum Guard {
    /// Read these first.
    Need(Vec<Read>),
    /// The demotion arrived: promoting loses nothing.
    Proven,
    /// Not yet, and why (shown while the step waits).
    NotYet(String),
    /// It cannot be proven this way: the step fails with this.
    Refuse(Failure),
}

/// `peer_primary`: the peer's role as read (`None`: no peer given, or the
/// peer lacks the image).
pub fn judge(
    intent: &Intent,
    img: &ImageSpec,
    info: &ImageInfo,
    peer_primary: Option<bool>,
    obs: &Observed,
) -> Guard {
    let site = &intent.site;
    let peer_name = intent.peer.as_deref().unwrap_or("the peer site");
    // The local replayer's state while it still handles the demotion.
    let mut replayer: Option<String> = None;
    let arrived = match info.mode() {
        Some(MirrorMode::Journal) => {
            if intent.peer.is_none() {
                return Guard::Refuse(Failure::new(
                    Reason::PeerRequired,
                    format!(
                        "{img} is journal-mirrored: a promote without force needs peerCluster (the other site's Secret) \
                         to prove the peer demoted and the journal was replayed (a stale promote would otherwise succeed)"
                    ),
                ));
            }
            if peer_primary != Some(false) {
                false
            } else {
                let Some(journal) = &obs.peer_journal else {
                    return Guard::Need(vec![Read::PeerJournal]);
                };
                match journal {
                    Ok(j) if j.peers_caught_up() => {
                        let Some(status) = &obs.status else {
                            return Guard::Need(vec![Read::Status]);
                        };
                        let state = match status {
                            Ok(s) => s.state.clone(),
                            Err(e) if e.kind == RbdErrorKind::Unavailable => {
                                return Guard::Refuse(ceph_failure(e, site));
                            }
                            Err(_) => String::new(),
                        };
                        if state != "up+unknown" {
                            replayer = Some(state);
                        }
                        replayer.is_none()
                    }
                    Ok(_) => false,
                    Err(e) if e.kind == RbdErrorKind::Unavailable => {
                        return Guard::Refuse(peer_unavailable(img, peer_name, e));
                    }
                    Err(_) => false,
                }
            }
        }
        _ => {
            let Some(snaps) = &obs.snapshots else {
                return Guard::Need(vec![Read::Snapshots]);
            };
            match snaps {
                Ok(snaps) => peer_primary != Some(true) && snapshot_demotion_arrived(snaps),
                Err(e) => return Guard::Refuse(ceph_failure(e, site)),
            }
        }
    };
    if arrived {
        return Guard::Proven;
    }
    if intent.peer.is_none() {
        let Some(status) = &obs.status else {
            return Guard::Need(vec![Read::Status]);
        };
        match status {
            Ok(s)
                if !s.peer_sites.is_empty()
                    && s.peer_sites.iter().all(|p| p.state.starts_with("down+")) =>
            {
                return Guard::Refuse(Failure::new(
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
                ));
            }
            Err(e) if e.kind == RbdErrorKind::Unavailable => {
                return Guard::Refuse(ceph_failure(e, site));
            }
            _ => {}
        }
    }
    // The peer let go, yet its demotion has not arrived: say so when it is
    // because this site's rbd-mirror is not running, the one cause an
    // operator must act on (a bare timeout would hide it).
    if peer_primary != Some(true) {
        let Some(status) = &obs.status else {
            return Guard::Need(vec![Read::Status]);
        };
        if let Ok(s) = status
            && s.state.starts_with("down+")
        {
            return Guard::NotYet(format!(
                "rbd-mirror on {site} is not reporting for {img} ({}): {peer_name}'s demotion cannot arrive \
                 until that daemon runs again; check the rbd-mirror daemon of {site}",
                s.state
            ));
        }
    }
    Guard::NotYet(match (peer_primary, replayer) {
        (Some(true), _) => format!("{peer_name} is still primary"),
        (_, Some(state)) => format!(
            "rbd-mirror on {site} is still finishing the replay of {peer_name}'s demotion ({state})"
        ),
        _ => format!("{peer_name}'s demotion has not arrived yet"),
    })
}

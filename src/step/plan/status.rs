//! A status step: report the image, or wait until it reaches `waitFor`.
//! Split-brain fails it: a pipeline must not go on as if all were well.

use super::{Intent, Next, Observed, Read, enabled, need, peer_primary, status};
use crate::api::WaitFor;
use crate::ceph::ImageSpec;
use crate::step::failures::{both_primary, split_brain};
use crate::step::outcome::{ImageOutcome, image_state};

pub(super) fn next(intent: &Intent, img: &ImageSpec, obs: &Observed) -> Next {
    // Two reads at once: each rbd process spends most of its time starting
    // up and connecting, not waiting on the other.
    need!(obs, Read::Info, Read::Status);
    let site = &intent.site;
    let (info, status) = match (enabled(obs, img, site), status(obs, site)) {
        (Ok(i), Ok(s)) => (i, s),
        (Err(f), _) | (_, Err(f)) => return Next::Fail(f),
    };
    if let Some(s) = status
        && s.is_split_brain()
    {
        return Next::Fail(split_brain(img, site, &s.description));
    }
    if info.is_primary() == Some(true) && intent.peer.is_some() {
        need!(obs, Read::PeerInfo);
        match peer_primary(obs, intent, img) {
            Ok(Some(true)) => return Next::Fail(both_primary(img, site, intent.peer_name())),
            Ok(_) => {}
            Err(f) => return Next::Fail(f),
        }
    }
    let state = image_state(info, status);
    let reached = match intent.wait_for {
        None => true,
        Some(WaitFor::Primary) => state.role == "primary",
        Some(WaitFor::NonPrimary) => state.role == "non-primary",
        Some(WaitFor::Replaying) => state.role == "non-primary" && state.state == "up+replaying",
    };
    if reached {
        return Next::Done(ImageOutcome {
            outcome: "checked".into(),
            state,
        });
    }
    let want = intent.wait_for.map(WaitFor::as_str).unwrap_or("");
    Next::Wait(format!(
        "waiting for {img} to be {want} on {site} (now {} {})",
        state.role, state.state
    ))
}

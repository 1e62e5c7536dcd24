//! The failures a step reports, worded so that the person reading the run
//! knows what to do next. Pure: the planner and the executor share them.

use super::outcome::{Failure, Reason};
use crate::ceph::{ImageSpec, RbdError, RbdErrorKind};

/// An `rbd` error on `site`, as the run reports it.
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
        RbdErrorKind::KeyRejected => Failure::new(
            Reason::KeyRejected,
            format!(
                "Ceph stopped accepting the key of Secret {site:?} during this step ({e}): the key was \
                 revoked or rotated. The next attempt (retries) reads the Secret again; update it with the current key"
            ),
        ),
        RbdErrorKind::KeyUnreadable => Failure::new(
            Reason::InvalidSecret,
            format!(
                "the rbd beside the controller cannot read the key of Secret {site:?} ({e}). Either the key is not \
                 a cephx key (put the output of `ceph auth get-key client.<user>` in the Secret), or it is an AES-256 \
                 key, as a cluster made by Ceph 20.2 (Tentacle) gives, which rbd before 20.2.4 (19.2.6 on Squid) cannot \
                 parse: run the controller with a ceph-common at least that new (this project's image ships 20.2), or \
                 give this client an AES key (ceph auth get-or-create ... --key-type aes, with aes in the cluster's \
                 auth_allowed_ciphers)"
            ),
        ),
        RbdErrorKind::NoBinary => Failure::new(
            Reason::CephError,
            format!("{e}: install ceph-common (the rbd CLI) beside the controller"),
        ),
        _ => Failure::new(Reason::CephError, format!("{e} on {site}")),
    }
}

pub fn mirroring_disabled(img: &ImageSpec, site: &str) -> Failure {
    Failure::new(
        Reason::MirroringDisabled,
        format!(
            "mirroring is not enabled on {img} on {site}: enable it (rbd mirror image enable {img} snapshot) or drop the image from the step"
        ),
    )
}

/// A mutation failed and the image could not be read after it: whether it
/// took effect is unknown. Retryable: the next attempt reads it first.
pub fn unknown_after(img: &ImageSpec, site: &str, e: &RbdError, read: &RbdError) -> Failure {
    Failure::new(
        Reason::CephUnavailable,
        format!(
            "the outcome on {img} is unknown: the call failed ({e}) and {site} could not be read after it ({read}); \
             the next attempt reads the image again before acting"
        ),
    )
}

pub fn split_brain(img: &ImageSpec, site: &str, description: &str) -> Failure {
    Failure::new(
        Reason::SplitBrain,
        format!(
            "{img} is in split-brain on {site} ({description}): both sites wrote as primary. Pick the copy to keep, \
             demote the other site and resync it (the failback pipeline does this)"
        ),
    )
}

pub fn both_primary(img: &ImageSpec, site: &str, peer: &str) -> Failure {
    Failure::new(
        Reason::SplitBrain,
        format!(
            "{img} is primary on both {site} and {peer}: a split-brain (after a forced promote). Pick the copy to keep, \
             demote the other site and resync it"
        ),
    )
}

pub fn peer_unavailable(img: &ImageSpec, peer: &str, e: &RbdError) -> Failure {
    Failure::new(
        Reason::PeerUnavailable,
        format!(
            "{peer} is not answering ({e}): the peer cannot demote, so a planned promote of {img} cannot be proven safe; \
             if {peer} is lost, run an unplanned failover with force: \"true\""
        ),
    )
}

//! What an `rbd` failure means, decided from the exit code (`rbd` exits with
//! `abs(errno)`: ceph/ceph src/tools/rbd/Shell.cc) *and* the librbd message,
//! because one errno means different things for different commands: 22 is
//! "already primary", "not primary" and "mirroring not enabled"; 30 is "in use"
//! on demote but a transient snapshot race on promote.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Info,
    Status,
    Snapshots,
    Lockers,
    PoolStatus,
    JournalStatus,
    Demote,
    Promote,
    Resync,
    /// `image-meta set` + `remove`: a journaled no-op (see `Ceph::journal_marker`).
    JournalMarker,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Info => "info",
            Op::Status => "mirror image status",
            Op::Snapshots => "snap ls",
            Op::Lockers => "lock ls",
            Op::PoolStatus => "mirror pool status",
            Op::JournalStatus => "journal status",
            Op::Demote => "mirror image demote",
            Op::Promote => "mirror image promote",
            Op::Resync => "mirror image resync",
            Op::JournalMarker => "image-meta set",
        }
    }

    /// Commands that change the image: never killed half-way (librbd cannot
    /// be interrupted safely), and never started after a cancel.
    pub fn mutates(self) -> bool {
        matches!(
            self,
            Op::Demote | Op::Promote | Op::Resync | Op::JournalMarker
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbdErrorKind {
    /// ENOENT: no such image (or pool).
    NotFound,
    /// promote on a primary image.
    AlreadyPrimary,
    /// demote on a non-primary image.
    NotPrimary,
    /// promote refused (EBUSY): the peer is primary or its demotion has not arrived yet.
    NotYetPropagated,
    /// demote could not take the exclusive lock: a client holds the image.
    InUse,
    /// A transient failure worth retrying (EROFS during a snapshot promote, EAGAIN, ...).
    Transient,
    /// Mirroring is not enabled on the image.
    MirroringDisabled,
    /// resync asked of the primary.
    ResyncOnPrimary,
    /// The cluster did not answer (timeout, connection refused, our own deadline).
    Unavailable,
    /// cephx refused the client (EACCES/EPERM).
    PermissionDenied,
    /// cephx refused a client it had accepted earlier through the same
    /// connection: its key was revoked or rotated meanwhile.
    KeyRejected,
    /// `rbd` could not parse the key it was given ("Malformed input"): not
    /// a cephx key at all, or an AES-256 key (what a cluster made by Ceph
    /// 20.2 Tentacle gives) read by an rbd older than 20.2.4 / 19.2.6.
    KeyUnreadable,
    /// The `rbd` program could not be started.
    NoBinary,
    /// Output that could not be parsed.
    BadOutput,
    /// A mutation still running at its deadline: left to finish (never cut
    /// half-way), so whether it took effect is only known by reading again.
    OutcomeUnknown,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdError {
    pub kind: RbdErrorKind,
    pub op: Op,
    /// `pool/image` or `pool` the command was about.
    pub target: String,
    pub exit: Option<i32>,
    /// The line of stderr that says why (never the keyring: rbd does not print it).
    pub detail: String,
}

impl fmt::Display for RbdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rbd {} {}: {}",
            self.op.as_str(),
            self.target,
            self.detail
        )?;
        if let Some(code) = self.exit {
            write!(f, " (rbd exit {code})")?;
        }
        Ok(())
    }
}

impl std::error::Error for RbdError {}

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EAGAIN: i32 = 11;
const EACCES: i32 = 13;
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;
const EROFS: i32 = 30;
const ESHUTDOWN: i32 = 108;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;

/// The most telling stderr line: librbd's reason, else rbd's summary.
pub fn reason_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // librbd log lines look like "<time> <thread> -1 librbd::...: handle_x: <reason>".
    let librbd = lines.iter().find(|l| {
        l.contains("librbd::")
            && !l.contains("failed to promote image")
            && !l.contains("failed to demote image")
    });
    let summary = lines.iter().find(|l| l.starts_with("rbd: "));
    match (librbd, summary) {
        (Some(l), _) => {
            let reason = l.rsplit(": ").next().unwrap_or(l);
            reason.to_string()
        }
        (None, Some(s)) => s.trim_start_matches("rbd: ").to_string(),
        (None, None) => lines
            .last()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "no error message".into()),
    }
}

pub fn classify(op: Op, exit: i32, stderr: &str) -> RbdErrorKind {
    let has = |s: &str| stderr.contains(s);
    match exit {
        // Before the exit codes: rbd exits 5 (EIO) for the keyring, 22 for a key
        // given in a bootstrap token. The key itself is on that line: never kept.
        _ if has("Malformed input") || has("failed to decode key") => RbdErrorKind::KeyUnreadable,
        ENOENT => RbdErrorKind::NotFound,
        EBUSY if op == Op::Promote => RbdErrorKind::NotYetPropagated,
        EINVAL if has("image is already primary") => RbdErrorKind::AlreadyPrimary,
        EINVAL if has("image is not primary") => RbdErrorKind::NotPrimary,
        EINVAL if has("cannot resync to itself") => RbdErrorKind::ResyncOnPrimary,
        EINVAL
            if has("mirroring not enabled")
                || has("mirroring is not currently enabled")
                || has("mirroring is not enabled") =>
        {
            RbdErrorKind::MirroringDisabled
        }
        EROFS if op == Op::Demote => RbdErrorKind::InUse,
        EROFS if op == Op::Promote => RbdErrorKind::Transient,
        EBUSY if op == Op::Demote => RbdErrorKind::InUse,
        EAGAIN => RbdErrorKind::Transient,
        EACCES | EPERM => RbdErrorKind::PermissionDenied,
        ETIMEDOUT | ECONNREFUSED | ESHUTDOWN => RbdErrorKind::Unavailable,
        _ if has("error connecting to the cluster") => RbdErrorKind::Unavailable,
        _ => RbdErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pacific's rbd given a key made by Tentacle (lab, 2026-12-01; the key
    /// here is a made-up one of the same shape).
    #[test]
    fn a_key_this_rbd_cannot_parse_is_key_unreadable_whatever_the_exit() {
        let stderr = "2026-12-01T01:52:35.875+0000 7f7838293380 -1 auth: error parsing file /tmp/k/keyring: error setting modifier for [client.rbdstep] type=key val=AgAAAQIDBAUGByAAZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=: Malformed input
2026-12-01T01:52:35.875+0000 7f7838293380 -1 auth: failed to load /tmp/k/keyring: (5) Input/output error
2026-12-01T01:52:35.875+0000 7f7838293380 -1 monclient: keyring not found
rbd: couldn't connect to the cluster!
";
        assert_eq!(classify(Op::Info, 5, stderr), RbdErrorKind::KeyUnreadable);
        assert_eq!(
            classify(Op::Promote, 22, stderr),
            RbdErrorKind::KeyUnreadable
        );
        assert_eq!(
            classify(Op::Info, 5, "rbd: couldn't connect to the cluster!"),
            RbdErrorKind::Other
        );
    }

    // Real stderr, from the lab (Ceph 16.2.15) and ../shared/ceph-lab.md.
    const PROMOTE_EBUSY: &str = "2026-11-27T11:33:07.861+0000 7f868af186c0 -1 librbd::mirror::PromoteRequest: 0x7f866c0124f0 handle_get_info: image is primary within a remote cluster or demotion is not propagated yet\nrbd: error promoting image to primary\n2026-11-27T11:33:07.861+0000 7f868e28f380 -1 librbd::api::Mirror: image_promote: failed to promote image\n";
    const PROMOTE_ALREADY: &str = "2026-11-27T12:19:32.830+0000 7f19bffff6c0 -1 librbd::mirror::PromoteRequest: 0x7f19b40044d0 handle_get_info: image is already primary\n\nrbd: error promoting image to primary\n2026-11-27T12:19:32.830+0000 7f19cf69b380 -1 librbd::api::Mirror: image_promote: failed to promote image\n";
    const DEMOTE_NOT_PRIMARY: &str = "2026-11-27T12:19:32.942+0000 7f1718ad56c0 -1 librbd::mirror::DemoteRequest: 0x7f16f8002390 handle_get_info: image is not primary\n\nrbd: error demoting image to non-primary\n2026-11-27T12:19:32.942+0000 7f171bf2a380 -1 librbd::api::Mirror: image_demote: failed to demote image\n";
    const RESYNC_PRIMARY: &str = "rbd: error flagging image resync\n2026-11-27T11:40:00.000+0000 7f0 -1 librbd::api::Mirror: image_resync: image is primary, cannot resync to itself\n";
    const PROMOTE_EROFS: &str = "2026-11-27T11:50:00.000+0000 7f0 -1 librbd::mirror::snapshot::CreatePrimaryRequest: 0x55 handle_create_snapshot: failed to create mirror snapshot: (30) Read-only file system\nrbd: error promoting image to primary\n";
    const NOT_FOUND: &str = "rbd: error opening image nope: (2) No such file or directory\n";
    const NOT_ENABLED: &str = "rbd: mirroring not enabled on the image\n";

    #[test]
    fn promote_refusals_are_told_apart() {
        assert_eq!(
            classify(Op::Promote, 16, PROMOTE_EBUSY),
            RbdErrorKind::NotYetPropagated
        );
        assert_eq!(
            classify(Op::Promote, 22, PROMOTE_ALREADY),
            RbdErrorKind::AlreadyPrimary
        );
        assert_eq!(
            classify(Op::Promote, 30, PROMOTE_EROFS),
            RbdErrorKind::Transient
        );
        assert_eq!(
            classify(Op::Promote, 22, NOT_ENABLED),
            RbdErrorKind::MirroringDisabled
        );
    }

    #[test]
    fn exit_30_is_in_use_on_demote() {
        let s = "2026 -1 librbd::mirror::DemoteRequest: 0x1 handle_acquire_lock: failed to acquire exclusive lock: (30) Read-only file system\nrbd: error demoting image to non-primary\n";
        assert_eq!(classify(Op::Demote, 30, s), RbdErrorKind::InUse);
        assert_eq!(
            classify(Op::Demote, 22, DEMOTE_NOT_PRIMARY),
            RbdErrorKind::NotPrimary
        );
    }

    #[test]
    fn other_failures() {
        assert_eq!(
            classify(Op::Resync, 22, RESYNC_PRIMARY),
            RbdErrorKind::ResyncOnPrimary
        );
        assert_eq!(classify(Op::Info, 2, NOT_FOUND), RbdErrorKind::NotFound);
        assert_eq!(
            classify(Op::Info, 110, "rbd: couldn't connect to the cluster!\n"),
            RbdErrorKind::Unavailable
        );
        assert_eq!(
            classify(Op::Info, 1, "rbd: couldn't connect to the cluster!\n"),
            RbdErrorKind::PermissionDenied
        );
        assert_eq!(
            classify(Op::Info, 5, "rbd: something else\n"),
            RbdErrorKind::Other
        );
    }

    #[test]
    fn the_reason_line_is_librbds_reason() {
        assert_eq!(
            reason_line(PROMOTE_EBUSY),
            "image is primary within a remote cluster or demotion is not propagated yet"
        );
        assert_eq!(reason_line(DEMOTE_NOT_PRIMARY), "image is not primary");
        assert_eq!(
            reason_line(NOT_FOUND),
            "error opening image nope: (2) No such file or directory"
        );
        assert_eq!(reason_line(""), "no error message");
    }
}

//! The planner driven by observations alone: each test feeds what Ceph
//! would answer and checks the next command or the verdict.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::ceph::Op;
use crate::ceph::model::{JournalStatus, MirrorImageStatus, SnapEntry};
use crate::step::Reason;

fn intent(action: Action, force: bool, peer: bool) -> Intent {
    Intent {
        action,
        force,
        wait_for: None,
        site: "site-b".into(),
        peer: peer.then(|| "site-a".to_string()),
    }
}

fn img() -> ImageSpec {
    ImageSpec::parse("rp/app-1", "rp", None).unwrap()
}

fn plan(action: Action, force: bool, peer: bool) -> ImagePlan {
    ImagePlan::new(intent(action, force, peer), img(), None)
}

fn info(primary: bool, mode: &str, id: &str) -> ImageInfo {
    serde_json::from_value(json!({
        "name": "app-1", "id": id, "features": [],
        "mirroring": {"mode": mode, "state": "enabled", "primary": primary}
    }))
    .unwrap()
}

fn status(state: &str) -> MirrorImageStatus {
    MirrorImageStatus {
        state: state.into(),
        ..Default::default()
    }
}

fn err(kind: RbdErrorKind) -> RbdError {
    RbdError {
        kind,
        op: Op::Info,
        target: "rp/app-1".into(),
        exit: Some(1),
        detail: "test".into(),
    }
}

fn journal(master: Option<(i64, i64)>, peer: Option<(i64, i64)>) -> JournalStatus {
    let pos = |p: Option<(i64, i64)>| match p {
        Some((t, e)) => json!({"object_positions": [{"tag_tid": t, "entry_tid": e}]}),
        None => json!({"object_positions": []}),
    };
    serde_json::from_value(json!({"registered_clients": [
        {"id": "", "commit_position": pos(master)},
        {"id": "peer-uuid", "commit_position": pos(peer)},
    ]}))
    .unwrap()
}

fn demotion_arrived() -> Vec<SnapEntry> {
    serde_json::from_value(json!([{"id": 9, "name": ".mirror.non_primary.g.1",
        "namespace": {"type": "mirror", "state": "demoted", "complete": true}}]))
    .unwrap()
}

fn replaying_snapshots() -> Vec<SnapEntry> {
    serde_json::from_value(json!([{"id": 7, "name": ".mirror.non_primary.g.0",
        "namespace": {"type": "mirror", "state": "non-primary", "complete": true}}]))
    .unwrap()
}

const T0: Duration = Duration::ZERO;

fn reads(next: Next) -> Vec<Read> {
    match next {
        Next::Read(r) => r,
        other => panic!("expected reads, got {other:?}"),
    }
}

fn failed(next: Next) -> Failure {
    match next {
        Next::Fail(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn done(next: Next) -> ImageOutcome {
    match next {
        Next::Done(o) => o,
        other => panic!("expected done, got {other:?}"),
    }
}

fn waits(next: Next) -> String {
    match next {
        Next::Wait(w) => w,
        other => panic!("expected a wait, got {other:?}"),
    }
}

// ---- demote ----

#[test]
fn demote_checks_role_and_lockers_then_waits_at_the_barrier_then_demotes() {
    let mut p = plan(Action::Demote, false, false);
    let mut obs = Observed::default();
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Info]);
    obs.info = Some(Ok(info(true, "snapshot", "1")));
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Lockers]);
    obs.lockers = Some(Ok(vec![]));
    assert_eq!(p.next(&obs, T0), Next::Checked);
    assert_eq!(
        p.next(&Observed::default(), T0),
        Next::Mutate(Command::Demote)
    );
    p.landed(Command::Demote, Ok(()), T0);
    let mut obs = Observed::default();
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Info]);
    // rbd info still says primary: wait, never report a guess.
    obs.info = Some(Ok(info(true, "snapshot", "1")));
    waits(p.next(&obs, T0));
    obs.info = Some(Ok(info(false, "snapshot", "1")));
    let o = done(p.next(&obs, T0));
    assert_eq!(
        (o.outcome.as_str(), o.state.role.as_str()),
        ("demoted", "non-primary")
    );
}

#[test]
fn demote_of_a_locked_image_looks_again_then_refuses_as_in_use() {
    let mut p = plan(Action::Demote, false, false);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        lockers: Some(Ok(vec![crate::ceph::model::Locker {
            locker: "client.4711".into(),
            ..Default::default()
        }])),
        ..Default::default()
    };
    waits(p.next(&obs, Duration::from_secs(1)));
    waits(p.next(&obs, Duration::from_secs(11)));
    let f = failed(p.next(&obs, Duration::from_secs(12)));
    assert_eq!(f.reason, Reason::ImageInUse);
    assert!(f.message.contains("client.4711"), "{}", f.message);
}

#[test]
fn forced_demote_does_not_look_at_lockers() {
    let mut p = plan(Action::Demote, true, false);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        ..Default::default()
    };
    assert_eq!(p.next(&obs, T0), Next::Checked);
}

#[test]
fn demote_of_a_journal_that_never_committed_marks_it_first() {
    let mut p = plan(Action::Demote, false, false);
    let mut obs = Observed {
        info: Some(Ok(info(true, "journal", "1"))),
        lockers: Some(Ok(vec![])),
        ..Default::default()
    };
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Journal]);
    obs.journal = Some(Ok(journal(None, None)));
    assert_eq!(p.next(&obs, T0), Next::Checked);
    let mut obs = Observed::default();
    assert_eq!(p.next(&obs, T0), Next::Mutate(Command::JournalMarker));
    p.landed(Command::JournalMarker, Ok(()), T0);
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Journal]);
    obs.journal = Some(Ok(journal(Some((1, 0)), Some((1, 0)))));
    assert_eq!(p.next(&obs, T0), Next::Mutate(Command::Demote));
}

#[test]
fn demote_refuses_when_the_marker_left_no_committed_entry() {
    let mut p = plan(Action::Demote, true, false);
    let obs = Observed {
        info: Some(Ok(info(true, "journal", "1"))),
        journal: Some(Ok(journal(None, None))),
        ..Default::default()
    };
    assert_eq!(p.next(&obs, T0), Next::Checked);
    p.landed(Command::JournalMarker, Ok(()), T0);
    let obs = Observed {
        journal: Some(Ok(journal(None, None))),
        ..Default::default()
    };
    let f = failed(p.next(&obs, T0));
    assert!(f.message.contains("not demoted"), "{}", f.message);
}

#[test]
fn a_demote_that_failed_but_took_effect_is_a_demote() {
    let mut p = plan(Action::Demote, true, false);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        ..Default::default()
    };
    assert_eq!(p.next(&obs, T0), Next::Checked);
    p.landed(Command::Demote, Err(err(RbdErrorKind::OutcomeUnknown)), T0);
    let obs = Observed {
        info: Some(Ok(info(false, "snapshot", "1"))),
        ..Default::default()
    };
    assert_eq!(done(p.next(&obs, T0)).outcome, "demoted");
}

#[test]
fn a_failed_demote_that_cannot_be_read_after_is_unknown_not_failed() {
    let mut p = plan(Action::Demote, true, false);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        ..Default::default()
    };
    p.next(&obs, T0);
    p.landed(Command::Demote, Err(err(RbdErrorKind::OutcomeUnknown)), T0);
    let obs = Observed {
        info: Some(Err(err(RbdErrorKind::Unavailable))),
        ..Default::default()
    };
    let f = failed(p.next(&obs, T0));
    assert_eq!(f.reason, Reason::CephUnavailable);
    assert!(f.message.contains("unknown"), "{}", f.message);
    assert!(f.reason.retryable());
}

#[test]
fn a_demote_refused_as_not_primary_reports_already_non_primary() {
    let mut p = plan(Action::Demote, true, false);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        ..Default::default()
    };
    p.next(&obs, T0);
    p.landed(Command::Demote, Err(err(RbdErrorKind::NotPrimary)), T0);
    let obs = Observed {
        info: Some(Ok(info(false, "snapshot", "1"))),
        status: Some(Ok(status("up+replaying"))),
        ..Default::default()
    };
    assert_eq!(done(p.next(&obs, T0)).outcome, "already-non-primary");
}

// ---- promote ----

fn promote_obs(local: ImageInfo, peer: Option<bool>) -> Observed {
    Observed {
        info: Some(Ok(local)),
        peer_info: peer.map(|primary| Ok(info(primary, "snapshot", "9"))),
        ..Default::default()
    }
}

#[test]
fn snapshot_promote_waits_while_the_peer_is_primary() {
    let mut p = plan(Action::Promote, false, true);
    let mut obs = promote_obs(info(false, "snapshot", "1"), Some(true));
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Snapshots]);
    obs.snapshots = Some(Ok(demotion_arrived()));
    let why = waits(p.next(&obs, T0));
    assert!(why.contains("still primary"), "{why}");
}

#[test]
fn snapshot_promote_of_an_orphan_without_the_demotion_is_never_issued() {
    // ceph-lab.md P10: both sites non-primary, the demotion snapshot not
    // replayed here. Ceph would accept the promote and lose the last writes.
    let mut p = plan(Action::Promote, false, true);
    let mut obs = promote_obs(info(false, "snapshot", "1"), Some(false));
    obs.snapshots = Some(Ok(replaying_snapshots()));
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Status]);
    obs.status = Some(Ok(status("up+replaying")));
    let why = waits(p.next(&obs, T0));
    assert!(why.contains("has not arrived"), "{why}");
}

#[test]
fn a_promote_waiting_on_a_stopped_rbd_mirror_names_the_daemon() {
    // faults.md C3b: the peer demoted, this site's rbd-mirror is down, so
    // the demotion cannot arrive; the wait (and a timeout after it) says
    // which daemon to look at.
    for mode in ["snapshot", "journal"] {
        let mut p = plan(Action::Promote, false, true);
        let mut obs = promote_obs(info(false, mode, "1"), Some(false));
        obs.snapshots = Some(Ok(replaying_snapshots()));
        obs.peer_journal = Some(Ok(journal(Some((2, 5)), Some((2, 4)))));
        obs.status = Some(Ok(status("down+stopped")));
        let why = waits(p.next(&obs, T0));
        assert!(
            why.contains("rbd-mirror on site-b is not reporting") && why.contains("down+stopped"),
            "{mode}: {why}"
        );
    }
}

#[test]
fn snapshot_promote_goes_once_the_demotion_arrived() {
    let mut p = plan(Action::Promote, false, true);
    let mut obs = promote_obs(info(false, "snapshot", "1"), Some(false));
    obs.snapshots = Some(Ok(demotion_arrived()));
    assert_eq!(p.next(&obs, T0), Next::Mutate(Command::Promote));
    p.landed(Command::Promote, Ok(()), T0);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        ..Default::default()
    };
    assert_eq!(done(p.next(&obs, T0)).outcome, "promoted");
}

#[test]
fn journal_promote_needs_the_peer_secret() {
    let mut p = plan(Action::Promote, false, false);
    let obs = promote_obs(info(false, "journal", "1"), None);
    assert_eq!(failed(p.next(&obs, T0)).reason, Reason::PeerRequired);
}

#[test]
fn journal_promote_waits_for_the_replay_and_then_for_the_replayer_to_finish() {
    let mut p = plan(Action::Promote, false, true);
    let mut obs = promote_obs(info(false, "journal", "1"), Some(false));
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::PeerJournal]);
    // Not caught up: wait.
    obs.peer_journal = Some(Ok(journal(Some((2, 5)), Some((2, 4)))));
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Status]);
    obs.status = Some(Ok(status("up+replaying")));
    waits(p.next(&obs, T0));
    // Caught up, but the local replayer is still stopping (defect 0).
    let mut obs = promote_obs(info(false, "journal", "1"), Some(false));
    obs.peer_journal = Some(Ok(journal(Some((2, 5)), Some((2, 5)))));
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Status]);
    obs.status = Some(Ok(status("up+stopped")));
    let why = waits(p.next(&obs, T0));
    assert!(why.contains("still finishing"), "{why}");
    obs.status = Some(Ok(status("up+unknown")));
    assert_eq!(p.next(&obs, T0), Next::Mutate(Command::Promote));
}

#[test]
fn journal_promote_with_empty_commit_positions_is_not_caught_up() {
    let mut p = plan(Action::Promote, false, true);
    let mut obs = promote_obs(info(false, "journal", "1"), Some(false));
    obs.peer_journal = Some(Ok(journal(None, None)));
    obs.status = Some(Ok(status("up+replaying")));
    waits(p.next(&obs, T0));
}

#[test]
fn promote_refuses_when_the_peer_does_not_answer() {
    let mut p = plan(Action::Promote, false, true);
    let obs = Observed {
        info: Some(Ok(info(false, "snapshot", "1"))),
        peer_info: Some(Err(err(RbdErrorKind::Unavailable))),
        ..Default::default()
    };
    let f = failed(p.next(&obs, T0));
    assert_eq!(f.reason, Reason::PeerUnavailable);
    assert!(f.message.contains("force"), "{}", f.message);
}

#[test]
fn promote_without_peer_refuses_when_the_peer_stopped_reporting() {
    let mut p = plan(Action::Promote, false, false);
    let mut obs = promote_obs(info(false, "snapshot", "1"), None);
    obs.snapshots = Some(Ok(replaying_snapshots()));
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Status]);
    let mut st = status("up+replaying");
    st.peer_sites = vec![crate::ceph::model::PeerSiteStatus {
        site_name: "site-a".into(),
        state: "down+unknown".into(),
        ..Default::default()
    }];
    obs.status = Some(Ok(st));
    assert_eq!(failed(p.next(&obs, T0)).reason, Reason::PeerUnavailable);
}

#[test]
fn promote_of_a_primary_with_a_primary_peer_is_split_brain() {
    let mut p = plan(Action::Promote, false, true);
    let obs = promote_obs(info(true, "snapshot", "1"), Some(true));
    assert_eq!(failed(p.next(&obs, T0)).reason, Reason::SplitBrain);
}

#[test]
fn a_promote_whose_answer_was_lost_is_proven_and_tried_again() {
    let mut p = plan(Action::Promote, false, true);
    let mut obs = promote_obs(info(false, "snapshot", "1"), Some(false));
    obs.snapshots = Some(Ok(demotion_arrived()));
    assert_eq!(p.next(&obs, T0), Next::Mutate(Command::Promote));
    p.landed(Command::Promote, Err(err(RbdErrorKind::OutcomeUnknown)), T0);
    let obs = Observed {
        info: Some(Ok(info(false, "snapshot", "1"))),
        ..Default::default()
    };
    waits(p.next(&obs, T0));
    // The next round proves again from scratch.
    assert_eq!(reads(p.next(&Observed::default(), T0)), vec![Read::Info]);
}

#[test]
fn a_promote_that_failed_but_took_effect_is_a_promote() {
    let mut p = plan(Action::Promote, false, true);
    let mut obs = promote_obs(info(false, "snapshot", "1"), Some(false));
    obs.snapshots = Some(Ok(demotion_arrived()));
    p.next(&obs, T0);
    p.landed(Command::Promote, Err(err(RbdErrorKind::Other)), T0);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        peer_info: Some(Ok(info(false, "snapshot", "9"))),
        status: Some(Ok(status("up+stopped"))),
        ..Default::default()
    };
    assert_eq!(done(p.next(&obs, T0)).outcome, "promoted");
}

#[test]
fn promote_refused_as_not_yet_waits_and_proves_again() {
    let mut p = plan(Action::Promote, false, true);
    p.landed(
        Command::Promote,
        Err(err(RbdErrorKind::NotYetPropagated)),
        T0,
    );
    waits(p.next(&Observed::default(), T0));
    assert_eq!(reads(p.next(&Observed::default(), T0)), vec![Read::Info]);
}

// ---- forced promote ----

#[test]
fn forced_promote_is_recorded_with_its_window_before_it_is_issued() {
    let mut p = plan(Action::Promote, true, false);
    let mut obs = Observed {
        info: Some(Ok(info(false, "snapshot", "1"))),
        ..Default::default()
    };
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Status]);
    obs.status = Some(Ok(status("down+unknown")));
    assert_eq!(
        p.next(&obs, T0),
        Next::Record(Record::Forced {
            window: "unknown".into()
        })
    );
    // Not recorded yet: it asks again, never issues.
    assert!(matches!(p.next(&obs, T0), Next::Record(_)));
    p.recorded();
    assert_eq!(p.next(&obs, T0), Next::Mutate(Command::ForcePromote));
    p.landed(Command::ForcePromote, Err(err(RbdErrorKind::Other)), T0);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        ..Default::default()
    };
    assert_eq!(done(p.next(&obs, T0)).outcome, "force-promoted");
}

// ---- resync ----

#[test]
fn resync_is_recorded_then_sent_then_done_when_the_new_copy_replays() {
    let mut p = plan(Action::Resync, false, false);
    let obs = Observed {
        info: Some(Ok(info(false, "snapshot", "old"))),
        ..Default::default()
    };
    assert_eq!(
        p.next(&obs, T0),
        Next::Record(Record::ResyncIssued { id: "old".into() })
    );
    p.recorded();
    assert_eq!(p.next(&obs, T0), Next::Mutate(Command::Resync));
    p.landed(Command::Resync, Ok(()), T0);
    // Gone for a while: in progress.
    let obs = Observed {
        info: Some(Err(err(RbdErrorKind::NotFound))),
        ..Default::default()
    };
    waits(p.next(&obs, T0));
    let mut obs = Observed {
        info: Some(Ok(info(false, "snapshot", "new"))),
        ..Default::default()
    };
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Status]);
    obs.status = Some(Ok(status("up+replaying")));
    assert_eq!(done(p.next(&obs, T0)).outcome, "resynced");
}

#[test]
fn resync_of_a_primary_is_refused() {
    let mut p = plan(Action::Resync, false, false);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        ..Default::default()
    };
    assert_eq!(failed(p.next(&obs, T0)).reason, Reason::ResyncOnPrimary);
}

#[test]
fn a_recorded_resync_is_sent_again_while_the_id_is_unchanged() {
    let mut p = ImagePlan::new(
        intent(Action::Resync, false, false),
        img(),
        Some("old".into()),
    );
    let obs = Observed {
        info: Some(Ok(info(false, "snapshot", "old"))),
        ..Default::default()
    };
    assert_eq!(p.next(&obs, T0), Next::Mutate(Command::Resync));
}

#[test]
fn a_recorded_resync_is_never_sent_again_once_the_id_changed() {
    let mut p = ImagePlan::new(
        intent(Action::Resync, false, false),
        img(),
        Some("old".into()),
    );
    let mut obs = Observed {
        info: Some(Ok(info(false, "snapshot", "new"))),
        ..Default::default()
    };
    assert_eq!(reads(p.next(&obs, T0)), vec![Read::Status]);
    obs.status = Some(Ok(status("up+syncing")));
    waits(p.next(&obs, T0));
    // Absent (being copied) is in progress too, never a failure or a resend.
    let mut p = ImagePlan::new(
        intent(Action::Resync, false, false),
        img(),
        Some("old".into()),
    );
    let obs = Observed {
        info: Some(Err(err(RbdErrorKind::MirroringDisabled))),
        ..Default::default()
    };
    waits(p.next(&obs, T0));
}

#[test]
fn a_resync_whose_send_failed_is_sent_again_only_after_a_while() {
    let mut p = plan(Action::Resync, false, false);
    let obs = Observed {
        info: Some(Ok(info(false, "snapshot", "old"))),
        ..Default::default()
    };
    p.next(&obs, T0);
    p.recorded();
    p.next(&obs, T0);
    p.landed(Command::Resync, Err(err(RbdErrorKind::Other)), T0);
    waits(p.next(&obs, Duration::from_secs(5)));
    assert_eq!(
        p.next(&obs, Duration::from_secs(11)),
        Next::Mutate(Command::Resync)
    );
}

// ---- status ----

#[test]
fn status_reports_split_brain_as_a_failure() {
    let mut p = plan(Action::Status, false, false);
    let mut st = status("up+error");
    st.description = "split-brain detected".into();
    let obs = Observed {
        info: Some(Ok(info(false, "journal", "1"))),
        status: Some(Ok(st)),
        ..Default::default()
    };
    assert_eq!(failed(p.next(&obs, T0)).reason, Reason::SplitBrain);
}

#[test]
fn status_waits_for_replaying() {
    let mut i = intent(Action::Status, false, false);
    i.wait_for = Some(WaitFor::Replaying);
    let mut p = ImagePlan::new(i, img(), None);
    assert_eq!(
        reads(p.next(&Observed::default(), T0)),
        vec![Read::Info, Read::Status]
    );
    let mut obs = Observed {
        info: Some(Ok(info(false, "snapshot", "1"))),
        status: Some(Ok(status("up+starting_replay"))),
        ..Default::default()
    };
    waits(p.next(&obs, T0));
    obs.status = Some(Ok(status("up+replaying")));
    assert_eq!(done(p.next(&obs, T0)).outcome, "checked");
}

#[test]
fn an_image_with_mirroring_disabled_fails_every_action() {
    let plain: ImageInfo = serde_json::from_value(json!({"name": "x", "id": "1"})).unwrap();
    for (action, force) in [
        (Action::Status, false),
        (Action::Demote, false),
        (Action::Promote, false),
        (Action::Promote, true),
        (Action::Resync, false),
    ] {
        let mut p = plan(action, force, true);
        let obs = Observed {
            info: Some(Ok(plain.clone())),
            status: Some(Ok(status("up+replaying"))),
            ..Default::default()
        };
        assert_eq!(
            failed(p.next(&obs, T0)).reason,
            Reason::MirroringDisabled,
            "{action:?} force={force}"
        );
    }
}

#[test]
fn a_command_that_finds_its_work_done_says_someone_else_acted() {
    let mut p = plan(Action::Demote, true, false);
    let obs = Observed {
        info: Some(Ok(info(true, "snapshot", "1"))),
        ..Default::default()
    };
    p.next(&obs, T0);
    assert_eq!(p.acted_by_another(), None);
    p.landed(Command::Demote, Err(err(RbdErrorKind::NotPrimary)), T0);
    assert!(
        p.acted_by_another()
            .is_some_and(|n| n.contains("already done")),
        "{:?}",
        p.acted_by_another()
    );
    // A failure that is not "already done" says nothing of the kind.
    let mut p = plan(Action::Promote, false, true);
    p.landed(
        Command::Promote,
        Err(err(RbdErrorKind::NotYetPropagated)),
        T0,
    );
    assert_eq!(p.acted_by_another(), None);
}

//! The parsers and the error classification against what real `rbd` printed:
//! `tests/fixtures/ceph/<release>-<version>/`, one directory per Ceph release,
//! written by `tests/lab/lab capture` on the lab's real sites (site-a
//! primary, site-b its peer). Every release must give the same answers: a
//! release whose output means something else here is a finding, not a
//! fixture to drop.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::{classify, reason_line};
use super::model::{
    ImageInfo, JournalStatus, Locker, MirrorImageStatus, MirrorMode, PoolStatus, SnapEntry,
    snapshot_demotion_arrived,
};
use super::{Op, RbdErrorKind};

/// Each release the lab runs must have its captures here.
const RELEASES: &[&str] = &["pacific-", "reef-", "tentacle-"];

fn releases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ceph");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("fixture dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for r in RELEASES {
        assert!(
            dirs.iter()
                .any(|d| d.file_name().unwrap().to_string_lossy().starts_with(r)),
            "no captures of Ceph {r}* in {}: run `tests/lab/lab matrix` (or `lab capture`)",
            root.display()
        );
    }
    dirs
}

fn read(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn parse<T: DeserializeOwned>(dir: &Path, name: &str) -> T {
    let text = read(dir, &format!("{name}.json"));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}/{name}.json does not parse: {e}", dir.display()))
}

fn each(check: impl Fn(&Path, &str)) {
    for dir in releases() {
        let release = dir.file_name().unwrap().to_string_lossy().into_owned();
        check(&dir, &release);
    }
}

#[test]
fn info_gives_the_role_and_mode_on_every_release() {
    each(|d, r| {
        let primary: ImageInfo = parse(d, "info-primary");
        assert!(primary.mirroring_enabled(), "{r}");
        assert_eq!(primary.is_primary(), Some(true), "{r}");
        assert_eq!(primary.mode(), Some(MirrorMode::Snapshot), "{r}");
        let secondary: ImageInfo = parse(d, "info-non-primary");
        assert_eq!(secondary.is_primary(), Some(false), "{r}");
        assert_eq!(secondary.mode(), Some(MirrorMode::Snapshot), "{r}");
        let journal: ImageInfo = parse(d, "info-journal-primary");
        assert_eq!(journal.is_primary(), Some(true), "{r}");
        assert_eq!(journal.mode(), Some(MirrorMode::Journal), "{r}");
        let demoted: ImageInfo = parse(d, "info-demoted");
        assert_eq!(demoted.is_primary(), Some(false), "{r}");
        assert_eq!(primary.id, demoted.id, "{r}: same image, same id");
    });
}

#[test]
fn mirror_status_gives_state_replay_and_split_brain_on_every_release() {
    each(|d, r| {
        let primary: MirrorImageStatus = parse(d, "status-primary");
        assert_eq!(primary.state, "up+stopped", "{r}");
        assert!(!primary.is_split_brain(), "{r}");
        let snap: MirrorImageStatus = parse(d, "status-replaying-snapshot");
        assert_eq!(snap.state, "up+replaying", "{r}");
        let replay = snap
            .replay()
            .unwrap_or_else(|| panic!("{r}: {}", snap.description));
        assert!(replay.replay_state.is_some(), "{r}: {replay:?}");
        assert!(replay.remote_snapshot_timestamp.is_some(), "{r}");
        let journal: MirrorImageStatus = parse(d, "status-replaying-journal");
        assert_eq!(journal.state, "up+replaying", "{r}");
        let replay = journal
            .replay()
            .unwrap_or_else(|| panic!("{r}: {}", journal.description));
        assert!(replay.primary_position.is_some(), "{r}: {replay:?}");
        assert!(replay.non_primary_position.is_some(), "{r}: {replay:?}");
        assert!(replay.entries_behind_primary.is_some(), "{r}: {replay:?}");
        // The peer's view rides along: the promote guard reads it.
        assert!(
            snap.peer_sites.iter().any(|p| p.site_name == "site-a"),
            "{r}: {:?}",
            snap.peer_sites
        );
        let sb: MirrorImageStatus = parse(d, "status-split-brain");
        assert!(sb.is_split_brain(), "{r}: {} {}", sb.state, sb.description);
        for name in ["status-demoted", "status-both-primary"] {
            let s: MirrorImageStatus = parse(d, name);
            assert!(!s.state.is_empty(), "{r} {name}");
        }
    });
}

#[test]
fn snapshots_tell_whether_the_demotion_arrived_on_every_release() {
    each(|d, r| {
        for (name, arrived) in [
            ("snaps-primary", false),
            ("snaps-non-primary", false),
            ("snaps-demoted-primary", false),
            ("snaps-demotion-arrived", true),
        ] {
            let snaps: Vec<SnapEntry> = parse(d, name);
            assert!(snaps.iter().any(SnapEntry::is_mirror), "{r} {name}");
            assert_eq!(snapshot_demotion_arrived(&snaps), arrived, "{r} {name}");
        }
    });
}

#[test]
fn pool_status_journal_status_and_lockers_parse_on_every_release() {
    each(|d, r| {
        let pool: PoolStatus = parse(d, "pool-status-verbose");
        let names: Vec<&str> = pool.images.iter().map(|i| i.name.as_str()).collect();
        for img in ["cap-snap", "cap-jrnl"] {
            assert!(names.contains(&img), "{r}: {names:?}");
        }
        let journal: JournalStatus = parse(d, "journal-status");
        assert!(
            journal.master_committed(),
            "{r}: written after mirroring began"
        );
        let idle: Vec<Locker> = parse(d, "lock-ls-idle");
        assert!(idle.is_empty(), "{r}: {idle:?}");
        let busy: Vec<Locker> = parse(d, "lock-ls-in-use");
        assert!(!busy.is_empty(), "{r}");
    });
}

/// A demote while another librbd client writes (and holds the exclusive
/// lock, `lock-ls-in-use`) is not refused by rbd on any release captured:
/// the lock is requested from the writer, handed over, and the image
/// demoted under it. The refusal users rely on is therefore the
/// controller's own: the demote plan reads the lockers first
/// (`step/plan/demote.rs`) and ends `ImageInUse`. Should a release refuse
/// here, its refusal must classify as `InUse`.
#[test]
fn rbd_itself_demotes_an_image_a_client_writes_to_so_the_controller_checks_lockers() {
    each(|d, r| {
        let busy: Vec<Locker> = parse(d, "lock-ls-in-use");
        assert!(!busy.is_empty(), "{r}: the writer held the lock");
        let exit: i32 = read(d, "demote-while-written.exit").trim().parse().unwrap();
        assert_eq!(
            exit, 0,
            "{r}: rbd refused the demote: classify it and update this test"
        );
    });
}

#[test]
fn errors_are_classified_alike_on_every_release() {
    each(|d, r| {
        for (name, op, kind) in [
            ("error-not-found", Op::Info, RbdErrorKind::NotFound),
            (
                "error-promote-peer-primary",
                Op::Promote,
                RbdErrorKind::NotYetPropagated,
            ),
            (
                "error-resync-primary",
                Op::Resync,
                RbdErrorKind::ResyncOnPrimary,
            ),
            (
                "error-permission-denied",
                Op::Info,
                RbdErrorKind::PermissionDenied,
            ),
            ("error-timeout", Op::Info, RbdErrorKind::Unavailable),
            (
                "error-already-primary",
                Op::Promote,
                RbdErrorKind::AlreadyPrimary,
            ),
            (
                "error-demote-non-primary",
                Op::Demote,
                RbdErrorKind::NotPrimary,
            ),
        ] {
            let exit: i32 = read(d, &format!("{name}.exit")).trim().parse().unwrap();
            let stderr = read(d, &format!("{name}.stderr"));
            assert_ne!(exit, 0, "{r} {name}");
            assert_eq!(
                classify(op, exit, &stderr),
                kind,
                "{r} {name}: exit {exit}: {stderr}"
            );
            let why = reason_line(&stderr);
            assert!(!why.is_empty() && why != "no error message", "{r} {name}");
        }
    });
}

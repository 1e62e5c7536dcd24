//! A model of RBD mirroring between two sites, behind the `Ceph` trait.
//!
//! # State
//!
//! Each image has a copy per site. A copy is a *log*: the items it holds, in
//! order — journal tags (owner = a site, or none for the demotion "orphan"
//! tag), journal events (the entry written with a promote/demote tag), client
//! writes, and snapshot-mode mirror snapshots (primary or demoted). Items keep
//! their identity when rbd-mirror copies them, so "B has replayed everything
//! A wrote" is "B's log is a prefix of A's".
//!
//! # Rules (each cites the fact it follows)
//!
//! * **Promotion state** (facts §1.4, ceph GetInfoRequest): journal mode — the
//!   owner of the last tag: this site ⇒ primary, orphan ⇒ *orphan*, the peer
//!   ⇒ non-primary. Snapshot mode — the newest mirror snapshot: a demotion
//!   snapshot (own or copied) ⇒ orphan, an own primary one ⇒ primary, a copied
//!   primary one ⇒ non-primary.
//! * **Promote without force** is refused with EBUSY ("demotion is not
//!   propagated yet") only while non-primary: it *succeeds on an orphan*,
//!   including a site's own old demotion when the peer's later history never
//!   arrived (facts §4.6, lab P10): that is how a stale promote happens. While
//!   the copied demotion snapshot is still incomplete it fails with EROFS
//!   (lab §6.2). Already primary ⇒ EINVAL (facts §1.4). Forced promote needs
//!   only "not primary"; in snapshot mode it rolls back incomplete copies.
//! * **Demote**: primary only (else EINVAL "image is not primary"); needs the
//!   exclusive lock, so a client holding it ⇒ EROFS (facts §1.4). Journal:
//!   orphan tag + event; snapshot: a demotion snapshot.
//! * **Replication** (facts §1.1, lab §7): the rbd-mirror daemon of site X
//!   copies the peer's items into X's copy when X is not primary and X's log
//!   is a prefix of the peer's; each item becomes visible `replay_delay` after
//!   it was made or after the link (X's daemon, both sites) came up, so a
//!   demotion reaches the peer only while the peer's daemon runs. Journal
//!   mode: a copy whose newest tag is its own demotion replays the peer only
//!   if its replayer (started `replayer_start` after that demotion) finds the
//!   peer primary; a peer promoted and demoted again before that is never
//!   replayed (lab P10, conformance test). Snapshot
//!   mode moves data only at mirror snapshots, and a copied snapshot is
//!   incomplete for `snapshot_copy`.
//! * **Split-brain** (facts §4.6, lab §6.1): a non-primary copy whose log is
//!   not a prefix of a primary peer's ⇒ `up+error` "split-brain detected"
//!   (journal) / "split-brain" (snapshot) on that side; both primary ⇒ both
//!   `up+stopped` "local image is primary", no error.
//! * **Resync** (facts §1.2, §4.3, lab P14): flags the non-primary copy; the
//!   local daemon deletes it (`info`/`status` ⇒ ENOENT), re-creates it from a
//!   primary peer with a new id (`down+unknown` "status not found"), then it
//!   replays. Each flag set on an unflagged copy is one full copy.
//! * **Status is lazy** (lab P9): a changed status shows after `status_lag`.
//!   `rbd info` is exact at once.
//! * **Journal commit positions** (lab P9): the master client (`""`) is at the
//!   copy's last own entry; the peer's client is registered once the peer's
//!   daemon replayed from this journal, at the last own entry the peer holds.
//!   A non-primary's journal holds no entries of its own (rbd-mirror replays
//!   into it externally).
//! * **Sites and faults**: a down site answers nothing: after the CLI's
//!   deadline the call fails as `rbd` does (exit 110, "couldn't connect").
//!   Injected faults fail a call before it takes effect or after (the call
//!   took effect, the caller sees an error). A crash plan "kills" the caller
//!   before or after its Nth call or checkpoint: the call never returns and
//!   `killed()` fires, so the harness drops the future like a SIGKILL.
//!
//! # Not represented
//!
//! Pools' mirror modes, peers and bootstrap; mirror snapshot schedules (tests
//! call `mirror_snapshot`); snapshot retention; data sizes and bandwidth;
//! image groups; the exact bootstrap-time commit position of a newly
//! registered journal client; rbd-mirror leadership and restarts' slow
//! replayer start (lab P11); errors other than those listed above.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ceph::error::{classify, reason_line};
use crate::ceph::model::{ImageInfo, JournalStatus, Locker, MirrorImageStatus, SnapEntry};
use crate::ceph::{Ceph, ImageSpec, Op, RbdError, RbdErrorKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    A,
    B,
}

impl Site {
    pub fn other(self) -> Site {
        match self {
            Site::A => Site::B,
            Site::B => Site::A,
        }
    }
    fn i(self) -> usize {
        self as usize
    }
    pub fn name(self) -> &'static str {
        match self {
            Site::A => "site-a",
            Site::B => "site-b",
        }
    }
    fn mirror_uuid(self) -> &'static str {
        match self {
            Site::A => "e4780aa1-7c86-4f8d-8c5a-1403fea8f54c",
            Site::B => "2dcaf136-305a-484b-bca8-99c36d26b1e2",
        }
    }
    pub const BOTH: [Site; 2] = [Site::A, Site::B];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Journal,
    Snapshot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promotion {
    Primary,
    NonPrimary,
    Orphan,
}

/// Timings, defaulting to what the lab measured (ceph-lab.md §6–7).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// One `rbd` process: ~0.05 s (lab §7).
    pub call_latency: Duration,
    /// Item made on one site → copied on the other: promote allowed 1.7–2.3 s
    /// after the demote (lab §7).
    pub replay_delay: Duration,
    /// A copied mirror snapshot stays incomplete this long.
    pub snapshot_copy: Duration,
    /// Journal mode: after a site's own demotion, its rbd-mirror takes this
    /// long to start a replayer for the image (the lab's `rbd mirror image
    /// state check interval = 5`; lab §7: the new secondary replays 2.7–6.7 s
    /// after the demote).
    pub replayer_start: Duration,
    /// Status describes the old state this long after a change (lab P9; split-brain
    /// showed 1.5–2.2 s after the demote, both `up+unknown` 3.8 s after it).
    pub status_lag: Duration,
    /// Resync (journal): deleted, re-created, replaying after (lab §6.1: 4.9, 9.9, 12.4 s).
    pub resync_journal: [Duration; 3],
    /// Resync (snapshot): replaying after 34.5 s (lab §7).
    pub resync_snapshot: [Duration; 3],
    /// The CLI's deadlines (cli.rs): a down site fails a call after this.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        let ms = Duration::from_millis;
        SimConfig {
            call_latency: ms(50),
            replay_delay: ms(2000),
            snapshot_copy: ms(1000),
            replayer_start: ms(5000),
            status_lag: ms(2000),
            resync_journal: [ms(4900), ms(9900), ms(12400)],
            resync_snapshot: [ms(4900), ms(9900), ms(34500)],
            // The controller's deadline for the peer's reads (--peer-timeout-secs):
            // how long a dead peer takes to tell, asked twice.
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(300),
        }
    }
}

/// How an injected fault fails a call.
#[derive(Clone, Debug)]
pub enum FaultError {
    /// The CLI's own deadline passed (cli.rs: Unavailable, no exit code).
    Timeout,
    /// `rbd` exited with this code and stderr (classified like the CLI's).
    Exit(i32, String),
}

/// Fails matching calls, `times` times.
#[derive(Clone, Debug)]
pub struct Fault {
    pub site: Option<Site>,
    pub op: Option<Op>,
    /// The call changes the image first, then fails (the dangerous kind).
    pub take_effect: bool,
    pub error: FaultError,
    pub times: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    Before,
    After,
}

/// Kill the caller at await point `at` (0-based: Ceph calls and checkpoint
/// saves, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashPlan {
    pub at: u32,
    pub when: Crash,
}

#[derive(Clone, Debug)]
enum Kind {
    Tag { owner: Option<Site>, tid: u64 },
    Event,
    Write,
    MirrorSnap { demoted: bool },
}

#[derive(Clone, Debug)]
struct Item {
    uid: u64,
    kind: Kind,
    created: Instant,
}

#[derive(Clone, Debug)]
struct Entry {
    item: Item,
    /// Copied by rbd-mirror (not made by this site's own librbd).
    copied: bool,
    complete_at: Instant,
    snap_id: u64,
}

#[derive(Clone, Debug)]
struct Copy {
    id: String,
    log: Vec<Entry>,
    lockers: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Flagged,
    Deleted,
    Recreated,
}

#[derive(Clone, Debug, Default)]
struct StatusRec {
    shown: Option<(String, String)>,
    pending: Option<((String, String), Instant)>,
}

#[derive(Clone, Debug)]
struct Image {
    name: String,
    pool: String,
    mode: Mode,
    global_id: String,
    copies: [Option<Copy>; 2],
    resync: [Option<(Stage, Instant)>; 2],
    status: [StatusRec; 2],
    /// The peer's journal client is registered on this site's journal.
    client_on: [bool; 2],
    resync_flags: [u32; 2],
    recreations: [u32; 2],
}

#[derive(Clone, Debug)]
struct SiteState {
    up_since: Option<Instant>,
    daemon_since: Option<Instant>,
}

/// One call made through the `Ceph` trait.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub site: Site,
    pub op: Op,
    pub target: String,
    pub start: Instant,
    pub end: Instant,
    pub ok: bool,
}

struct World {
    cfg: SimConfig,
    epoch: Instant,
    sites: [SiteState; 2],
    images: BTreeMap<String, Image>,
    next_uid: u64,
    next_id: u64,
    next_snap: u64,
    faults: Vec<Fault>,
    crash: Option<CrashPlan>,
    points: u32,
    calls: Vec<CallRecord>,
    in_flight: BTreeMap<(Site, String), u32>,
    overlaps: Vec<String>,
    topology_changed: Instant,
    /// Cancelled when a crash plan kills the caller; replaced by `revive`.
    killed: CancellationToken,
}

type Refusal = (i32, String);

const LIBRBD: &str = "2026-11-27T11:33:07.861+0000 7f868af186c0 -1";

fn enoent(name: &str) -> Refusal {
    (
        2,
        format!("rbd: error opening image {name}: (2) No such file or directory\n"),
    )
}

fn is_prefix(a: &[Entry], b: &[Entry]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x.item.uid == y.item.uid)
}

/// Journal mode: from when site x's rbd-mirror replays the peer y's journal
/// into x's copy (None: it does not). A copy whose newest tag it made itself
/// (its own demotion) has nothing of y's to continue from: its replayer
/// starts `start` after that demotion and only attaches to a *primary* peer;
/// a peer already demoted again by then is reported "remote image is not
/// primary" and nothing is replayed, so x keeps its own demotion as its
/// newest tag (lab P10, and the conformance test: after demote A, promote B,
/// demote B within a second, A stayed `up+unknown` "remote image is not
/// primary" for minutes without B's history). A copy whose newest tag was
/// copied from y follows y, through y's demotion.
fn journal_follow_from(
    cx: &[Entry],
    cy: &[Entry],
    y: Site,
    since: Instant,
    start: Duration,
    now: Instant,
) -> Option<Instant> {
    let last_tag = cx
        .iter()
        .rev()
        .find(|e| matches!(e.item.kind, Kind::Tag { .. }));
    let Some(own) = last_tag.filter(|e| !e.copied) else {
        return Some(since);
    };
    let ready = max_t(own.item.created + start, since);
    if now < ready {
        return None;
    }
    // Was y primary at some moment at or after `ready`?
    let tags: Vec<&Entry> = cy
        .iter()
        .filter(|e| matches!(e.item.kind, Kind::Tag { .. }))
        .collect();
    let attached = tags.iter().enumerate().any(|(n, e)| {
        let Kind::Tag { owner, .. } = e.item.kind else {
            return false;
        };
        owner == Some(y) && tags.get(n + 1).is_none_or(|next| next.item.created > ready)
    });
    attached.then_some(ready)
}

fn promotion(log: &[Entry], site: Site, mode: Mode) -> Promotion {
    for e in log.iter().rev() {
        match (&e.item.kind, mode) {
            (Kind::Tag { owner, .. }, Mode::Journal) => {
                return match owner {
                    Some(s) if *s == site => Promotion::Primary,
                    Some(_) => Promotion::NonPrimary,
                    None => Promotion::Orphan,
                };
            }
            (Kind::MirrorSnap { demoted }, Mode::Snapshot) => {
                return match (demoted, e.copied) {
                    (true, _) => Promotion::Orphan,
                    (false, false) => Promotion::Primary,
                    (false, true) => Promotion::NonPrimary,
                };
            }
            _ => {}
        }
    }
    Promotion::NonPrimary
}

/// Journal position of the last own entry in `log` (lab §6.1 JSON shape).
fn position(log: &[Entry]) -> Option<Value> {
    let mut tag = 0;
    let mut in_tag = 0u64;
    let mut last = None;
    for e in log {
        match e.item.kind {
            Kind::Tag { tid, .. } => {
                tag = tid;
                in_tag = 0;
            }
            Kind::Event | Kind::Write => {
                if !e.copied {
                    last = Some(
                        json!({"object_number": in_tag % 4, "tag_tid": tag, "entry_tid": in_tag}),
                    );
                }
                in_tag += 1;
            }
            Kind::MirrorSnap { .. } => {}
        }
    }
    last
}

fn max_t(a: Instant, b: Instant) -> Instant {
    if a > b { a } else { b }
}

impl World {
    fn unix(&self, t: Instant) -> i64 {
        // The lab's clock (ceph-lab.md §6.2 timestamps), advanced by model time.
        1_795_779_266 + t.duration_since(self.epoch).as_secs() as i64
    }

    fn text_time(&self, t: Instant) -> String {
        jiff::Timestamp::from_second(self.unix(t))
            .map(|ts| ts.strftime("%F %T").to_string())
            .unwrap_or_default()
    }

    fn site_up(&self, s: Site) -> bool {
        self.sites[s.i()].up_since.is_some()
    }

    fn daemon_up(&self, s: Site) -> bool {
        self.site_up(s) && self.sites[s.i()].daemon_since.is_some()
    }

    /// Since when site `x`'s daemon can read the peer: its daemon and both sites up.
    fn link_since(&self, x: Site) -> Option<Instant> {
        let y = x.other();
        let a = self.sites[x.i()].daemon_since?;
        let b = self.sites[x.i()].up_since?;
        let c = self.sites[y.i()].up_since?;
        Some(max_t(max_t(a, b), c))
    }

    fn uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    fn image(&self, key: &str) -> Result<&Image, Refusal> {
        self.images.get(key).ok_or_else(|| enoent(key))
    }

    fn copy(&self, key: &str, s: Site) -> Result<&Copy, Refusal> {
        self.image(key)?.copies[s.i()]
            .as_ref()
            .ok_or_else(|| enoent(key))
    }

    /// Applies everything the daemons did up to `now`.
    fn settle(&mut self, now: Instant) {
        let keys: Vec<String> = self.images.keys().cloned().collect();
        for key in keys {
            // Twice: a copy made on one side can be copied back in the same instant.
            for _ in 0..2 {
                for x in Site::BOTH {
                    self.advance_resync(&key, x, now);
                    self.replay(&key, x, now);
                }
            }
            for x in Site::BOTH {
                self.refresh_status(&key, x, now);
            }
        }
    }

    fn replay(&mut self, key: &str, x: Site, now: Instant) {
        let Some(since) = self.link_since(x) else {
            return;
        };
        let delay = self.cfg.replay_delay;
        let copy_time = self.cfg.snapshot_copy;
        let start = self.cfg.replayer_start;
        let mut next_snap = self.next_snap;
        let img = self.images.get_mut(key).expect("image");
        let y = x.other();
        let (Some(cx), Some(cy)) = (&img.copies[x.i()], &img.copies[y.i()]) else {
            return;
        };
        if promotion(&cx.log, x, img.mode) == Promotion::Primary || !is_prefix(&cx.log, &cy.log) {
            return;
        }
        let since = match img.mode {
            Mode::Journal => match journal_follow_from(&cx.log, &cy.log, y, since, start, now) {
                Some(t) => t,
                None => return,
            },
            Mode::Snapshot => since,
        };
        let pending: Vec<Entry> = cy.log[cx.log.len()..].to_vec();
        // Replaying from y: x's client is registered on y's journal.
        img.client_on[y.i()] = true;
        let cx = img.copies[x.i()].as_mut().expect("copy");
        let visible = |e: &Entry| max_t(e.item.created, since) + delay;
        match img.mode {
            Mode::Journal => {
                for e in pending {
                    let at = visible(&e);
                    if now < at {
                        break;
                    }
                    cx.log.push(Entry {
                        item: e.item,
                        copied: true,
                        complete_at: at,
                        snap_id: 0,
                    });
                }
            }
            Mode::Snapshot => {
                // Data moves only with a mirror snapshot (facts §1.8).
                let mut start = 0;
                while let Some(j) = pending[start..]
                    .iter()
                    .position(|e| matches!(e.item.kind, Kind::MirrorSnap { .. }))
                {
                    let j = start + j;
                    let at = visible(&pending[j]);
                    if now < at {
                        break;
                    }
                    for e in &pending[start..=j] {
                        let snap = matches!(e.item.kind, Kind::MirrorSnap { .. });
                        cx.log.push(Entry {
                            item: e.item.clone(),
                            copied: true,
                            complete_at: at + copy_time,
                            snap_id: if snap {
                                next_snap += 1;
                                next_snap
                            } else {
                                0
                            },
                        });
                    }
                    start = j + 1;
                }
            }
        }
        self.next_snap = next_snap;
    }

    fn advance_resync(&mut self, key: &str, x: Site, now: Instant) {
        loop {
            let img = &self.images[key];
            let Some((stage, since)) = img.resync[x.i()] else {
                return;
            };
            let steps = match img.mode {
                Mode::Journal => self.cfg.resync_journal,
                Mode::Snapshot => self.cfg.resync_snapshot,
            };
            let link = self.link_since(x);
            let y = x.other();
            match stage {
                Stage::Flagged => {
                    // Only x's daemon acts on the flag (facts §1.2).
                    let Some(d) = self.sites[x.i()].daemon_since.filter(|_| self.site_up(x)) else {
                        return;
                    };
                    let due = max_t(since, d) + steps[0];
                    if now < due {
                        return;
                    }
                    let img = self.images.get_mut(key).expect("image");
                    img.copies[x.i()] = None;
                    img.status[x.i()] = StatusRec::default();
                    img.resync[x.i()] = Some((Stage::Deleted, due));
                }
                Stage::Deleted => {
                    // Re-created from a primary peer only.
                    let Some(link) = link else { return };
                    let Some(cy) = &img.copies[y.i()] else { return };
                    if promotion(&cy.log, y, img.mode) != Promotion::Primary {
                        return;
                    }
                    let due = max_t(since + (steps[1] - steps[0]), link);
                    if now < due {
                        return;
                    }
                    let mut log: Vec<Entry> = cy.log.clone();
                    if img.mode == Mode::Snapshot
                        && let Some(last) = log
                            .iter()
                            .rposition(|e| matches!(e.item.kind, Kind::MirrorSnap { .. }))
                    {
                        log.truncate(last + 1);
                    }
                    for e in &mut log {
                        e.copied = true;
                        e.complete_at = due;
                        if matches!(e.item.kind, Kind::MirrorSnap { .. }) {
                            self.next_snap += 1;
                            e.snap_id = self.next_snap;
                        }
                    }
                    self.next_id += 1;
                    let id = format!("{:012x}", 0x10_0000_0000 + self.next_id);
                    let img = self.images.get_mut(key).expect("image");
                    img.copies[x.i()] = Some(Copy {
                        id,
                        log,
                        lockers: vec![],
                    });
                    img.recreations[x.i()] += 1;
                    img.client_on[y.i()] = true;
                    img.status[x.i()] = StatusRec::default();
                    img.resync[x.i()] = Some((Stage::Recreated, due));
                }
                Stage::Recreated => {
                    let due = since + (steps[2] - steps[1]);
                    if now < due {
                        return;
                    }
                    let img = self.images.get_mut(key).expect("image");
                    img.resync[x.i()] = None;
                    img.status[x.i()] = StatusRec::default();
                }
            }
        }
    }

    /// What x's daemon would report now (None: no image on x).
    fn truth(&self, key: &str, x: Site, now: Instant) -> Option<(String, String)> {
        let img = &self.images[key];
        let cx = img.copies[x.i()].as_ref()?;
        let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        if matches!(img.resync[x.i()], Some((Stage::Recreated, _))) {
            return s("down+unknown", "status not found");
        }
        if !self.daemon_up(x) {
            return s("down+stopped", "stopped");
        }
        let y = x.other();
        if promotion(&cx.log, x, img.mode) == Promotion::Primary {
            return s("up+stopped", "local image is primary");
        }
        if !self.site_up(y) {
            // Lab §9: the survivor reports stopping_replay while the peer is frozen.
            return s("up+stopping_replay", "stopping replay");
        }
        let Some(cy) = img.copies[y.i()].as_ref() else {
            return s("up+error", "remote image does not exist");
        };
        let y_primary = promotion(&cy.log, y, img.mode) == Promotion::Primary;
        if !is_prefix(&cx.log, &cy.log) {
            return if y_primary {
                match img.mode {
                    Mode::Journal => s("up+error", "split-brain detected"),
                    Mode::Snapshot => s("up+error", "split-brain"),
                }
            } else {
                s("up+unknown", "remote image is not primary")
            };
        }
        if img.mode == Mode::Journal
            && cy.log.len() > cx.log.len()
            && let Some(since) = self.link_since(x)
            && journal_follow_from(&cx.log, &cy.log, y, since, self.cfg.replayer_start, now)
                .is_none()
        {
            return s("up+unknown", "remote image is not primary");
        }
        let behind = match img.mode {
            Mode::Journal => cy.log.len() > cx.log.len(),
            Mode::Snapshot => cy.log[cx.log.len()..]
                .iter()
                .any(|e| matches!(e.item.kind, Kind::MirrorSnap { .. })),
        };
        if y_primary || behind {
            return Some((
                "up+replaying".into(),
                format!("replaying, {}", self.replay_json(img, cx, cy, now)),
            ));
        }
        match img.mode {
            Mode::Journal => s("up+unknown", "remote image is not primary"),
            Mode::Snapshot => s("up+unknown", "remote image demoted"),
        }
    }

    fn replay_json(&self, img: &Image, cx: &Copy, cy: &Copy, now: Instant) -> Value {
        match img.mode {
            Mode::Snapshot => {
                let newest = |log: &[Entry], complete: bool| {
                    log.iter()
                        .rev()
                        .find(|e| {
                            matches!(e.item.kind, Kind::MirrorSnap { .. })
                                && (!complete || e.complete_at <= now)
                        })
                        .map(|e| self.unix(e.item.created))
                };
                let syncing = cx.log.iter().any(|e| e.complete_at > now);
                json!({
                    "bytes_per_second": 0.0,
                    "local_snapshot_timestamp": newest(&cx.log, true),
                    "remote_snapshot_timestamp": newest(&cy.log, false),
                    "replay_state": if syncing { "syncing" } else { "idle" },
                })
            }
            Mode::Journal => json!({
                "bytes_per_second": 0.0,
                "entries_behind_primary": cy.log.len().saturating_sub(cx.log.len()),
                "primary_position": position(&cy.log).unwrap_or(json!({})),
                "non_primary_position": position(&cy.log[..cx.log.len()]).unwrap_or(json!({})),
            }),
        }
    }

    fn refresh_status(&mut self, key: &str, x: Site, now: Instant) {
        let truth = self.truth(key, x, now);
        let lag = self.cfg.status_lag;
        let last = self.last_change(key).min(now);
        let img = &self.images[key];
        let immediate = !self.daemon_up(x) || img.resync[x.i()].is_some();
        let rec = &mut self.images.get_mut(key).expect("image").status[x.i()];
        let Some(truth) = truth else {
            *rec = StatusRec::default();
            return;
        };
        if rec.shown.is_none() || immediate || rec.shown.as_ref() == Some(&truth) {
            rec.shown = Some(truth);
            rec.pending = None;
            return;
        }
        // The daemon saw the change when it happened, not when the model is
        // next asked: the lag runs from the latest event of the image.
        let since = match &rec.pending {
            Some((p, since)) if *p == truth => *since,
            _ => last,
        };
        if now >= since + lag {
            rec.shown = Some(truth);
            rec.pending = None;
        } else {
            rec.pending = Some((truth, since));
        }
    }

    /// When the image or the sites last changed (an item made or copied, a
    /// resync stage, a daemon or site going up or down).
    fn last_change(&self, key: &str) -> Instant {
        let img = &self.images[key];
        let mut t = self.topology_changed;
        for c in img.copies.iter().flatten() {
            for e in &c.log {
                t = max_t(t, max_t(e.item.created, e.complete_at));
            }
        }
        for (_, since) in img.resync.iter().flatten() {
            t = max_t(t, *since);
        }
        t
    }

    // ---- operations (used by the Ceph trait and by scenario setup) ----

    fn mirrored(&self, key: &str, x: Site) -> Result<(&Image, &Copy), Refusal> {
        let img = self.image(key)?;
        let c = self.copy(key, x)?;
        Ok((img, c))
    }

    fn push(&mut self, key: &str, x: Site, kind: Kind, now: Instant) {
        let uid = self.uid();
        let snap = matches!(kind, Kind::MirrorSnap { .. });
        if snap {
            self.next_snap += 1;
        }
        let snap_id = if snap { self.next_snap } else { 0 };
        let c = self.images.get_mut(key).expect("image").copies[x.i()]
            .as_mut()
            .expect("copy");
        c.log.push(Entry {
            item: Item {
                uid,
                kind,
                created: now,
            },
            copied: false,
            complete_at: now,
            snap_id,
        });
    }

    fn new_tag(&mut self, key: &str, x: Site, owner: Option<Site>, now: Instant) {
        let tid = self.uid();
        self.push(key, x, Kind::Tag { owner, tid }, now);
        // librbd appends a DemotePromoteEvent in the new tag.
        self.push(key, x, Kind::Event, now);
    }

    fn demote(&mut self, key: &str, x: Site, now: Instant) -> Result<(), Refusal> {
        let (img, c) = self.mirrored(key, x)?;
        if promotion(&c.log, x, img.mode) != Promotion::Primary {
            return Err((
                22,
                format!(
                    "{LIBRBD} librbd::mirror::DemoteRequest: 0x1 handle_get_info: image is not primary\nrbd: error demoting image to non-primary\n"
                ),
            ));
        }
        if !c.lockers.is_empty() {
            return Err((
                30,
                format!(
                    "{LIBRBD} librbd::mirror::DemoteRequest: 0x1 handle_acquire_lock: failed to acquire exclusive lock: (30) Read-only file system\nrbd: error demoting image to non-primary\n"
                ),
            ));
        }
        match img.mode {
            Mode::Journal => self.new_tag(key, x, None, now),
            Mode::Snapshot => self.push(key, x, Kind::MirrorSnap { demoted: true }, now),
        }
        Ok(())
    }

    fn promote(&mut self, key: &str, x: Site, force: bool, now: Instant) -> Result<(), Refusal> {
        let (img, c) = self.mirrored(key, x)?;
        let mode = img.mode;
        let refuse = |why: &str| {
            (
                if why.starts_with("image is already") {
                    22
                } else {
                    16
                },
                format!(
                    "{LIBRBD} librbd::mirror::PromoteRequest: 0x1 handle_get_info: {why}\nrbd: error promoting image to primary\n{LIBRBD} librbd::api::Mirror: image_promote: failed to promote image\n"
                ),
            )
        };
        match promotion(&c.log, x, mode) {
            Promotion::Primary => return Err(refuse("image is already primary")),
            Promotion::NonPrimary if !force => {
                return Err(refuse(
                    "image is primary within a remote cluster or demotion is not propagated yet",
                ));
            }
            _ => {}
        }
        let incomplete = c.log.iter().any(|e| e.complete_at > now);
        if mode == Mode::Snapshot && incomplete {
            if !force {
                // Lab §6.2: promoting while the demotion snapshot is being copied.
                return Err((
                    30,
                    format!(
                        "{LIBRBD} librbd::mirror::snapshot::CreatePrimaryRequest: 0x1 handle_create_snapshot: failed to create mirror snapshot: (30) Read-only file system\nrbd: error promoting image to primary\n"
                    ),
                ));
            }
            // Forced: roll back to the last complete snapshot (facts §1.2).
            let c = self.images.get_mut(key).expect("image").copies[x.i()]
                .as_mut()
                .expect("copy");
            c.log.retain(|e| e.complete_at <= now);
        }
        match mode {
            Mode::Journal => self.new_tag(key, x, Some(x), now),
            Mode::Snapshot => self.push(key, x, Kind::MirrorSnap { demoted: false }, now),
        }
        Ok(())
    }

    fn resync(&mut self, key: &str, x: Site) -> Result<bool, Refusal> {
        let (img, c) = self.mirrored(key, x)?;
        if promotion(&c.log, x, img.mode) == Promotion::Primary {
            return Err((
                22,
                format!(
                    "rbd: error flagging image resync\n{LIBRBD} librbd::api::Mirror: image_resync: image is primary, cannot resync to itself\n"
                ),
            ));
        }
        let img = self.images.get_mut(key).expect("image");
        if matches!(img.resync[x.i()], Some((Stage::Flagged, _))) {
            // Already flagged: the daemon makes one copy for both. A copy
            // re-created since is a new image: flagging it copies again.
            return Ok(false);
        }
        img.resync[x.i()] = Some((Stage::Flagged, Instant::now()));
        img.resync_flags[x.i()] += 1;
        Ok(true)
    }

    fn info_json(&self, key: &str, x: Site) -> Result<Value, Refusal> {
        let (img, c) = self.mirrored(key, x)?;
        let primary = promotion(&c.log, x, img.mode) == Promotion::Primary;
        let (mode, mut features) = match img.mode {
            Mode::Journal => ("journal", vec!["layering", "exclusive-lock", "journaling"]),
            Mode::Snapshot => (
                "snapshot",
                vec![
                    "layering",
                    "exclusive-lock",
                    "object-map",
                    "fast-diff",
                    "deep-flatten",
                ],
            ),
        };
        if img.mode == Mode::Snapshot && !primary {
            features.push("non-primary");
        }
        Ok(json!({
            "name": img.name, "id": c.id, "size": 67108864, "block_name_prefix": format!("rbd_data.{}", c.id),
            "format": 2, "features": features,
            "mirroring": {"mode": mode, "state": "enabled", "global_id": img.global_id, "primary": primary},
        }))
    }

    fn status_json(&self, key: &str, x: Site) -> Result<Value, Refusal> {
        let (img, _) = self.mirrored(key, x)?;
        let y = x.other();
        let now = Instant::now();
        let (state, description) = img.status[x.i()]
            .shown
            .clone()
            .unwrap_or(("down+unknown".into(), "status not found".into()));
        let (mut pstate, pdesc) = img.status[y.i()]
            .shown
            .clone()
            .unwrap_or(("down+unknown".into(), "status not found".into()));
        if !self.daemon_up(y) && pstate.starts_with("up+") {
            // Its heartbeat stopped: the record it left is reported down.
            pstate = pstate.replacen("up+", "down+", 1);
        }
        Ok(json!({
            "name": img.name, "global_id": img.global_id, "state": state, "description": description,
            "last_update": self.text_time(now),
            "peer_sites": [{"site_name": y.name(), "mirror_uuids": y.mirror_uuid(), "state": pstate,
                            "description": pdesc, "last_update": self.text_time(now)}],
        }))
    }

    fn snapshots_json(&self, key: &str, x: Site, now: Instant) -> Result<Value, Refusal> {
        let (img, c) = self.mirrored(key, x)?;
        let y = x.other();
        let snaps: Vec<Value> = c
            .log
            .iter()
            .filter(|e| matches!(e.item.kind, Kind::MirrorSnap { .. }))
            .map(|e| {
                let demoted = matches!(e.item.kind, Kind::MirrorSnap { demoted: true });
                let (prefix, state) = match (e.copied, demoted) {
                    (false, false) => ("primary", "primary"),
                    (false, true) => ("primary", "demoted"),
                    (true, false) => ("non_primary", "non-primary"),
                    (true, true) => ("non_primary", "demoted"),
                };
                let mut ns = json!({"type": "mirror", "state": state, "mirror_peer_uuids": [],
                                    "complete": e.complete_at <= now});
                if e.copied {
                    ns["primary_mirror_uuid"] = json!(y.mirror_uuid());
                    ns["primary_snap_id"] = json!(e.item.uid);
                    ns["last_copied_object_number"] = json!(16);
                }
                json!({"id": e.snap_id, "name": format!(".mirror.{prefix}.{}.{}", img.global_id, e.item.uid),
                       "size": 67108864, "protected": "false", "timestamp": self.text_time(e.item.created),
                       "namespace": ns})
            })
            .collect();
        // Ceph keeps a few mirror snapshots (facts §1.3); the newest matter.
        let keep = snaps.len().saturating_sub(5);
        Ok(Value::Array(snaps[keep..].to_vec()))
    }

    fn journal_json(&self, key: &str, x: Site) -> Result<Value, Refusal> {
        let (img, c) = self.mirrored(key, x)?;
        if img.mode != Mode::Journal {
            return Err((22, "rbd: journaling is not enabled for the image\n".into()));
        }
        let pos = |p: Option<Value>| json!({"object_positions": p.into_iter().collect::<Vec<_>>()});
        let mut clients = vec![
            json!({"id": "", "data": "", "commit_position": pos(position(&c.log)), "state": "connected"}),
        ];
        if img.client_on[x.i()] {
            let peer = img.copies[x.other().i()].as_ref();
            let common = peer.map_or(0, |p| {
                c.log
                    .iter()
                    .zip(&p.log)
                    .take_while(|(a, b)| a.item.uid == b.item.uid)
                    .count()
            });
            clients.push(json!({"id": x.other().mirror_uuid(),
                                "commit_position": pos(position(&c.log[..common])), "state": "connected"}));
        }
        Ok(json!({"minimum_set": 0, "active_set": 0, "registered_clients": clients}))
    }
}

/// The model: two sites and their images, shared by every handle.
#[derive(Clone)]
pub struct Sim {
    w: Arc<Mutex<World>>,
}

/// One site of a [`Sim`], as a `Ceph` backend.
#[derive(Clone)]
pub struct SimSite {
    sim: Sim,
    site: Site,
}

struct InFlight {
    w: Arc<Mutex<World>>,
    key: Option<(Site, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(k) = self.key.take()
            && let Ok(mut w) = self.w.lock()
            && let Some(n) = w.in_flight.get_mut(&k)
        {
            *n -= 1;
        }
    }
}

impl Sim {
    /// Both sites and both rbd-mirror daemons up, no image.
    pub fn new(cfg: SimConfig) -> Sim {
        let now = Instant::now();
        let up = SiteState {
            up_since: Some(now),
            daemon_since: Some(now),
        };
        Sim {
            w: Arc::new(Mutex::new(World {
                cfg,
                epoch: now,
                sites: [up.clone(), up],
                images: BTreeMap::new(),
                next_uid: 0,
                next_id: 0,
                next_snap: 0,
                faults: vec![],
                crash: None,
                points: 0,
                calls: vec![],
                in_flight: BTreeMap::new(),
                overlaps: vec![],
                topology_changed: now,
                killed: CancellationToken::new(),
            })),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.w.lock().expect("sim world")
    }

    /// The world settled to now.
    fn settled(&self) -> MutexGuard<'_, World> {
        let mut w = self.world();
        w.settle(Instant::now());
        w
    }

    pub fn site(&self, site: Site) -> SimSite {
        SimSite {
            sim: self.clone(),
            site,
        }
    }

    // ---- setup and faults ----

    /// A mirrored image, primary on `primary`, already copied to the peer
    /// (the state the lab reaches once the peer replays).
    pub fn add_image(&self, pool: &str, name: &str, mode: Mode, primary: Site) {
        let now = Instant::now();
        let mut w = self.settled();
        let key = format!("{pool}/{name}");
        w.next_id += 2;
        let ids = [
            format!("{:012x}", 0x10_0000_0000 + w.next_id - 1),
            format!("{:012x}", 0x10_0000_0000 + w.next_id),
        ];
        let global_id = format!("8499f2ed-0000-4000-8000-{:012x}", w.next_id);
        let empty = |id: &str| {
            Some(Copy {
                id: id.into(),
                log: vec![],
                lockers: vec![],
            })
        };
        w.images.insert(
            key.clone(),
            Image {
                name: name.into(),
                pool: pool.into(),
                mode,
                global_id,
                copies: [empty(&ids[0]), empty(&ids[1])],
                resync: [None, None],
                status: Default::default(),
                client_on: [false, false],
                resync_flags: [0, 0],
                recreations: [0, 0],
            },
        );
        match mode {
            Mode::Journal => {
                // Enabling allocates the first tag, without an event.
                let tid = w.uid();
                w.push(
                    &key,
                    primary,
                    Kind::Tag {
                        owner: Some(primary),
                        tid,
                    },
                    now,
                );
            }
            Mode::Snapshot => w.push(&key, primary, Kind::MirrorSnap { demoted: false }, now),
        }
        let src = w.images[&key].copies[primary.i()].clone().expect("copy");
        let img = w.images.get_mut(&key).expect("image");
        let dst = img.copies[primary.other().i()].as_mut().expect("copy");
        dst.log = src
            .log
            .iter()
            .map(|e| Entry {
                copied: true,
                ..e.clone()
            })
            .collect();
        img.client_on[primary.i()] = true;
        w.settle(now);
    }

    /// A client write on the primary (refused elsewhere: non-primary is read-only).
    pub fn write(&self, site: Site, key: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut w = self.settled();
        let (img, c) = w.mirrored(key, site).map_err(|e| e.1)?;
        if promotion(&c.log, site, img.mode) != Promotion::Primary {
            return Err(format!("{key} is read-only on {}", site.name()));
        }
        w.push(key, site, Kind::Write, now);
        Ok(())
    }

    /// `rbd mirror image snapshot` (what a schedule does).
    pub fn mirror_snapshot(&self, site: Site, key: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut w = self.settled();
        let (img, c) = w.mirrored(key, site).map_err(|e| e.1)?;
        if img.mode != Mode::Snapshot || promotion(&c.log, site, img.mode) != Promotion::Primary {
            return Err("snapshot mirroring needs a primary snapshot-mode image".into());
        }
        w.push(key, site, Kind::MirrorSnap { demoted: false }, now);
        Ok(())
    }

    pub fn demote(&self, site: Site, key: &str) -> Result<(), String> {
        let now = Instant::now();
        self.settled().demote(key, site, now).map_err(|e| e.1)
    }

    pub fn promote(&self, site: Site, key: &str, force: bool) -> Result<(), String> {
        let now = Instant::now();
        self.settled()
            .promote(key, site, force, now)
            .map_err(|e| e.1)
    }

    pub fn resync(&self, site: Site, key: &str) -> Result<(), String> {
        self.settled().resync(key, site).map(drop).map_err(|e| e.1)
    }

    /// A client maps the image and holds its exclusive lock (or lets it go).
    pub fn set_locker(&self, site: Site, key: &str, holder: Option<&str>) {
        let mut w = self.settled();
        if let Some(c) = w
            .images
            .get_mut(key)
            .and_then(|i| i.copies[site.i()].as_mut())
        {
            c.lockers = holder.map(|h| vec![h.to_string()]).unwrap_or_default();
        }
    }

    pub fn set_daemon(&self, site: Site, up: bool) {
        let now = Instant::now();
        let mut w = self.settled();
        let s = &mut w.sites[site.i()];
        s.daemon_since = match (up, s.daemon_since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
            (false, _) => None,
        };
        w.topology_changed = now;
        w.settle(now);
    }

    pub fn set_site(&self, site: Site, up: bool) {
        let now = Instant::now();
        let mut w = self.settled();
        let s = &mut w.sites[site.i()];
        s.up_since = match (up, s.up_since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
            (false, _) => None,
        };
        w.topology_changed = now;
        w.settle(now);
    }

    pub fn add_fault(&self, f: Fault) {
        self.world().faults.push(f);
    }

    pub fn set_crash(&self, plan: Option<CrashPlan>) {
        self.world().crash = plan;
    }

    /// Fires when a crash plan killed the caller.
    pub fn killed(&self) -> CancellationToken {
        self.world().killed.clone()
    }

    /// A new process starts: calls work again, and the plan is spent.
    pub fn revive(&self) {
        let mut w = self.world();
        w.killed = CancellationToken::new();
        w.crash = None;
    }

    /// An await point of the caller (Ceph calls use it; a checkpoint should
    /// too): returns its index, or never returns when the plan kills here.
    pub async fn point(&self, when: Crash, index: Option<u32>) -> u32 {
        let state = {
            let mut w = self.world();
            if w.killed.is_cancelled() {
                None
            } else {
                let n = match index {
                    Some(n) => n,
                    None => {
                        w.points += 1;
                        w.points - 1
                    }
                };
                Some((
                    n,
                    w.crash == Some(CrashPlan { at: n, when }),
                    w.killed.clone(),
                ))
            }
        };
        let Some((n, kill, killed)) = state else {
            // Dead processes make no calls.
            return std::future::pending().await;
        };
        if kill {
            killed.cancel();
            return std::future::pending().await;
        }
        n
    }

    /// Await points passed so far.
    pub fn points(&self) -> u32 {
        self.world().points
    }

    // ---- observation ----

    pub fn settle(&self) {
        drop(self.settled());
    }

    /// `Some(true)` when `site`'s copy is primary, None when absent.
    pub fn primary(&self, site: Site, key: &str) -> Option<bool> {
        let w = self.settled();
        let img = w.images.get(key)?;
        let c = img.copies[site.i()].as_ref()?;
        Some(promotion(&c.log, site, img.mode) == Promotion::Primary)
    }

    pub fn promotion(&self, site: Site, key: &str) -> Option<Promotion> {
        let w = self.settled();
        let img = w.images.get(key)?;
        let c = img.copies[site.i()].as_ref()?;
        Some(promotion(&c.log, site, img.mode))
    }

    /// Both copies primary, or histories that diverged (neither holds the
    /// other's): what only a forced promote should ever make.
    pub fn split_brain(&self, key: &str) -> bool {
        let w = self.settled();
        let Some(img) = w.images.get(key) else {
            return false;
        };
        let (Some(a), Some(b)) = (&img.copies[0], &img.copies[1]) else {
            return false;
        };
        let both = promotion(&a.log, Site::A, img.mode) == Promotion::Primary
            && promotion(&b.log, Site::B, img.mode) == Promotion::Primary;
        both || !(is_prefix(&a.log, &b.log) || is_prefix(&b.log, &a.log))
    }

    /// Writes held by `site`'s copy (a stale promote lacks some).
    pub fn writes(&self, site: Site, key: &str) -> Vec<u64> {
        let w = self.settled();
        w.images
            .get(key)
            .and_then(|i| i.copies[site.i()].as_ref())
            .map(|c| {
                c.log
                    .iter()
                    .filter(|e| matches!(e.item.kind, Kind::Write))
                    .map(|e| e.item.uid)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Resyncs that took effect on `site` (flags set on an unflagged copy).
    pub fn resyncs(&self, site: Site, key: &str) -> u32 {
        self.world()
            .images
            .get(key)
            .map_or(0, |i| i.resync_flags[site.i()])
    }

    /// Times `site`'s copy was deleted and copied again.
    pub fn recreations(&self, site: Site, key: &str) -> u32 {
        self.world()
            .images
            .get(key)
            .map_or(0, |i| i.recreations[site.i()])
    }

    pub fn image_id(&self, site: Site, key: &str) -> Option<String> {
        let w = self.settled();
        Some(w.images.get(key)?.copies[site.i()].as_ref()?.id.clone())
    }

    pub fn status_of(&self, site: Site, key: &str) -> Option<(String, String)> {
        let w = self.settled();
        w.images.get(key)?.status[site.i()].shown.clone()
    }

    /// Mutating calls that overlapped another on the same image and site (I4).
    pub fn overlaps(&self) -> Vec<String> {
        self.world().overlaps.clone()
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.world().calls.clone()
    }

    /// Calls of `op` that succeeded on `site` (any image).
    pub fn count(&self, site: Site, op: Op) -> usize {
        self.world()
            .calls
            .iter()
            .filter(|c| c.site == site && c.op == op && c.ok)
            .count()
    }

    // ---- the call path shared by every trait method ----

    async fn call<T: DeserializeOwned>(
        &self,
        site: Site,
        op: Op,
        target: &str,
        f: impl FnOnce(&mut World, Instant) -> Result<Value, Refusal>,
    ) -> Result<T, RbdError> {
        let n = self.point(Crash::Before, None).await;
        let start = Instant::now();
        let (up, latency, deadline) = {
            let w = self.world();
            let deadline = if op.mutates() {
                w.cfg.write_timeout
            } else {
                w.cfg.read_timeout
            };
            (w.site_up(site), w.cfg.call_latency, deadline)
        };
        let _flight = InFlight {
            w: self.w.clone(),
            key: op.mutates().then(|| {
                let key = (site, target.to_string());
                let mut w = self.world();
                let busy = w.in_flight.entry(key.clone()).or_default();
                *busy += 1;
                if *busy > 1 {
                    let msg = format!(
                        "{} {target} on {} overlapped another mutation at {:?}",
                        op.as_str(),
                        site.name(),
                        start.duration_since(w.epoch)
                    );
                    w.overlaps.push(msg);
                }
                key
            }),
        };
        let result = if !up {
            // A frozen site: rbd gives up at its mount/op timeouts (cli.rs).
            tokio::time::sleep(deadline).await;
            Err(cli_error(
                op,
                target,
                110,
                "rbd: couldn't connect to the cluster!\n",
            ))
        } else {
            tokio::time::sleep(latency).await;
            let now = Instant::now();
            let mut w = self.world();
            w.settle(now);
            let fault = w.faults.iter_mut().find(|f| {
                f.times > 0 && f.site.is_none_or(|s| s == site) && f.op.is_none_or(|o| o == op)
            });
            let fault = fault.map(|f| {
                f.times -= 1;
                (f.take_effect, f.error.clone())
            });
            let out = match &fault {
                Some((false, _)) => Ok(Value::Null),
                _ => f(&mut w, now),
            };
            w.settle(now);
            let out = match fault {
                Some((_, FaultError::Timeout)) => Err(RbdError {
                    kind: RbdErrorKind::Unavailable,
                    op,
                    target: target.to_string(),
                    exit: None,
                    detail: format!("no answer within {}s", deadline.as_secs()),
                }),
                Some((_, FaultError::Exit(code, stderr))) => {
                    Err(cli_error(op, target, code, &stderr))
                }
                None => out.map_err(|(code, stderr)| cli_error(op, target, code, &stderr)),
            };
            out.and_then(|v| {
                serde_json::from_value::<T>(v).map_err(|e| RbdError {
                    kind: RbdErrorKind::BadOutput,
                    op,
                    target: target.to_string(),
                    exit: Some(0),
                    detail: format!("unexpected JSON: {e}"),
                })
            })
        };
        self.world().calls.push(CallRecord {
            site,
            op,
            target: target.to_string(),
            start,
            end: Instant::now(),
            ok: result.is_ok(),
        });
        drop(_flight);
        self.point(Crash::After, Some(n)).await;
        result
    }
}

/// The error `RbdCli::run` makes of a failed `rbd`: same classifier, same reason line.
fn cli_error(op: Op, target: &str, code: i32, stderr: &str) -> RbdError {
    RbdError {
        kind: classify(op, code, stderr),
        op,
        target: target.to_string(),
        exit: Some(code),
        detail: reason_line(stderr),
    }
}

impl Ceph for SimSite {
    async fn info(&self, img: &ImageSpec) -> Result<ImageInfo, RbdError> {
        let key = img.to_string();
        self.sim
            .call(self.site, Op::Info, &key, |w, _| {
                w.info_json(&key, self.site)
            })
            .await
    }

    async fn mirror_status(&self, img: &ImageSpec) -> Result<MirrorImageStatus, RbdError> {
        let key = img.to_string();
        self.sim
            .call(self.site, Op::Status, &key, |w, _| {
                w.status_json(&key, self.site)
            })
            .await
    }

    async fn snapshots(&self, img: &ImageSpec) -> Result<Vec<SnapEntry>, RbdError> {
        let key = img.to_string();
        self.sim
            .call(self.site, Op::Snapshots, &key, |w, now| {
                w.snapshots_json(&key, self.site, now)
            })
            .await
    }

    async fn lockers(&self, img: &ImageSpec) -> Result<Vec<Locker>, RbdError> {
        let key = img.to_string();
        self.sim
            .call(self.site, Op::Lockers, &key, |w, _| {
                let (_, c) = w.mirrored(&key, self.site)?;
                Ok(Value::Array(
                    c.lockers
                        .iter()
                        .map(|l| json!({"id": "auto 140245", "locker": l, "address": "10.0.0.1:0/1"}))
                        .collect(),
                ))
            })
            .await
    }

    async fn journal_status(&self, img: &ImageSpec) -> Result<JournalStatus, RbdError> {
        let key = img.to_string();
        self.sim
            .call(self.site, Op::JournalStatus, &key, |w, _| {
                w.journal_json(&key, self.site)
            })
            .await
    }

    async fn mirror_images(
        &self,
        pool: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<String>, RbdError> {
        let target = match namespace {
            Some(ns) => format!("{pool}/{ns}"),
            None => pool.to_string(),
        };
        let names: Vec<String> = self
            .sim
            .call(self.site, Op::PoolStatus, &target, |w, _| {
                let mut names: Vec<&str> = w
                    .images
                    .values()
                    .filter(|i| {
                        let p = match namespace {
                            Some(ns) => format!("{pool}/{ns}"),
                            None => pool.to_string(),
                        };
                        i.pool == p && i.copies[self.site.i()].is_some()
                    })
                    .map(|i| i.name.as_str())
                    .collect();
                names.sort();
                Ok(json!(names))
            })
            .await?;
        Ok(names)
    }

    async fn demote(&self, img: &ImageSpec) -> Result<(), RbdError> {
        let key = img.to_string();
        self.sim
            .call::<Value>(self.site, Op::Demote, &key, |w, now| {
                w.demote(&key, self.site, now).map(|_| Value::Null)
            })
            .await
            .map(drop)
    }

    async fn promote(&self, img: &ImageSpec, force: bool) -> Result<(), RbdError> {
        let key = img.to_string();
        self.sim
            .call::<Value>(self.site, Op::Promote, &key, |w, now| {
                w.promote(&key, self.site, force, now).map(|_| Value::Null)
            })
            .await
            .map(drop)
    }

    async fn resync(&self, img: &ImageSpec) -> Result<(), RbdError> {
        let key = img.to_string();
        self.sim
            .call::<Value>(self.site, Op::Resync, &key, |w, _| {
                w.resync(&key, self.site).map(|_| Value::Null)
            })
            .await
            .map(drop)
    }
    /// `image-meta set` + `remove` on a journal-mode image: journaled
    /// operations, so the journal gets an entry (modelled as one more item
    /// in the log, replicated like any other); the image's data is unchanged.
    async fn journal_marker(&self, img: &ImageSpec) -> Result<(), RbdError> {
        let key = img.to_string();
        self.sim
            .call::<Value>(self.site, Op::JournalMarker, &key, |w, now| {
                let (im, c) = w.mirrored(&key, self.site)?;
                if promotion(&c.log, self.site, im.mode) != Promotion::Primary {
                    return Err((
                        30,
                        "rbd: failed to set metadata: (30) Read-only file system\n".into(),
                    ));
                }
                w.push(&key, self.site, Kind::Write, now);
                Ok(Value::Null)
            })
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "rbd/img";

    fn sim(mode: Mode) -> Sim {
        let s = Sim::new(SimConfig::default());
        s.add_image("rbd", "img", mode, Site::A);
        s
    }

    async fn wait(d: u64) {
        tokio::time::sleep(Duration::from_millis(d)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn promote_waits_for_the_demotion_then_succeeds() {
        for mode in [Mode::Journal, Mode::Snapshot] {
            let s = sim(mode);
            assert!(
                s.promote(Site::B, K, false)
                    .unwrap_err()
                    .contains("not propagated yet")
            );
            s.demote(Site::A, K).unwrap();
            assert!(s.promote(Site::B, K, false).is_err(), "{mode:?}: too early");
            wait(3500).await;
            s.promote(Site::B, K, false).unwrap();
            wait(8000).await;
            assert_eq!(s.promotion(Site::A, K), Some(Promotion::NonPrimary));
            assert!(!s.split_brain(K));
            assert_eq!(s.status_of(Site::A, K).unwrap().0, "up+replaying");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_orphan_promotes_without_force_even_when_stale() {
        // Snapshot mode, B's daemon down while A (primary again) writes and demotes.
        let s = sim(Mode::Snapshot);
        s.demote(Site::A, K).unwrap();
        wait(3500).await;
        s.promote(Site::B, K, false).unwrap();
        wait(3500).await;
        s.demote(Site::B, K).unwrap();
        wait(3500).await;
        s.promote(Site::A, K, false).unwrap();
        s.set_daemon(Site::B, false);
        s.write(Site::A, K).unwrap();
        s.demote(Site::A, K).unwrap();
        wait(10_000).await;
        // B's newest snapshot is its own demotion: Ceph lets it promote.
        s.promote(Site::B, K, false).unwrap();
        assert!(s.writes(Site::B, K).is_empty() && s.writes(Site::A, K).len() == 1);
        s.set_daemon(Site::B, true);
        wait(5000).await;
        assert!(s.split_brain(K));
        assert_eq!(
            s.status_of(Site::A, K).unwrap(),
            ("up+error".into(), "split-brain".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_journal_secondary_never_replays_a_peer_already_demoted_again() {
        // Lab P10 as the conformance test saw it on real Ceph: B is primary
        // for a moment only, before A's replayer starts.
        let s = sim(Mode::Journal);
        s.demote(Site::A, K).unwrap();
        wait(2500).await;
        s.promote(Site::B, K, false).unwrap();
        s.write(Site::B, K).unwrap();
        s.demote(Site::B, K).unwrap();
        wait(60_000).await;
        assert!(s.writes(Site::A, K).is_empty());
        assert_eq!(
            s.status_of(Site::A, K).unwrap(),
            ("up+unknown".into(), "remote image is not primary".into())
        );
        // So Ceph would promote A's stale copy at once.
        assert_eq!(s.promotion(Site::A, K), Some(Promotion::Orphan));
    }

    #[tokio::test(start_paused = true)]
    async fn resync_passes_through_absence_and_a_new_id() {
        let s = sim(Mode::Journal);
        s.promote(Site::B, K, true).unwrap();
        s.demote(Site::A, K).unwrap();
        wait(2500).await;
        assert_eq!(s.status_of(Site::A, K).unwrap().1, "split-brain detected");
        let old = s.image_id(Site::A, K).unwrap();
        s.resync(Site::A, K).unwrap();
        wait(5000).await;
        assert!(s.image_id(Site::A, K).is_none());
        wait(5000).await;
        assert_ne!(s.image_id(Site::A, K).unwrap(), old);
        wait(3000).await;
        assert_eq!(s.status_of(Site::A, K).unwrap().0, "up+replaying");
        assert!(!s.split_brain(K));
        assert_eq!((s.resyncs(Site::A, K), s.recreations(Site::A, K)), (1, 1));
    }
}

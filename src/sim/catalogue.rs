//! Failover scenarios as data: setup, steps, what each step must end with,
//! and the roles that must hold afterwards. Written so that a lab runner can
//! replay the same list against real Ceph (every `SetupOp` is one `rbd`
//! command or a daemon start/stop), while `harness` runs it on the model.
//!
//! Expectations are the design's promises (DESIGN.md "Semantics"), not what
//! today's executor happens to do: a scenario that fails shows a defect.

use super::model::{Mode, Site};
use crate::api::{Action, WaitFor};
use crate::step::Reason;

/// Pool of every scenario image.
pub const POOL: &str = "rbd";

/// Something done to the sites outside the step (by an operator, an
/// application or a failure).
#[derive(Clone, Debug)]
pub enum SetupOp {
    /// A client write (lab: `rbd bench --io-type write`).
    Write(Site, &'static str),
    /// `rbd mirror image snapshot` (a schedule firing).
    MirrorSnapshot(Site, &'static str),
    Demote(Site, &'static str),
    Promote(Site, &'static str, bool),
    Resync(Site, &'static str),
    /// A client holds (Some) or releases (None) the exclusive lock.
    Lock(Site, &'static str, Option<&'static str>),
    /// Let time pass (milliseconds).
    Wait(u64),
    DaemonUp(Site, bool),
    SiteUp(Site, bool),
}

/// One run of the custom task.
#[derive(Clone, Debug)]
pub struct StepSpec {
    pub action: Action,
    pub site: Site,
    pub images: Vec<&'static str>,
    pub force: bool,
    /// The peer's Secret is given (`peerCluster`).
    pub peer: bool,
    pub wait_for: Option<WaitFor>,
    /// Setup ops applied while the step runs, at these milliseconds after it starts.
    pub during: Vec<(u64, SetupOp)>,
    /// Acceptable ends.
    pub ends: Vec<End>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum End {
    Succeeded,
    Failed(Reason),
    /// Still waiting at the step's deadline: the controller's timeout ends it.
    Waits,
    /// Stopped because another controller owns the run (its claim won).
    Lost,
}

#[derive(Clone, Debug)]
pub enum Stage {
    Op(SetupOp),
    Step(StepSpec),
}

/// Roles that must hold at the end: (image, site, primary?).
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub primary: Vec<(&'static str, Site, bool)>,
    /// (image, site): the copy holds every write the other site's copy holds
    /// (nothing was lost by a stale promote or an unfinished resync).
    pub has_peer_writes: Vec<(&'static str, Site)>,
    /// (image, site, n): resyncs that must take effect there (I2); 0 where not listed.
    pub resyncs: Vec<(&'static str, Site, u32)>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub mode: Mode,
    /// Created primary on site A and replicated to B.
    pub images: Vec<&'static str>,
    pub script: Vec<Stage>,
    pub expect: Expect,
}

impl Expect {
    /// The resyncs that must take effect on `img` at `site` (0 where not listed).
    pub fn resyncs_of(&self, img: &str, site: Site) -> u32 {
        self.resyncs
            .iter()
            .find(|(i, s, _)| *i == img && *s == site)
            .map_or(0, |r| r.2)
    }
}

impl Scenario {
    /// Whether any step or setup op forces a promote (I3 allows split-brain then).
    pub fn forces(&self) -> bool {
        self.script.iter().any(|s| match s {
            Stage::Op(SetupOp::Promote(_, _, f)) => *f,
            Stage::Step(st) => st.force && st.action == Action::Promote,
            _ => false,
        })
    }

    pub fn steps(&self) -> impl Iterator<Item = &StepSpec> {
        self.script.iter().filter_map(|s| match s {
            Stage::Step(st) => Some(st),
            _ => None,
        })
    }
}

fn step(action: Action, site: Site, images: &[&'static str], ends: &[End]) -> StepSpec {
    StepSpec {
        action,
        site,
        images: images.to_vec(),
        force: false,
        peer: true,
        wait_for: None,
        during: vec![],
        ends: ends.to_vec(),
    }
}

impl StepSpec {
    fn force(mut self) -> Self {
        self.force = true;
        self
    }
    fn no_peer(mut self) -> Self {
        self.peer = false;
        self
    }
    fn wait_for(mut self, w: WaitFor) -> Self {
        self.wait_for = Some(w);
        self
    }
    fn during(mut self, at_ms: u64, op: SetupOp) -> Self {
        self.during.push((at_ms, op));
        self
    }
    fn stage(self) -> Stage {
        Stage::Step(self)
    }
}

use Action::{Demote, Promote, Resync, Status};
use End::{Failed, Succeeded, Waits};
use SetupOp as O;
use Site::{A, B};

const I: &str = "img";
const J: &str = "img2";

fn op(o: SetupOp) -> Stage {
    Stage::Op(o)
}

/// Failover there and back: A primary again, and B has not yet copied A's
/// new primary snapshot, so B's newest mirror snapshot is its *own* demotion
/// snapshot (used by C11, where B's daemon stops right now).
fn there_and_back() -> Vec<Stage> {
    vec![
        op(O::Demote(A, I)),
        op(O::Wait(4000)),
        op(O::Promote(B, I, false)),
        op(O::Wait(4000)),
        op(O::Demote(B, I)),
        op(O::Wait(4000)),
        op(O::Promote(A, I, false)),
    ]
}

/// Split-brain made by hand: B force-promoted while A is primary, then A
/// demoted (facts §1.8 failback step 2).
fn split_brain_on_a() -> Vec<Stage> {
    vec![
        op(O::Write(A, I)),
        op(O::Promote(B, I, true)),
        op(O::Write(B, I)),
        // Snapshot mode moves data only with a mirror snapshot (refused, and
        // so skipped, in journal mode).
        op(O::MirrorSnapshot(B, I)),
        op(O::Demote(A, I)),
        // More than the status lag (lab P9): the split-brain shows.
        op(O::Wait(5000)),
    ]
}

pub fn catalogue() -> Vec<Scenario> {
    let mut v = vec![];
    for (name, mode) in [
        ("planned-failover-snapshot", Mode::Snapshot),
        ("planned-failover-journal", Mode::Journal),
    ] {
        v.push(Scenario {
            name,
            about: "planned failover: demote A, promote B without force (facts §1.8)",
            mode,
            images: vec![I],
            script: vec![
                op(O::Write(A, I)),
                op(O::MirrorSnapshot(A, I)),
                op(O::Wait(5000)),
                step(Demote, A, &[I], &[Succeeded]).stage(),
                step(Promote, B, &[I], &[Succeeded]).stage(),
            ],
            expect: Expect {
                primary: vec![(I, A, false), (I, B, true)],
                has_peer_writes: vec![(I, B)],
                ..Default::default()
            },
        });
    }
    v.push(Scenario {
        name: "promote-waits-for-demotion",
        about: "the promote starts before A demotes; it retries EBUSY until the demotion arrives (facts §4.2)",
        mode: Mode::Snapshot,
        images: vec![I],
        script: vec![
            op(O::Write(A, I)),
            step(Promote, B, &[I], &[Succeeded])
                .no_peer()
                .during(3000, O::Demote(A, I))
                .stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, false), (I, B, true)],
            has_peer_writes: vec![(I, B)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "journal-promote-without-peer",
        about: "journal mode cannot prove the demotion arrived without the peer's Secret: PeerRequired",
        mode: Mode::Journal,
        images: vec![I],
        script: vec![
            op(O::Demote(A, I)),
            op(O::Wait(4000)),
            step(Promote, B, &[I], &[Failed(Reason::PeerRequired)])
                .no_peer()
                .stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, false), (I, B, false)],
            ..Default::default()
        },
    });
    // Lab P10, replayed on real Ceph (tests/conformance.rs): when B is
    // promoted and demoted again before A's rbd-mirror starts a replayer for
    // the image (A demoted < 5 s earlier), A never replays B's history: it
    // stays `up+unknown` "remote image is not primary" with its own demotion
    // as its newest tag, which Ceph would promote at once (stale). The
    // guarded promote can therefore never prove B's history arrived: it must
    // wait (or refuse), never succeed.
    v.push(Scenario {
        name: "p10-chained-failover-journal",
        about: "lab P10: failback started right after a failover; A still ends with its own demotion tag \
                and never replays B's short primary period, so Ceph would promote it at once (stale); \
                the guarded promote must not",
        mode: Mode::Journal,
        images: vec![I],
        script: vec![
            op(O::Demote(A, I)),
            op(O::Wait(2500)),
            op(O::Promote(B, I, false)),
            op(O::Write(B, I)),
            op(O::Demote(B, I)),
            step(Promote, A, &[I], &[Waits, Failed(Reason::PromoteRefused)]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, false), (I, B, false)],
            has_peer_writes: vec![(I, B)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "p10-chained-failover-journal-unwritten",
        about: "as P10 but the image is never written: the guard compares journal positions that hold only \
                promote/demote events, and must not call them caught up",
        mode: Mode::Journal,
        images: vec![I],
        script: vec![
            op(O::Demote(A, I)),
            op(O::Wait(2500)),
            op(O::Promote(B, I, false)),
            op(O::Demote(B, I)),
            step(Promote, A, &[I], &[Waits, Failed(Reason::PromoteRefused)]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, false), (I, B, false)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "chained-failover-journal-settled",
        about: "failback after B was primary long enough for A's replayer to follow it: A replays B's write \
                and demotion, and the guarded promote succeeds with B's data",
        mode: Mode::Journal,
        images: vec![I],
        script: vec![
            op(O::Demote(A, I)),
            op(O::Wait(2500)),
            op(O::Promote(B, I, false)),
            op(O::Write(B, I)),
            op(O::Wait(15_000)),
            op(O::Demote(B, I)),
            step(Promote, A, &[I], &[Succeeded]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, true), (I, B, false)],
            has_peer_writes: vec![(I, A)],
            ..Default::default()
        },
    });
    for (name, peer) in [
        ("c11-stale-snapshot-promote", true),
        ("c11-stale-snapshot-promote-no-peer", false),
    ] {
        let mut script = there_and_back();
        script.extend([
            op(O::DaemonUp(B, false)),
            op(O::Write(A, I)),
            op(O::MirrorSnapshot(A, I)),
            op(O::Demote(A, I)),
            op(O::Wait(10_000)),
        ]);
        let mut s = step(
            Promote,
            B,
            &[I],
            &[
                Waits,
                Failed(Reason::PeerUnavailable),
                Failed(Reason::PromoteRefused),
            ],
        );
        s.peer = peer;
        script.push(s.stage());
        v.push(Scenario {
            name,
            about: "faults.md C11: B's rbd-mirror is down while A writes and demotes; B's newest snapshot is its \
                    own old demotion, so Ceph would promote stale data: the step must refuse or wait",
            mode: Mode::Snapshot,
            images: vec![I],
            script,
            expect: Expect {
                primary: vec![(I, B, false)],
                ..Default::default()
            },
        });
    }
    v.push(Scenario {
        name: "c3a-daemon-back",
        about: "faults.md C3a: B's rbd-mirror stopped after A's demote, back after 20 s: promote waits, then succeeds",
        mode: Mode::Snapshot,
        images: vec![I],
        script: vec![
            op(O::Write(A, I)),
            op(O::DaemonUp(B, false)),
            op(O::Demote(A, I)),
            step(Promote, B, &[I], &[Succeeded])
                .during(20_000, O::DaemonUp(B, true))
                .stage(),
        ],
        expect: Expect {
            primary: vec![(I, B, true)],
            has_peer_writes: vec![(I, B)],
            ..Default::default()
        },
    });
    for (name, mode, peer) in [
        ("dead-peer-journal", Mode::Journal, true),
        ("dead-peer-snapshot-no-peer", Mode::Snapshot, false),
    ] {
        let mut s = step(Promote, B, &[I], &[Failed(Reason::PeerUnavailable)]);
        s.peer = peer;
        v.push(Scenario {
            name,
            about: "faults.md C1: site A is gone; an unforced promote fails fast with PeerUnavailable",
            mode,
            images: vec![I],
            script: vec![op(O::SiteUp(A, false)), s.stage()],
            expect: Expect {
                primary: vec![(I, B, false)],
                ..Default::default()
            },
        });
    }
    // The snapshot variant follows the runbook (rbd-facts §1.8 step 2,
    // tekton/unplanned-failover.yaml): B's own rbd-mirror is stopped for the
    // forced promote. On the lab, a forced snapshot promote issued while
    // B's rbd-mirror still replays from the frozen A did not return within
    // 300 s (RamenDR/ramen#788); the journal variant keeps the daemon up,
    // which returns at once.
    for (name, mode, stop_daemon) in [
        ("forced-failover-and-failback-journal", Mode::Journal, false),
        (
            "forced-failover-and-failback-snapshot",
            Mode::Snapshot,
            true,
        ),
    ] {
        let forced = step(Promote, B, &[I], &[Succeeded]).force().stage();
        let promote = if stop_daemon {
            vec![op(O::DaemonUp(B, false)), forced, op(O::DaemonUp(B, true))]
        } else {
            vec![forced]
        };
        v.push(Scenario {
            name,
            about: "faults.md C2 / facts §1.8: A lost, force promote B; A returns primary (both primary); \
                    demote A shows split-brain; resync A replays from B",
            mode,
            images: vec![I],
            script: [
                vec![op(O::Write(A, I)), op(O::SiteUp(A, false))],
                promote,
                vec![
                op(O::Write(B, I)),
                op(O::Write(B, I)),
                op(O::MirrorSnapshot(B, I)),
                op(O::SiteUp(A, true)),
                step(Status, A, &[I], &[Failed(Reason::SplitBrain)]).stage(),
                step(Demote, A, &[I], &[Succeeded]).stage(),
                op(O::Wait(5000)),
                step(Status, A, &[I], &[Failed(Reason::SplitBrain)]).stage(),
                step(Resync, A, &[I], &[Succeeded]).stage(),
                step(Status, A, &[I], &[Succeeded])
                    .wait_for(WaitFor::Replaying)
                    .stage(),
                ],
            ]
            .concat(),
            expect: Expect {
                primary: vec![(I, A, false), (I, B, true)],
                has_peer_writes: vec![(I, A)],
                resyncs: vec![(I, A, 1)],
            },
        });
    }
    for (name, mode) in [
        ("resync-stages-journal", Mode::Journal),
        ("resync-stages-snapshot", Mode::Snapshot),
    ] {
        let mut script = split_brain_on_a();
        script.push(step(Resync, A, &[I], &[Succeeded]).stage());
        v.push(Scenario {
            name,
            about: "lab P14: resync flags, the image disappears, comes back with a new id, then replays",
            mode,
            images: vec![I],
            script,
            expect: Expect {
                primary: vec![(I, A, false), (I, B, true)],
                has_peer_writes: vec![(I, A)],
                resyncs: vec![(I, A, 1)],
            },
        });
    }
    v.push(Scenario {
        name: "resync-on-primary",
        about: "resync of the primary is refused (facts §1.4) and nothing is copied",
        mode: Mode::Journal,
        images: vec![I],
        script: vec![step(Resync, A, &[I], &[Failed(Reason::ResyncOnPrimary)]).stage()],
        expect: Expect {
            primary: vec![(I, A, true), (I, B, false)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "demote-in-use",
        about: "a client holds the exclusive lock: demote is refused with ImageInUse (facts §4.1)",
        mode: Mode::Snapshot,
        images: vec![I],
        script: vec![
            op(O::Lock(A, I, Some("client.4567"))),
            step(Demote, A, &[I], &[Failed(Reason::ImageInUse)]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, true)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "idempotent-already-primary-and-non-primary",
        about: "promote of a primary and demote of a non-primary succeed without a mutation (DESIGN: idempotent)",
        mode: Mode::Journal,
        images: vec![I],
        script: vec![
            step(Promote, A, &[I], &[Succeeded]).stage(),
            step(Demote, B, &[I], &[Succeeded]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, true), (I, B, false)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "status-of-each-state",
        about: "status reports primary, replaying, demoted and both-primary (split-brain) states",
        mode: Mode::Snapshot,
        images: vec![I],
        script: vec![
            step(Status, A, &[I], &[Succeeded])
                .wait_for(WaitFor::Primary)
                .stage(),
            step(Status, B, &[I], &[Succeeded])
                .wait_for(WaitFor::Replaying)
                .stage(),
            op(O::Demote(A, I)),
            step(Status, A, &[I], &[Succeeded])
                .wait_for(WaitFor::NonPrimary)
                .stage(),
            // Until B has copied the demotion snapshot, Ceph refuses even a
            // forced promote (EROFS, seen on the lab 0.1 s after the demote).
            op(O::Wait(5000)),
            op(O::Promote(B, I, true)),
            op(O::Promote(A, I, true)),
            step(Status, B, &[I], &[Failed(Reason::SplitBrain)]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, true), (I, B, true)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "both-primary-planned-promote",
        about: "faults.md C10: both sites primary; a planned promote reports SplitBrain and changes nothing",
        mode: Mode::Journal,
        images: vec![I],
        script: vec![
            op(O::Promote(B, I, true)),
            step(Promote, A, &[I], &[Failed(Reason::SplitBrain)]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, true), (I, B, true)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "two-images-promote-one-missing",
        about: "DESIGN: promote attempts every image: img2 is missing on B, img must still be promoted",
        mode: Mode::Snapshot,
        images: vec![I],
        script: vec![
            op(O::Demote(A, I)),
            op(O::Wait(4000)),
            step(Promote, B, &[I, J], &[Failed(Reason::ImageNotFound)]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, B, true)],
            ..Default::default()
        },
    });
    v.push(Scenario {
        name: "two-images-resync-one-primary",
        about: "DESIGN: resync attempts every image: img2 is primary on A (refused), img must still be resynced",
        mode: Mode::Journal,
        images: vec![I, J],
        script: {
            let mut s = split_brain_on_a();
            s.push(step(Resync, A, &[J, I], &[Failed(Reason::ResyncOnPrimary)]).stage());
            s
        },
        expect: Expect {
            primary: vec![(I, A, false), (J, A, true)],
            has_peer_writes: vec![(I, A)],
            resyncs: vec![(I, A, 1)],
        },
    });
    v.push(Scenario {
        name: "two-images-demote-one-in-use",
        about: "DESIGN: a demote checks every image before the first mutation: img2 in use, img stays primary",
        mode: Mode::Snapshot,
        images: vec![I, J],
        script: vec![
            op(O::Lock(A, J, Some("client.4567"))),
            step(Demote, A, &[I, J], &[Failed(Reason::ImageInUse)]).stage(),
        ],
        expect: Expect {
            primary: vec![(I, A, true), (J, A, true)],
            ..Default::default()
        },
    });
    v
}

/// Scenarios whose step hits a call that fails after taking effect
/// (`rbd` timed out, the command went through): DESIGN says "a mutation's
/// error does not prove it did not happen: the image is read again".
pub fn failed_yet_effective() -> Vec<(Scenario, crate::ceph::Op)> {
    use crate::ceph::Op;
    let pick = |name: &str| {
        catalogue()
            .into_iter()
            .find(|s| s.name == name)
            .expect("scenario")
    };
    vec![
        (pick("planned-failover-snapshot"), Op::Demote),
        (pick("planned-failover-snapshot"), Op::Promote),
        (pick("resync-stages-journal"), Op::Resync),
        (pick("forced-failover-and-failback-journal"), Op::Promote),
    ]
}

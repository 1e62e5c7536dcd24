//! Fault tests of the executor against the model of RBD mirroring
//! (`rbd_mirror_step::sim`): no lab, virtual time, seconds in total.
//!
//! * `catalogue_*`: every scenario of the catalogue, once, checked against
//!   its expected ends and roles and the invariants I1–I4 (faults.md).
//! * `crash_*`: the same scenarios, killed before and after each await point
//!   (Ceph call or checkpoint save), then resumed by a fresh `execute` with
//!   only the durably saved progress.
//! * `failed_yet_effective_*`: a mutation that took effect but returned an error.
//! * `two_executors_*`: two uncoordinated controllers on the same images.
//! * `random_fault_schedules`: seeded crash + fault schedules; more with
//!   `MODEL_FAULT_SCHEDULES=10000 cargo test --test model_faults -- random`
//!   (`MODEL_FAULT_SEED=n` for another seed, `MODEL_FAULT_VERBOSE=1` to
//!   print every failing schedule).

use std::time::Duration;

use rbd_mirror_step::ceph::Op;
use rbd_mirror_step::sim::catalogue::{Scenario, failed_yet_effective};
use rbd_mirror_step::sim::harness::{Options, Report, run};
use rbd_mirror_step::sim::rng::XorShift;
use rbd_mirror_step::sim::{Crash, CrashPlan, Fault, FaultError, Site, catalogue};

fn scenario(name: &str) -> Scenario {
    catalogue()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

fn show(sc: &Scenario, r: &Report) -> String {
    format!(
        "scenario {} ({})\n  steps: {:?}\n  violations:\n    {}",
        sc.name,
        sc.about,
        r.steps
            .iter()
            .map(|s| format!(
                "{} on {} → {:?} {:?}",
                s.action.as_str(),
                s.site.name(),
                s.ends,
                s.outcomes
            ))
            .collect::<Vec<_>>(),
        r.violations.join("\n    ")
    )
}

#[test]
fn the_catalogue_has_at_least_14_distinct_scenarios() {
    let c = catalogue();
    assert!(c.len() >= 14, "{} scenarios", c.len());
    let mut names: Vec<_> = c.iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), c.len(), "scenario names are unique");
}

async fn check_scenario(name: &str) {
    let sc = scenario(name);
    let r = run(&sc, &Options::default()).await;
    assert!(r.violations.is_empty(), "{}", show(&sc, &r));
}

/// Every await point of a clean run, killed before and after, then resumed.
/// Long polling runs repeat the same loop: past the first 100 points every
/// 10th is explored, and a step still waiting after 40 s counts as waiting.
async fn check_crashes(name: &str) {
    let sc = scenario(name);
    let base = Options {
        deadline: Duration::from_secs(40),
        ..Default::default()
    };
    let clean = run(&sc, &base).await;
    let points: Vec<u32> = (0..clean.points)
        .filter(|n| *n < 100 || n % 10 == 0)
        .collect();
    let mut failures = vec![];
    for &at in &points {
        for when in [Crash::Before, Crash::After] {
            let opts = Options {
                crash: Some(CrashPlan { at, when }),
                ..base.clone()
            };
            let r = run(&sc, &opts).await;
            if !r.violations.is_empty() {
                failures.push(format!("killed {when:?} point {at}: {}", show(&sc, &r)));
            }
        }
    }
    eprintln!(
        "{name}: {} await points, {} crash runs",
        clean.points,
        points.len() * 2
    );
    assert!(
        failures.is_empty(),
        "{} of {} crash runs broke an invariant; first:\n{}",
        failures.len(),
        points.len() * 2,
        failures[..failures.len().min(3)].join("\n")
    );
}

macro_rules! scenarios {
    ($($id:ident => $name:literal,)*) => {
        mod catalogue_runs {
            $(#[tokio::test(start_paused = true)]
            async fn $id() {
                super::check_scenario($name).await;
            })*
        }
        mod crash {
            $(#[tokio::test(start_paused = true)]
            async fn $id() {
                super::check_crashes($name).await;
            })*
        }
        #[test]
        fn every_catalogue_scenario_has_a_test() {
            let listed = [$($name),*];
            for s in catalogue() {
                assert!(listed.contains(&s.name), "{} has no test", s.name);
            }
        }
    };
}

scenarios! {
    planned_failover_snapshot => "planned-failover-snapshot",
    planned_failover_journal => "planned-failover-journal",
    promote_waits_for_demotion => "promote-waits-for-demotion",
    journal_promote_without_peer => "journal-promote-without-peer",
    p10_chained_failover_journal => "p10-chained-failover-journal",
    p10_chained_failover_journal_unwritten => "p10-chained-failover-journal-unwritten",
    chained_failover_journal_settled => "chained-failover-journal-settled",
    c11_stale_snapshot_promote => "c11-stale-snapshot-promote",
    c11_stale_snapshot_promote_no_peer => "c11-stale-snapshot-promote-no-peer",
    c3a_daemon_back => "c3a-daemon-back",
    dead_peer_journal => "dead-peer-journal",
    dead_peer_snapshot_no_peer => "dead-peer-snapshot-no-peer",
    forced_failover_and_failback_journal => "forced-failover-and-failback-journal",
    forced_failover_and_failback_snapshot => "forced-failover-and-failback-snapshot",
    resync_stages_journal => "resync-stages-journal",
    resync_stages_snapshot => "resync-stages-snapshot",
    resync_on_primary => "resync-on-primary",
    demote_in_use => "demote-in-use",
    idempotent_already_primary_and_non_primary => "idempotent-already-primary-and-non-primary",
    status_of_each_state => "status-of-each-state",
    both_primary_planned_promote => "both-primary-planned-promote",
    two_images_promote_one_missing => "two-images-promote-one-missing",
    two_images_resync_one_primary => "two-images-resync-one-primary",
    two_images_demote_one_in_use => "two-images-demote-one-in-use",
}

/// A mutation whose `rbd` timed out after it went through (faults.md C6/C7):
/// DESIGN says the image is read again before deciding, so the step still
/// reaches its promised state in the same run.
async fn check_failed_yet_effective(name: &str, op: Op) {
    let sc = scenario(name);
    let opts = Options {
        faults: vec![Fault {
            site: None,
            op: Some(op),
            take_effect: true,
            error: FaultError::Timeout,
            times: 1,
        }],
        ..Default::default()
    };
    let r = run(&sc, &opts).await;
    assert!(
        r.violations.is_empty(),
        "{} timed out after taking effect: {}",
        op.as_str(),
        show(&sc, &r)
    );
}

#[tokio::test(start_paused = true)]
async fn failed_yet_effective_demote() {
    check_failed_yet_effective("planned-failover-snapshot", Op::Demote).await;
}

#[tokio::test(start_paused = true)]
async fn failed_yet_effective_promote() {
    check_failed_yet_effective("planned-failover-snapshot", Op::Promote).await;
}

#[tokio::test(start_paused = true)]
async fn failed_yet_effective_forced_promote() {
    check_failed_yet_effective("forced-failover-and-failback-journal", Op::Promote).await;
}

#[tokio::test(start_paused = true)]
async fn failed_yet_effective_resync() {
    check_failed_yet_effective("resync-stages-journal", Op::Resync).await;
}

#[test]
fn failed_yet_effective_list_matches_the_tests() {
    assert_eq!(failed_yet_effective().len(), 4);
}

/// Two controllers run the same step at once (no claim between them), the
/// second `delay_ms` later.
async fn check_twins(name: &str, delay_ms: u64) {
    let sc = scenario(name);
    let opts = Options {
        twin: true,
        twin_delay: Duration::from_millis(delay_ms),
        ..Default::default()
    };
    let r = run(&sc, &opts).await;
    assert!(
        r.violations.is_empty(),
        "two executors at once: {}",
        show(&sc, &r)
    );
}

#[tokio::test(start_paused = true)]
async fn two_executors_planned_failover() {
    check_twins("planned-failover-journal", 0).await;
}

#[tokio::test(start_paused = true)]
async fn two_executors_resync() {
    check_twins("resync-stages-journal", 0).await;
}

/// The second controller comes after the first one's copy was re-created
/// (9.9 s, lab §6.1): it sees a non-primary image and resyncs it again.
#[tokio::test(start_paused = true)]
async fn two_executors_resync_staggered() {
    check_twins("resync-stages-journal", 11_000).await;
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seeded schedules: a scenario, a kill at a random await point, and maybe
/// one call that fails (before or after taking effect), with the
/// controller's retries (3). Every schedule must keep I1–I4.
#[tokio::test(start_paused = true)]
async fn random_fault_schedules() {
    let n = env_u64("MODEL_FAULT_SCHEDULES", 40);
    let seed = env_u64("MODEL_FAULT_SEED", 0x5eed_2026);
    let mut rng = XorShift::new(seed);
    let all = catalogue();
    let mut points = std::collections::HashMap::new();
    let mut failures = vec![];
    let mutating = [Op::Demote, Op::Promote, Op::Resync];
    let reads = [Op::Info, Op::Status, Op::Snapshots, Op::JournalStatus];
    for i in 0..n {
        let sc = &all[rng.below(all.len() as u64) as usize];
        if !points.contains_key(sc.name) {
            let clean = run(sc, &Options::default()).await;
            points.insert(sc.name, clean.points);
        }
        let p = points[sc.name] as u64;
        let crash = rng.chance(80).then(|| CrashPlan {
            at: rng.below(p + 2) as u32,
            when: if rng.chance(50) {
                Crash::Before
            } else {
                Crash::After
            },
        });
        let faults = if rng.chance(50) {
            let op = if rng.chance(70) {
                mutating[rng.below(3) as usize]
            } else {
                reads[rng.below(4) as usize]
            };
            vec![Fault {
                site: Some(if rng.chance(50) { Site::A } else { Site::B }),
                op: Some(op),
                take_effect: op.mutates() && rng.chance(50),
                error: FaultError::Timeout,
                times: 1,
            }]
        } else {
            vec![]
        };
        let opts = Options {
            crash,
            faults: faults.clone(),
            retries: 3,
            deadline: Duration::from_secs(120),
            ..Default::default()
        };
        let r = run(sc, &opts).await;
        if !r.violations.is_empty() {
            failures.push(format!(
                "schedule {i} (seed {seed}): crash {crash:?}, faults {faults:?}\n{}",
                show(sc, &r)
            ));
        }
    }
    let mut by_scenario = std::collections::BTreeMap::<&str, usize>::new();
    let verbose = std::env::var_os("MODEL_FAULT_VERBOSE").is_some();
    for f in &failures {
        if verbose {
            eprintln!("{f}\n");
        }
        let name = f
            .split("scenario ")
            .nth(1)
            .and_then(|s| s.split(' ').next());
        *by_scenario.entry(name.unwrap_or("?")).or_default() += 1;
    }
    eprintln!(
        "{n} random schedules, {} broke an invariant: {by_scenario:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} schedules broke an invariant ({by_scenario:?}); first:\n{}",
        failures.len(),
        failures[..failures.len().min(3)].join("\n\n")
    );
}

/// `dryRun` on every step of every scenario: the model sees reads only, no
/// demote, promote, resync or journal no-op, whatever the sites' state.
#[tokio::test(start_paused = true)]
async fn dry_runs_never_mutate_in_any_scenario() {
    let opts = Options {
        dry_run: true,
        deadline: Duration::from_secs(40),
        ..Default::default()
    };
    let mutating = [Op::Demote, Op::Promote, Op::Resync, Op::JournalMarker];
    for sc in catalogue() {
        let r = run(&sc, &opts).await;
        let mutations: Vec<String> = r
            .sim
            .calls()
            .into_iter()
            .filter(|c| mutating.contains(&c.op))
            .map(|c| format!("{:?} {} on {}", c.op, c.target, c.site.name()))
            .collect();
        assert!(
            mutations.is_empty(),
            "{}: a dry run mutated: {mutations:?}",
            sc.name
        );
        // Every step ended with what it would do, or with the refusal the
        // real step would meet.
        for s in &r.steps {
            for (img, o) in &s.outcomes {
                assert!(
                    o.starts_with("would-") || o.starts_with("already-") || o == "checked",
                    "{}: {img} {o}",
                    sc.name
                );
            }
        }
    }
}

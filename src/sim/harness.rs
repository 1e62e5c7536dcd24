//! Runs catalogue scenarios on the model: the real `execute`, a checkpoint
//! that keeps only durable saves (what a SIGKILL leaves in the run's
//! status), crashes at any await point followed by a fresh `execute`,
//! injected faults, controller-style retries, and a second executor on the
//! same images. Checks the invariants of faults.md after every run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::catalogue::{End, POOL, Scenario, SetupOp, Stage, StepSpec};
use super::model::{Crash, CrashPlan, Fault, Sim, SimConfig, Site};
use crate::api::Action;
use crate::step::resolve::ImageSpecRepr;
use crate::step::{Checkpoint, Pace, Progress, ResolvedStep, Selection, Sites, StepEnd, execute};

/// Keeps the last durable save: all a restarted controller would find.
/// Every save is an await point of the crash plan, before and after it.
pub struct Recorder {
    sim: Sim,
    pub persisted: Mutex<Progress>,
    /// The executor's live progress: what a claim persists.
    progress: Arc<Mutex<Progress>>,
    /// The run's owner as its status records it, shared by every
    /// controller of the run, and this controller's id: the claim protocol
    /// of `controller::task` (the first claim wins; a status write carrying
    /// an older resourceVersion finds the other owner and is refused).
    owner: Option<(Arc<Mutex<Option<u32>>>, u32)>,
}

impl Checkpoint for Recorder {
    async fn save(&self, progress: &Progress, durable: bool) -> Result<(), String> {
        let n = self.sim.point(Crash::Before, None).await;
        if durable {
            *self.persisted.lock().expect("persisted") = progress.clone();
        }
        self.sim.point(Crash::After, Some(n)).await;
        Ok(())
    }

    async fn claim(&self, _image: &str, _action: &str) -> Result<(), String> {
        let n = self.sim.point(Crash::Before, None).await;
        if let Some((cell, me)) = &self.owner {
            let mut owner = cell.lock().expect("owner");
            match *owner {
                Some(o) if o != *me => return Err(format!("controller {o}")),
                _ => *owner = Some(*me),
            }
        }
        let p = self.progress.lock().expect("progress").clone();
        *self.persisted.lock().expect("persisted") = p;
        self.sim.point(Crash::After, Some(n)).await;
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub config: SimConfig,
    /// Kill the executor at this await point (counted over the whole script).
    pub crash: Option<CrashPlan>,
    pub faults: Vec<Fault>,
    /// Retries after a retryable failure, with the progress the run kept
    /// (the controller's `retries`); 0 for the catalogue's own checks.
    pub retries: u32,
    /// A step still running after this is reported as `Waits`.
    pub deadline: Duration,
    /// Run every step twice at once (two controllers, no coordination).
    pub twin: bool,
    /// The second controller starts this much later.
    pub twin_delay: Duration,
    /// Every step with `dryRun`.
    pub dry_run: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: SimConfig::default(),
            crash: None,
            faults: vec![],
            retries: 0,
            deadline: Duration::from_secs(120),
            twin: false,
            twin_delay: Duration::ZERO,
            dry_run: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StepReport {
    pub action: Action,
    pub site: Site,
    pub ends: Vec<End>,
    pub kills: u32,
    pub attempts: u32,
    pub outcomes: BTreeMap<String, String>,
}

pub struct Report {
    pub sim: Sim,
    pub steps: Vec<StepReport>,
    pub violations: Vec<String>,
    /// Await points passed (of the last process after a kill).
    pub points: u32,
    pub killed: bool,
}

fn end_of(e: &StepEnd) -> End {
    match e {
        StepEnd::Succeeded => End::Succeeded,
        StepEnd::Failed(f) => End::Failed(f.reason),
        // Nothing cancels these runs: a stop is a violation, shown as a wait.
        StepEnd::Stopped => End::Waits,
        StepEnd::Lost(_) => End::Lost,
    }
}

fn key(img: &str) -> String {
    format!("{POOL}/{img}")
}

pub async fn apply(sim: &Sim, op: &SetupOp) {
    // Setup ops that Ceph refuses are part of some scenarios' story (e.g. a
    // demote of an already demoted image): their errors are ignored.
    let _ = match op {
        SetupOp::Write(s, i) => sim.write(*s, &key(i)),
        SetupOp::MirrorSnapshot(s, i) => sim.mirror_snapshot(*s, &key(i)),
        SetupOp::Demote(s, i) => sim.demote(*s, &key(i)),
        SetupOp::Promote(s, i, f) => sim.promote(*s, &key(i), *f),
        SetupOp::Resync(s, i) => sim.resync(*s, &key(i)),
        SetupOp::Lock(s, i, h) => {
            sim.set_locker(*s, &key(i), *h);
            Ok(())
        }
        SetupOp::Wait(ms) => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            Ok(())
        }
        SetupOp::DaemonUp(s, up) => {
            sim.set_daemon(*s, *up);
            Ok(())
        }
        SetupOp::SiteUp(s, up) => {
            sim.set_site(*s, *up);
            Ok(())
        }
    };
}

fn resolved(st: &StepSpec, dry_run: bool) -> ResolvedStep {
    ResolvedStep {
        action: st.action,
        cluster: st.site.name().into(),
        peer_cluster: st.peer.then(|| st.site.other().name().into()),
        pool: POOL.into(),
        rados_namespace: None,
        selection: Selection::Images(
            st.images
                .iter()
                .map(|i| ImageSpecRepr(i.to_string()))
                .collect(),
        ),
        force: st.force,
        dry_run,
        wait_for: st.wait_for,
        concurrency: 8,
        pvcs: None,
    }
}

struct Attempted {
    end: End,
    kills: u32,
    attempts: u32,
    outcomes: BTreeMap<String, String>,
}

/// One controller running one step to its end: resumed from the persisted
/// progress after a kill (restart 2 s later, faults.md A), retried with the
/// run's progress after a retryable failure.
async fn run_step(
    sim: &Sim,
    st: &StepSpec,
    opts: &Options,
    resumes: bool,
    owner: Option<(Arc<Mutex<Option<u32>>>, u32)>,
) -> Attempted {
    let step = resolved(st, opts.dry_run);
    let sites = Sites {
        local: sim.site(st.site),
        local_name: st.site.name().into(),
        peer: st.peer.then(|| sim.site(st.site.other())),
        peer_name: st.peer.then(|| st.site.other().name().into()),
    };
    let pace = Pace::default();
    let mut progress = Progress::default();
    let (mut kills, mut attempts) = (0, 0);
    loop {
        let shared = Arc::new(Mutex::new(progress.clone()));
        let rec = Recorder {
            sim: sim.clone(),
            persisted: Mutex::new(progress.clone()),
            progress: shared.clone(),
            owner: owner.clone(),
        };
        let killed = sim.killed();
        let run = execute(&step, &sites, shared, CancellationToken::new(), &rec, pace);
        let res = tokio::select! {
            biased;
            _ = killed.cancelled() => None,
            r = tokio::time::timeout(opts.deadline, run) => Some(r),
        };
        match res {
            None if resumes => {
                // SIGKILL: only what was durably saved survives.
                kills += 1;
                progress = rec.persisted.lock().expect("persisted").clone();
                sim.revive();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            None => {
                return Attempted {
                    end: End::Waits,
                    kills: kills + 1,
                    attempts,
                    outcomes: BTreeMap::new(),
                };
            }
            Some(Err(_)) => {
                return Attempted {
                    end: End::Waits,
                    kills,
                    attempts,
                    outcomes: BTreeMap::new(),
                };
            }
            Some(Ok(exec)) => {
                let outcomes = exec
                    .progress
                    .done
                    .iter()
                    .map(|(k, v)| (k.clone(), v.outcome.clone()))
                    .collect();
                match &exec.end {
                    StepEnd::Failed(f) if f.reason.retryable() && attempts < opts.retries => {
                        attempts += 1;
                        progress = exec.progress.clone();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    e => {
                        return Attempted {
                            end: end_of(e),
                            kills,
                            attempts,
                            outcomes,
                        };
                    }
                }
            }
        }
    }
}

/// Runs a scenario and checks its expectations and invariants I1–I4.
pub async fn run(sc: &Scenario, opts: &Options) -> Report {
    let sim = Sim::new(opts.config.clone());
    for img in &sc.images {
        sim.add_image(POOL, img, sc.mode, Site::A);
    }
    sim.set_crash(opts.crash);
    for f in &opts.faults {
        sim.add_fault(f.clone());
    }
    let all: Vec<&str> = sc
        .images
        .iter()
        .copied()
        .chain(sc.steps().flat_map(|s| s.images.iter().copied()))
        .collect();
    let mut violations = vec![];
    let mut steps = vec![];
    let mut killed = false;
    for (n, stage) in sc.script.iter().enumerate() {
        let st = match stage {
            Stage::Op(op) => {
                apply(&sim, op).await;
                continue;
            }
            Stage::Step(st) => st,
        };
        let split_before: Vec<bool> = all.iter().map(|i| sim.split_brain(&key(i))).collect();
        let during = {
            let sim = sim.clone();
            let ops = st.during.clone();
            tokio::spawn(async move {
                let mut at = 0;
                for (ms, op) in ops {
                    tokio::time::sleep(Duration::from_millis(ms.saturating_sub(at))).await;
                    at = ms;
                    apply(&sim, &op).await;
                }
            })
        };
        let runs: Vec<Attempted> = if opts.twin {
            let cell = Arc::new(Mutex::new(None));
            let second = async {
                tokio::time::sleep(opts.twin_delay).await;
                run_step(&sim, st, opts, true, Some((cell.clone(), 2))).await
            };
            let (a, b) = tokio::join!(
                run_step(&sim, st, opts, true, Some((cell.clone(), 1))),
                second
            );
            // The first claim wins; the other controller stops at its own.
            vec![a, b]
        } else {
            vec![run_step(&sim, st, opts, true, None).await]
        };

        let _ = during.await;
        for r in &runs {
            killed |= r.kills > 0;
            // I1: the run ends, and with what the design promises.
            let lost_to_twin = opts.twin && r.end == End::Lost;
            if !(st.ends.contains(&r.end) || lost_to_twin) {
                violations.push(format!(
                    "I1 stage {n} ({} on {}): ended {:?}, expected one of {:?} (kills {}, retries {}, outcomes {:?})",
                    st.action.as_str(),
                    st.site.name(),
                    r.end,
                    st.ends,
                    r.kills,
                    r.attempts,
                    r.outcomes
                ));
            }
        }
        // I3: no split-brain made by a step without force.
        let forced = st.force && st.action == Action::Promote;
        for (i, img) in all.iter().enumerate() {
            if !forced && !split_before[i] && sim.split_brain(&key(img)) {
                violations.push(format!(
                    "I3 stage {n} ({} on {}): {img} is in split-brain (or promoted stale data) without force",
                    st.action.as_str(),
                    st.site.name()
                ));
            }
        }
        steps.push(StepReport {
            action: st.action,
            site: st.site,
            ends: runs.iter().map(|r| r.end.clone()).collect(),
            kills: runs.iter().map(|r| r.kills).sum(),
            attempts: runs.iter().map(|r| r.attempts).sum(),
            outcomes: runs[0].outcomes.clone(),
        });
    }
    sim.settle();
    for (img, site, primary) in &sc.expect.primary {
        let got = sim.primary(*site, &key(img));
        if got != Some(*primary) {
            violations.push(format!(
                "final: {img} on {} primary={got:?}, expected {primary}",
                site.name()
            ));
        }
    }
    for (img, site) in &sc.expect.has_peer_writes {
        let own = sim.writes(*site, &key(img));
        let lost: Vec<u64> = sim
            .writes(site.other(), &key(img))
            .into_iter()
            .filter(|w| !own.contains(w))
            .collect();
        if !lost.is_empty() {
            violations.push(format!(
                "final: {img} on {} lacks writes {lost:?} held by {}",
                site.name(),
                site.other().name()
            ));
        }
    }
    // I2: exactly the resyncs asked for.
    for img in &sc.images {
        for site in Site::BOTH {
            let want = sc.expect.resyncs_of(img, site);
            let got = sim.resyncs(site, &key(img));
            if got != want {
                violations.push(format!(
                    "I2: {img} on {}: {got} resyncs took effect, expected {want}",
                    site.name()
                ));
            }
        }
    }
    // I4: one actor per image.
    for o in sim.overlaps() {
        violations.push(format!("I4: {o}"));
    }
    Report {
        points: sim.points(),
        sim,
        steps,
        violations,
        killed,
    }
}

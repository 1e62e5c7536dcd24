//! Conformance: the scenario catalogue of `src/sim/catalogue.rs` run on the
//! lab's two real Ceph sites and on the model of RBD mirroring, with the
//! same expectations on both. The model is only as good as its agreement
//! with Ceph: a scenario whose ends or final roles differ between the two
//! is a finding (the model or the controller is wrong), never a reason to
//! loosen the catalogue.
//!
//! On the lab every step runs through the same `step::execute` the
//! controller uses, with the real `rbd` CLI backend and the lab's
//! least-privilege client (no Kubernetes objects: this test is about Ceph,
//! not the Tekton contract). Setup ops are single `rbd` commands run as the
//! site's admin (argument vectors, no shell) or the lab's own daemon
//! commands (`tests/lab/lab stop|start|freeze|thaw`).
//!
//! * CI runs `CI_SCENARIOS` (about 4 minutes on the lab).
//! * `CONFORMANCE=all` runs the whole catalogue (the long set adds the
//!   destructive and slow scenarios); `CONFORMANCE=name,name` runs those.
//!
//! The lab is shared: every image name carries this run's id, and the images
//! are removed at the end. Destructive scenarios stop or freeze daemons, so
//! run this binary alone on the lab (`flock /tmp/lab-use.lock ...`).
//!
//! What the lab cannot check is said in the output, never passed silently:
//! the model's invariants I3 (no split-brain made without force) and I4 (one
//! actor per image) are the model's own bookkeeping and are checked there
//! only; on the lab, I2 (resyncs that took effect) is read from the image id,
//! sampled every second.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{lab, unique};
use rbd_mirror_step::ceph::RbdCli;
use rbd_mirror_step::sim::catalogue::{End, Scenario, SetupOp, Stage, StepSpec};
use rbd_mirror_step::sim::harness::{self, Options};
use rbd_mirror_step::sim::{Mode, Site, catalogue};
use rbd_mirror_step::step::resolve::ImageSpecRepr;
use rbd_mirror_step::step::{
    Checkpoint, Pace, Progress, ResolvedStep, Selection, Sites, StepEnd, execute,
};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// What CI runs: the stale promotes (lab P10 with and without writes, the
/// journal idle image that a bare demote leaves in split-brain, faults.md
/// C11), the refusal of a demote while a client holds the lock, and a
/// resync through its stages. Together about 4 minutes on the lab.
const CI_SCENARIOS: &[&str] = &[
    "p10-chained-failover-journal",
    "p10-chained-failover-journal-unwritten",
    "chained-failover-journal-settled",
    "c11-stale-snapshot-promote",
    "demote-in-use",
    "resync-stages-journal",
    // faults.md C3a, in the CI subset of the fault matrix.
    "c3a-daemon-back",
];

/// A step that the catalogue allows to still be waiting (`End::Waits`) is
/// given this long: 4–10 times what the awaited event takes on the lab
/// (ceph-lab.md §7: a demotion arrives within 2–6 s), so waiting out the
/// deadline says the event did not come, not that it was slow.
const WAITING_DEADLINE: Duration = Duration::from_secs(25);
/// Every other step: long enough for a journal failover (up to ~35 s to
/// `up+unknown` with the status lag, lab §7) and a snapshot resync (~35 s).
const STEP_DEADLINE: Duration = Duration::from_secs(120);

/// The controller's default deadline for the peer's reads (`--peer-timeout-secs`).
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of every scenario image: small, so an export for the data check is cheap.
const IMAGE_SIZE: &str = "16M";
/// Each write of a scenario writes its own 4 KiB marker at its own offset,
/// so "the copy holds that write" is a comparison of one block.
const MARKER_LEN: usize = 4096;
const MARKER_STRIDE: u64 = 64 * 1024;

fn selected() -> Vec<Scenario> {
    let all = catalogue();
    match std::env::var("CONFORMANCE").ok().as_deref() {
        Some("all") => all,
        Some(list) if !list.trim().is_empty() => {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            for n in &names {
                assert!(
                    all.iter().any(|s| s.name == *n),
                    "CONFORMANCE names {n:?}, which is not in the catalogue"
                );
            }
            all.into_iter()
                .filter(|s| names.contains(&s.name))
                .collect()
        }
        _ => all
            .into_iter()
            .filter(|s| CI_SCENARIOS.contains(&s.name))
            .collect(),
    }
}

fn deadline(sc: &Scenario) -> Duration {
    if sc.steps().any(|s| s.ends.contains(&End::Waits)) {
        WAITING_DEADLINE
    } else {
        STEP_DEADLINE
    }
}

// ---------------------------------------------------------------- the model

struct ModelResult {
    ends: Vec<End>,
    violations: Vec<String>,
}

/// Runs the scenario on the model, in virtual time, with the lab's step deadline.
fn on_model(sc: &Scenario) -> ModelResult {
    let sc = sc.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let opts = Options {
            deadline: deadline(&sc),
            ..Default::default()
        };
        let r = rt.block_on(harness::run(&sc, &opts));
        ModelResult {
            ends: r.steps.iter().map(|s| s.ends[0].clone()).collect(),
            violations: r.violations,
        }
    })
    .join()
    .expect("model run")
}

// ------------------------------------------------------------------ the lab

fn lab_site(s: Site) -> &'static common::Site {
    match s {
        Site::A => &lab().a,
        Site::B => &lab().b,
    }
}

/// `rbd` as the site's admin, bounded like `common::Site::rbd_admin` (a
/// frozen site must fail a call, not hang the test).
async fn rbd(site: Site, args: &[&str]) -> Output {
    Command::new(&lab_site(site).rbd)
        .arg("-c")
        .arg(&lab_site(site).admin_conf)
        .args([
            "--client_mount_timeout",
            "15",
            "--rados_mon_op_timeout",
            "15",
            "--rados_osd_op_timeout",
            "15",
        ])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("rbd runs")
}

fn said(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr);
    e.lines()
        .filter(|l| l.starts_with("rbd:"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn json(site: Site, args: &[&str]) -> Option<serde_json::Value> {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = rbd(site, &a).await;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

const LAB_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/lab");

/// A `lab` command that inherits no descriptor beyond stdio. A daemon it
/// (re)starts lives on after this test; had it inherited the descriptor of
/// the shared lab lock (`flock /tmp/lab-use.lock cargo test ...` passes it
/// down), the lock would stay held by that rbd-mirror for good, as it did
/// on 2026-11-30.
fn lab_command(args: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    unsafe extern "C" {
        fn close_range(first: u32, last: u32, flags: i32) -> i32;
    }
    let mut c = std::process::Command::new(LAB_SCRIPT);
    c.args(args).stdin(Stdio::null());
    // SAFETY: close_range is a plain system call, async-signal-safe, run in
    // the child between fork and exec.
    unsafe {
        c.pre_exec(|| {
            close_range(3, u32::MAX, 0);
            Ok(())
        });
    }
    c
}

/// The lab's own command for daemons and sites (tests/lab/lib/faults.sh).
async fn lab_cmd(args: &[&str]) -> Result<(), String> {
    let out = Command::from(lab_command(args))
        .output()
        .await
        .expect("lab script");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Daemons and sites a scenario took down: brought back at the end of the
/// scenario, and by `Drop` if the test panics half-way, so that a failed
/// run never leaves the shared lab broken.
#[derive(Default)]
struct Downed {
    daemons: BTreeSet<Site>,
    sites: BTreeSet<Site>,
}

struct Restore(Arc<Mutex<Downed>>);

impl Restore {
    async fn now(&self) -> Vec<String> {
        let (sites, daemons) = {
            let mut d = self.0.lock().expect("downed");
            (std::mem::take(&mut d.sites), std::mem::take(&mut d.daemons))
        };
        let mut errors = vec![];
        for s in sites {
            if let Err(e) = lab_cmd(&["thaw", s.name()]).await {
                errors.push(e);
            }
        }
        for s in daemons {
            if let Err(e) = lab_cmd(&["start", s.name(), "rbd-mirror"]).await {
                errors.push(e);
            }
        }
        errors
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let Ok(d) = self.0.lock() else { return };
        for s in &d.sites {
            let _ = lab_command(&["thaw", s.name()]).status();
        }
        for s in &d.daemons {
            let _ = lab_command(&["start", s.name(), "rbd-mirror"]).status();
        }
    }
}

/// One scenario's world on the lab: its image names, the writes it made,
/// the clients holding locks.
struct World {
    pool: String,
    prefix: String,
    downed: Arc<Mutex<Downed>>,
    /// Writes that Ceph accepted: (catalogue image, marker number, site).
    writes: Mutex<Vec<(&'static str, u64, Site)>>,
    next_write: Mutex<u64>,
    lockers: tokio::sync::Mutex<BTreeMap<(Site, &'static str), tokio::process::Child>>,
    /// What each setup op did on the lab, for the report.
    log: Mutex<Vec<String>>,
    started: Instant,
}

impl World {
    fn name(&self, img: &str) -> String {
        format!("{}-{img}", self.prefix)
    }

    fn spec(&self, img: &str) -> String {
        format!("{}/{}", self.pool, self.name(img))
    }

    fn note(&self, what: String) {
        let t = self.started.elapsed().as_secs_f32();
        self.log
            .lock()
            .expect("log")
            .push(format!("{t:6.1}s {what}"));
    }

    fn marker(&self, img: &str, n: u64) -> Vec<u8> {
        let text = format!("conformance {} write {n} ", self.name(img));
        text.bytes().cycle().take(MARKER_LEN).collect()
    }

    /// Applies one setup op. Ops that Ceph refuses are part of some
    /// scenarios' story (as in the harness): the refusal is noted, not fatal.
    async fn apply(&self, op: &SetupOp) {
        match op {
            SetupOp::Write(s, i) => {
                let n = {
                    let mut next = self.next_write.lock().expect("writes");
                    *next += 1;
                    *next
                };
                let ok = self.write_marker(*s, i, n).await;
                if ok {
                    self.writes.lock().expect("writes").push((i, n, *s));
                }
            }
            SetupOp::MirrorSnapshot(s, i) => {
                self.rbd_op(*s, &["mirror", "image", "snapshot", &self.spec(i)])
                    .await;
            }
            SetupOp::Demote(s, i) => {
                self.rbd_op(*s, &["mirror", "image", "demote", &self.spec(i)])
                    .await;
            }
            SetupOp::Promote(s, i, force) => {
                let spec = self.spec(i);
                let mut a = vec!["mirror", "image", "promote", &spec];
                if *force {
                    a.push("--force");
                }
                self.rbd_op(*s, &a).await;
            }
            SetupOp::Resync(s, i) => {
                self.rbd_op(*s, &["mirror", "image", "resync", &self.spec(i)])
                    .await;
            }
            SetupOp::Lock(s, i, holder) => self.lock(*s, i, *holder).await,
            SetupOp::Wait(ms) => {
                // A scripted fault time, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(*ms)).await;
            }
            SetupOp::DaemonUp(s, up) => {
                let verb = if *up { "start" } else { "stop" };
                // Recorded before the stop: a stop that fails half-way is restored too.
                if !up {
                    self.downed.lock().expect("downed").daemons.insert(*s);
                }
                let r = lab_cmd(&[verb, s.name(), "rbd-mirror"]).await;
                if *up && r.is_ok() {
                    self.downed.lock().expect("downed").daemons.remove(s);
                }
                self.note(format!("lab {verb} {} rbd-mirror: {r:?}", s.name()));
            }
            SetupOp::SiteUp(s, up) => {
                let verb = if *up { "thaw" } else { "freeze" };
                if !up {
                    self.downed.lock().expect("downed").sites.insert(*s);
                }
                let r = lab_cmd(&[verb, s.name()]).await;
                if *up && r.is_ok() {
                    self.downed.lock().expect("downed").sites.remove(s);
                }
                self.note(format!("lab {verb} {}: {r:?}", s.name()));
            }
        }
    }

    async fn rbd_op(&self, site: Site, args: &[&str]) {
        let out = rbd(site, args).await;
        self.note(format!(
            "rbd {} on {}: {}",
            args[..args.len().min(3)].join(" "),
            site.name(),
            if out.status.success() {
                "ok".to_string()
            } else {
                format!("exit {:?} {}", out.status.code(), said(&out))
            }
        ));
    }

    /// A client write of one marker block: `rbd import-diff` of a one-extent
    /// diff (the documented `rbd diff v1` format: header, `w` record with
    /// le64 offset and length, `e`), so that each write is one `rbd`
    /// command and can be found again in an export. Refused (read-only) on
    /// a non-primary copy.
    async fn write_marker(&self, site: Site, img: &str, n: u64) -> bool {
        let data = self.marker(img, n);
        let mut diff = b"rbd diff v1\n".to_vec();
        diff.push(b'w');
        diff.extend((n * MARKER_STRIDE).to_le_bytes());
        diff.extend((data.len() as u64).to_le_bytes());
        diff.extend(&data);
        diff.push(b'e');
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("write.diff");
        std::fs::write(&path, diff).expect("diff file");
        let out = rbd(
            site,
            &[
                "import-diff",
                "--no-progress",
                path.to_str().expect("utf-8 path"),
                &self.spec(img),
            ],
        )
        .await;
        self.note(format!(
            "write {n} to {img} on {}: {}",
            site.name(),
            if out.status.success() {
                "ok".to_string()
            } else {
                format!("refused, exit {:?} {}", out.status.code(), said(&out))
            }
        ));
        out.status.success()
    }

    /// A client that holds the image's exclusive lock: a writer (the lock is
    /// taken at the first write), throttled by librbd's QoS to a few writes
    /// a second so that it costs the shared 2-core machine nothing.
    async fn lock(&self, site: Site, img: &'static str, holder: Option<&str>) {
        let mut lockers = self.lockers.lock().await;
        if let Some(mut old) = lockers.remove(&(site, img)) {
            let _ = old.kill().await;
        }
        if holder.is_none() {
            self.note(format!("lock on {img} at {} released", site.name()));
            return;
        }
        let child = Command::new(&lab_site(site).rbd)
            .arg("-c")
            .arg(&lab_site(site).admin_conf)
            .args([
                "--rbd_qos_iops_limit",
                "5",
                "bench",
                "--io-type",
                "write",
                "--io-size",
                "4K",
                "--io-threads",
                "1",
                "--io-total",
                "10G",
                "--io-pattern",
                "rand",
                &self.spec(img),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("rbd bench starts");
        lockers.insert((site, img), child);
        let spec = self.spec(img);
        let held = poll(Duration::from_secs(30), || async {
            let l = json(site, &["lock", "ls", &spec]).await?;
            (!l.as_array()?.is_empty()).then_some(())
        })
        .await;
        self.note(format!(
            "a writer holds the lock of {img} on {}: {}",
            site.name(),
            held.is_some()
        ));
        assert!(
            held.is_some(),
            "the writer on {spec} did not take its lock within 30 s"
        );
    }

    async fn release_locks(&self) {
        for (_, mut c) in std::mem::take(&mut *self.lockers.lock().await) {
            let _ = c.kill().await;
        }
    }

    /// The markers of `img` that `site`'s copy holds now (None: unreadable).
    async fn held(&self, site: Site, img: &'static str) -> Option<BTreeSet<u64>> {
        let out = rbd(site, &["export", "--no-progress", &self.spec(img), "-"]).await;
        if !out.status.success() {
            return None;
        }
        let data = out.stdout;
        let writes = self.writes.lock().expect("writes").clone();
        Some(
            writes
                .iter()
                .filter(|(i, _, _)| *i == img)
                .filter(|(i, n, _)| {
                    let at = (*n * MARKER_STRIDE) as usize;
                    data.get(at..at + MARKER_LEN) == Some(&self.marker(i, *n)[..])
                })
                .map(|(_, n, _)| *n)
                .collect(),
        )
    }
}

/// Polls `check` every 500 ms until it returns Some or `limit` passes.
async fn poll<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn primary(site: Site, spec: &str) -> Option<bool> {
    json(site, &["info", spec]).await?["mirroring"]["primary"].as_bool()
}

/// The start state of every scenario (the model's `add_image`): primary on
/// A, copied to B and replaying there; in snapshot mode B's newest mirror
/// snapshot is a complete copy (read from `snap ls`, exact at once, where
/// the status description lags up to 30 s, lab P9).
async fn replicated(spec: &str, mode: Mode) -> bool {
    if primary(Site::A, spec).await != Some(true) || primary(Site::B, spec).await != Some(false) {
        return false;
    }
    let Some(s) = json(Site::B, &["mirror", "image", "status", spec]).await else {
        return false;
    };
    if s["state"] != "up+replaying" {
        return false;
    }
    if mode == Mode::Journal {
        return true;
    }
    let Some(snaps) = json(Site::B, &["snap", "ls", "--all", spec]).await else {
        return false;
    };
    // The newest mirror snapshot (by id) is a complete non-primary copy.
    snaps
        .as_array()
        .and_then(|v| {
            v.iter()
                .filter(|e| e["namespace"]["type"] == "mirror")
                .max_by_key(|e| e["id"].as_u64())
        })
        .is_some_and(|e| {
            e["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(".mirror.non_primary."))
                && e["namespace"]["complete"] == true
        })
}

async fn create_image(spec: &str, mode: Mode) {
    let mut args = vec!["create", "--size", IMAGE_SIZE];
    let mode_name = match mode {
        Mode::Journal => {
            args.extend(["--image-feature", "layering,exclusive-lock,journaling"]);
            "journal"
        }
        Mode::Snapshot => "snapshot",
    };
    args.push(spec);
    for a in [args, vec!["mirror", "image", "enable", spec, mode_name]] {
        let out = rbd(Site::A, &a).await;
        assert!(
            out.status.success(),
            "rbd {a:?} on site-a: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Removes an image from both sites, whatever state the scenario left it
/// in (both primary, split-brain, half resynced). True when it is gone.
async fn remove_image(spec: &str) -> bool {
    poll(Duration::from_secs(90), || async {
        let mut gone = true;
        for s in Site::BOTH {
            if json(s, &["info", spec]).await.is_none() {
                continue;
            }
            gone = false;
            // Disabling on a non-primary copy needs --force; on the primary
            // it also has rbd-mirror delete the peer's copy.
            rbd(s, &["mirror", "image", "disable", "--force", spec]).await;
            rbd(s, &["snap", "purge", "--no-progress", spec]).await;
            rbd(s, &["rm", "--no-progress", spec]).await;
        }
        gone.then_some(())
    })
    .await
    .is_some()
}

/// Image ids seen on each site, sampled every second: a resync shows as a
/// new id (the copy is deleted and re-created, lab P14).
#[derive(Default)]
struct Ids(BTreeMap<(&'static str, Site), Vec<String>>);

impl Ids {
    fn changes(&self, img: &str, site: Site) -> u32 {
        self.0
            .iter()
            .find(|((i, s), _)| *i == img && *s == site)
            .map_or(0, |(_, v)| v.len().saturating_sub(1) as u32)
    }
}

fn sample_ids(
    world: Arc<World>,
    images: Vec<&'static str>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Ids> {
    tokio::spawn(async move {
        let mut ids = Ids::default();
        while !stop.is_cancelled() {
            for img in &images {
                for s in Site::BOTH {
                    if let Some(id) = json(s, &["info", &world.spec(img)])
                        .await
                        .and_then(|v| v["id"].as_str().map(str::to_string))
                    {
                        let seen = ids.0.entry((img, s)).or_default();
                        if seen.last() != Some(&id) {
                            seen.push(id);
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        ids
    })
}

struct NoCheckpoint;

impl Checkpoint for NoCheckpoint {
    async fn save(&self, _: &Progress, _: bool) -> Result<(), String> {
        Ok(())
    }
}

/// A connection as `controller::task` builds one from a Secret: the lab's
/// least-privilege client, the peer's reads bounded by the peer deadline.
fn cli(site: Site, peer: bool) -> RbdCli {
    let s = lab_site(site);
    let mut c = RbdCli::new(s.conf.clone(), s.keyring.clone(), Some(s.user.clone()));
    if peer {
        c.read_timeout = PEER_TIMEOUT;
    }
    c
}

struct LabStep {
    end: End,
    detail: String,
    secs: f32,
}

/// Runs one step through `execute` against the real sites; still running at
/// the deadline is `End::Waits` (the run is cancelled there, as the
/// controller's timeout would).
async fn lab_step(world: &Arc<World>, st: &StepSpec, limit: Duration) -> LabStep {
    let step = ResolvedStep {
        action: st.action,
        cluster: st.site.name().into(),
        peer_cluster: st.peer.then(|| st.site.other().name().into()),
        pool: world.pool.clone(),
        rados_namespace: None,
        selection: Selection::Images(
            st.images
                .iter()
                .map(|i| ImageSpecRepr(world.name(i)))
                .collect(),
        ),
        force: st.force,
        dry_run: false,
        wait_for: st.wait_for,
        concurrency: 8,
        pvcs: None,
    };
    let sites = Sites {
        local: cli(st.site, false),
        local_name: st.site.name().into(),
        peer: st.peer.then(|| cli(st.site.other(), true)),
        peer_name: st.peer.then(|| st.site.other().name().into()),
    };
    let during = {
        let (world, ops) = (world.clone(), st.during.clone());
        tokio::spawn(async move {
            let mut at = 0;
            for (ms, op) in ops {
                tokio::time::sleep(Duration::from_millis(ms.saturating_sub(at))).await;
                at = ms;
                world.apply(&op).await;
            }
        })
    };
    let started = Instant::now();
    let token = CancellationToken::new();
    let progress = Arc::new(Mutex::new(Progress::default()));
    let run = execute(
        &step,
        &sites,
        progress.clone(),
        token.clone(),
        &NoCheckpoint,
        Pace::default(),
    );
    tokio::pin!(run);
    // What the step was waiting for when the deadline came (the cancel clears it).
    let mut waiting = None;
    let exec = tokio::select! {
        e = &mut run => e,
        _ = tokio::time::sleep(limit) => {
            waiting = progress.lock().expect("progress").waiting.clone();
            token.cancel();
            run.await
        }
    };
    let secs = started.elapsed().as_secs_f32();
    during.await.expect("during ops");
    let outcomes: Vec<String> = exec
        .progress
        .done
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.outcome))
        .collect();
    let (end, detail) = match exec.end {
        StepEnd::Succeeded => (End::Succeeded, outcomes.join(", ")),
        StepEnd::Failed(f) => {
            let mut m = f.message.clone();
            m.truncate(300);
            (End::Failed(f.reason), m)
        }
        StepEnd::Stopped => (End::Waits, waiting.unwrap_or_default()),
        StepEnd::Lost(who) => (End::Lost, who),
    };
    LabStep { end, detail, secs }
}

struct LabResult {
    ends: Vec<LabStep>,
    violations: Vec<String>,
    unchecked: Vec<String>,
    log: Vec<String>,
    secs: f32,
}

fn prefix_of(run: &str, n: usize) -> String {
    format!("{run}-{n:02}")
}

/// Runs the scenario on the lab; its images were created and are replaying.
async fn on_lab(sc: &Scenario, prefix: String, restore: &Restore) -> LabResult {
    let world = Arc::new(World {
        pool: lab().pool.clone(),
        prefix,
        downed: restore.0.clone(),
        writes: Mutex::new(vec![]),
        next_write: Mutex::new(0),
        lockers: tokio::sync::Mutex::new(BTreeMap::new()),
        log: Mutex::new(vec![]),
        started: Instant::now(),
    });
    let stop = CancellationToken::new();
    let sampler = sample_ids(world.clone(), sc.images.clone(), stop.clone());
    let limit = deadline(sc);
    let mut ends = vec![];
    for stage in &sc.script {
        match stage {
            Stage::Op(op) => world.apply(op).await,
            Stage::Step(st) => {
                let r = lab_step(&world, st, limit).await;
                world.note(format!(
                    "step {} on {}: {:?} after {:.1}s ({})",
                    st.action.as_str(),
                    st.site.name(),
                    r.end,
                    r.secs,
                    r.detail
                ));
                ends.push(r);
            }
        }
    }
    world.release_locks().await;
    // The mirroring state each site reports at the end: the evidence when
    // the lab and the model disagree.
    for img in &sc.images {
        for site in Site::BOTH {
            let st = json(site, &["mirror", "image", "status", &world.spec(img)]).await;
            world.note(format!(
                "end: {img} on {}: {}",
                site.name(),
                st.map_or("no status".into(), |v| format!(
                    "{} {}",
                    v["state"].as_str().unwrap_or("?"),
                    v["description"].as_str().unwrap_or("?")
                ))
            ));
        }
    }
    let mut violations = vec![];
    let mut unchecked = vec![];
    // Roles, as `rbd info` reports them (exact at once, lab P9), read while
    // the sites are still as the script left them (the model's check does
    // the same).
    for (img, site, want) in &sc.expect.primary {
        let got = primary(*site, &world.spec(img)).await;
        if got != Some(*want) {
            violations.push(format!(
                "final: {img} on {} primary={got:?}, expected {want}",
                site.name()
            ));
        }
    }
    stop.cancel();
    let ids = sampler.await.expect("id sampler");
    // Sites and daemons back before the data checks: a stopped rbd-mirror
    // copies nothing, and an export of a frozen site cannot be read.
    for e in restore.now().await {
        violations.push(format!("restoring the lab: {e}"));
    }
    for (img, site) in &sc.expect.has_peer_writes {
        let made = world
            .writes
            .lock()
            .expect("writes")
            .iter()
            .filter(|(i, _, _)| i == img)
            .count();
        if made == 0 {
            unchecked.push(format!(
                "has_peer_writes({img}, {}): no write of the script was accepted, nothing to compare",
                site.name()
            ));
            continue;
        }
        // A non-primary copy may still be copying (a resync's initial sync
        // goes on after `up+replaying`): give it a bounded time. A write lost
        // by a stale promote stays lost (split-brain stops replication), so
        // the bound cannot hide one.
        let end = Instant::now() + Duration::from_secs(30);
        let (ok, last) = loop {
            let own = world.held(*site, img).await;
            let other = world.held(site.other(), img).await;
            let last = format!(
                "{} holds writes {own:?}, {} holds {other:?}",
                site.name(),
                site.other().name()
            );
            if let (Some(own), Some(other)) = (&own, &other)
                && other.is_subset(own)
            {
                break (true, last);
            }
            if Instant::now() >= end {
                break (false, last);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if !ok {
            violations.push(format!(
                "final: {img} on {} lacks writes the other copy holds, after 30 s: {last}",
                site.name()
            ));
        }
    }
    // I2: exactly the resyncs the scenario asks for, counted as id changes.
    for img in &sc.images {
        for site in Site::BOTH {
            let want = sc.expect.resyncs_of(img, site);
            let got = ids.changes(img, site);
            if got != want {
                violations.push(format!(
                    "I2: {img} on {}: its id changed {got} times, expected {want} resyncs (ids {:?})",
                    site.name(),
                    ids.0.get(&(*img, site))
                ));
            }
        }
    }
    unchecked.push(
        "I3 (no split-brain without force) and I4 (one actor per image): checked on the model only"
            .into(),
    );
    let log = world.log.lock().expect("log").clone();
    LabResult {
        ends,
        violations,
        unchecked,
        log,
        secs: world.started.elapsed().as_secs_f32(),
    }
}

/// Creates every image the selected scenarios start with, at once (a
/// journal image takes 15–25 s to replay on B, lab §7), and waits until
/// each replays on site-b.
async fn prepare(run: &str, scenarios: &[(usize, Scenario)]) {
    let pool = lab().pool.clone();
    let mut specs = vec![];
    for (n, sc) in scenarios {
        for img in &sc.images {
            let spec = format!("{pool}/{}-{img}", prefix_of(run, *n));
            create_image(&spec, sc.mode).await;
            specs.push((spec, sc.mode));
        }
    }
    let waits = specs.iter().map(|(spec, mode)| async move {
        let ok = poll(Duration::from_secs(120), || async {
            replicated(spec, *mode).await.then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "{spec} did not replay on site-b within 120 s: is the lab's rbd-mirror up? (tests/lab/lab status)"
        );
    });
    futures::future::join_all(waits).await;
}

fn show_end(e: &End) -> String {
    match e {
        End::Failed(r) => format!("Failed({})", r.as_str()),
        e => format!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalogue_agrees_on_lab_and_model() {
    let lab = lab();
    assert!(
        Path::new(&lab.a.admin_conf).exists() && Path::new(&lab.b.admin_conf).exists(),
        "the lab's Ceph sites are not there ({}): tests/lab/lab up",
        lab.a.admin_conf.display()
    );
    let run = unique("cf");
    let scenarios: Vec<(usize, Scenario)> = selected().into_iter().enumerate().collect();
    let started = Instant::now();
    eprintln!(
        "conformance run {run}: {} scenarios: {:?}",
        scenarios.len(),
        scenarios.iter().map(|(_, s)| s.name).collect::<Vec<_>>()
    );
    let restore = Restore(Arc::new(Mutex::new(Downed::default())));
    prepare(&run, &scenarios).await;
    eprintln!(
        "images replaying on site-b after {:.0}s",
        started.elapsed().as_secs_f32()
    );

    let mut findings = vec![];
    let mut removals = vec![];
    for (n, sc) in &scenarios {
        let prefix = prefix_of(&run, *n);
        let model = on_model(sc);
        // Each scenario starts from the replicated state, whatever the
        // previous one did to the daemons.
        for img in &sc.images {
            let spec = format!("{}/{prefix}-{img}", lab.pool);
            let ok = poll(Duration::from_secs(90), || async {
                replicated(&spec, sc.mode).await.then_some(())
            })
            .await;
            assert!(
                ok.is_some(),
                "{spec} is not replaying on site-b before {}",
                sc.name
            );
        }
        let labr = on_lab(sc, prefix.clone(), &restore).await;

        let mut report = format!(
            "\n== {} ({:?}, {:.0}s on the lab)\n   {}\n",
            sc.name, sc.mode, labr.secs, sc.about
        );
        let mut bad = vec![];
        for (i, st) in sc.steps().enumerate() {
            let accepted: Vec<String> = st.ends.iter().map(show_end).collect();
            let m = model.ends.get(i).cloned();
            let l = labr.ends.get(i);
            report += &format!(
                "   step {i}: {} on {}{}: accepted {accepted:?}; model {}; lab {}\n",
                st.action.as_str(),
                st.site.name(),
                if st.force { " (force)" } else { "" },
                m.as_ref().map_or("-".into(), show_end),
                l.map_or("-".into(), |l| format!(
                    "{} ({:.1}s)",
                    show_end(&l.end),
                    l.secs
                )),
            );
            match &m {
                Some(e) if st.ends.contains(e) => {}
                e => bad.push(format!(
                    "step {i} ({}): model ended {e:?}",
                    st.action.as_str()
                )),
            }
            match l {
                Some(l) if st.ends.contains(&l.end) => {}
                l => bad.push(format!(
                    "step {i} ({}): lab ended {:?}: {}",
                    st.action.as_str(),
                    l.map(|l| &l.end),
                    l.map_or("", |l| l.detail.as_str())
                )),
            }
            if let (Some(m), Some(l)) = (&m, l)
                && *m != l.end
                && st.ends.contains(m)
                && st.ends.contains(&l.end)
            {
                report += &format!("   (both accepted, but model and lab differ at step {i})\n");
            }
        }
        bad.extend(model.violations.iter().map(|v| format!("model: {v}")));
        bad.extend(labr.violations.iter().map(|v| format!("lab: {v}")));
        for u in &labr.unchecked {
            report += &format!("   not checked on the lab: {u}\n");
        }
        if !bad.is_empty() {
            report += &format!("   FAILED:\n     {}\n   lab log:\n", bad.join("\n     "));
            for l in &labr.log {
                report += &format!("     {l}\n");
            }
            findings.push(format!("{}: {}", sc.name, bad.join("; ")));
        }
        eprint!("{report}");
        // Removed in the background while the next scenario runs: a
        // mirrored image takes tens of seconds to leave both sites.
        for img in &sc.images {
            let spec = format!("{}/{prefix}-{img}", lab.pool);
            removals.push(tokio::spawn(async move {
                if !remove_image(&spec).await {
                    eprintln!("{spec} could not be removed within 90 s: left on the lab");
                }
            }));
        }
    }
    futures::future::join_all(removals).await;
    eprintln!(
        "\nconformance: {} scenarios in {:.0}s, {} disagree with the catalogue",
        scenarios.len(),
        started.elapsed().as_secs_f32(),
        findings.len()
    );
    drop(restore);
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}

/// The CI subset names scenarios of the catalogue (a renamed scenario
/// would otherwise silently drop out of CI).
#[test]
fn ci_scenarios_are_in_the_catalogue() {
    let names: Vec<&str> = catalogue().iter().map(|s| s.name).collect();
    for n in CI_SCENARIOS {
        assert!(names.contains(n), "{n} is not in the catalogue");
    }
}

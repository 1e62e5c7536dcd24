//! Fault tests: a lost site, a killed controller, and what exactly the
//! controller sends to Ceph. They freeze daemons or own their controller,
//! so they run one at a time (a lock below), after the other test binaries.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::runs::*;
use common::{client, lab, mirrored_image, unique, wait_for};
use kube::Api;
use serde_json::json;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

#[path = "faults/control_plane.rs"]
mod control_plane;
#[path = "faults/keys.rs"]
mod keys;
#[path = "faults/kills.rs"]
mod kills;

/// The environment of a replica `who` with the Deployment's leader
/// election, its Lease in `ns`.
fn replica_env<'a>(ns: &'a str, who: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("RBDSTEP_LEADER_ELECTION", "true"),
        ("POD_NAMESPACE", ns),
        ("POD_NAME", who),
    ]
}

/// A guarded promote through Secret `cluster` (site-b's) of a fresh image,
/// waiting (M4) for site-a, still primary, to be demoted. Returns the image.
async fn waiting_promote(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    name: &str,
    cluster: &str,
    retries: u32,
) -> String {
    let lab = lab();
    let img = unique("wait");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    RunBuilder::one(selector, "promote", cluster, &img)
        .param("peerCluster", "site-a")
        .retries(retries)
        .timeout("10m")
        .create(client, ns, name)
        .await;
    let runs = customruns(client, ns);
    wait_for(60, "the promote to wait for the demotion", || async {
        let r = runs.get(name).await.ok()?;
        let (_, _, m) = condition(&r)?;
        m.contains("waiting").then_some(())
    })
    .await;
    img
}

fn lab_cmd(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/lab");
    let out = Command::new(script)
        .args(args)
        .output()
        .expect("lab script");
    let said = String::from_utf8_lossy(&out.stderr);
    // Shown with a failing test's output: e.g. that a thaw restarted rbd-mirror.
    eprintln!("lab {args:?}: {said}");
    assert!(out.status.success(), "lab {args:?}: {said}");
}

/// Thaws site-a even when the test panics half-way.
struct ThawOnDrop;
impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        lab_cmd(&["thaw", "site-a"]);
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn lost_site_unplanned_failover_then_split_brain_repair() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let sel = shared_controller("faults");
    let ns = run_namespace(&client, "fault-lost").await;
    let img = unique("lost");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let key = format!("{}/{img}", lab.pool);
    let promote = |force: bool| {
        let mut b = RunBuilder::new(&sel)
            .param("action", "promote")
            .param("cluster", "site-b")
            .param("peerCluster", "site-a")
            .param("pool", lab.pool.as_str())
            .param("images", json!([img]));
        if force {
            b = b.param("force", "true");
        }
        b
    };

    lab_cmd(&["freeze", "site-a"]);
    let thaw = ThawOnDrop;
    let t0 = Instant::now();
    promote(false)
        .timeout("10m")
        .create(&client, &ns, "planned")
        .await;
    let done = wait_done(&client, &ns, "planned", 90).await;
    let (s, r, m) = condition(&done).unwrap();
    assert_eq!(
        (s.as_str(), r.as_str()),
        ("False", "PeerUnavailable"),
        "{m}"
    );
    assert!(
        m.contains("force"),
        "the message tells the operator what to do: {m}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "fails fast, not at the 10m timeout: {:?}",
        t0.elapsed()
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));

    promote(true).create(&client, &ns, "forced").await;
    let done = wait_done(&client, &ns, "forced", 120).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(result(&done, "outcomes").unwrap()[&key], "force-promoted");
    assert!(
        result(&done, "forced").unwrap()[&key].is_string(),
        "the data-loss window is reported"
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
    drop(thaw);

    // site-a returns, still primary: a split-brain, which status reports.
    wait_for(60, "site-a answers again", || async {
        lab.a.is_primary(&lab.pool, &img)
    })
    .await;
    RunBuilder::new(&sel)
        .param("action", "status")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "after-thaw")
        .await;
    assert_condition(
        &wait_done(&client, &ns, "after-thaw", 60).await,
        "False",
        "SplitBrain",
    );

    // Repair: demote the loser (site-a), resync it, wait until it replays.
    let on_a = |action: &str| {
        RunBuilder::new(&sel)
            .param("action", action)
            .param("cluster", "site-a")
            .param("pool", lab.pool.as_str())
            .param("images", json!([img]))
    };
    on_a("demote").create(&client, &ns, "demote-a").await;
    assert_condition(
        &wait_done(&client, &ns, "demote-a", 60).await,
        "True",
        "Succeeded",
    );
    on_a("resync").create(&client, &ns, "resync-a").await;
    let done = wait_done(&client, &ns, "resync-a", 180).await;
    assert_condition(&done, "True", "Succeeded");
    on_a("status")
        .param("waitFor", "replaying")
        .create(&client, &ns, "replaying-a")
        .await;
    assert_condition(
        &wait_done(&client, &ns, "replaying-a", 120).await,
        "True",
        "Succeeded",
    );
    assert_eq!(lab.a.is_primary(&lab.pool, &img), Some(false));
    assert_eq!(
        lab.a.mirror_state(&lab.pool, &img).as_deref(),
        Some("up+replaying")
    );
}

#[tokio::test]
async fn no_rbd_command_starts_after_the_cancel_is_seen() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ctl = logged_controller("cancel");
    let ns = run_namespace(&client, "fault-cancel").await;
    let img = unique("cxl");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    RunBuilder::new(&ctl.selector)
        .param("action", "promote")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "promote")
        .await;
    wait_message(&client, &ns, "promote", "still primary", 60).await;
    assert!(
        !ctl.calls(&img).is_empty(),
        "the wrapper sees the controller's calls"
    );
    cancel(&client, &ns, "promote").await;
    let done = wait_done(&client, &ns, "promote", 30).await;
    let seen = now_ns();
    assert_condition(&done, "False", "CustomRunCancelled");
    // The controller's waits poll at most every 0.5 s: give a stray call
    // three times that to show up before concluding none does.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let late: Vec<_> = ctl
        .calls(&img)
        .into_iter()
        .filter(|(t, _)| *t > seen)
        .collect();
    assert!(late.is_empty(), "rbd commands after the cancel: {late:?}");
    assert!(
        ctl.calls(&img).iter().all(|(_, a)| !a.contains("promote")),
        "nothing was promoted"
    );
    drop(ctl.proc);
}

#[tokio::test]
async fn killed_controller_resumes_a_resync_without_issuing_it_twice() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let mut ctl = logged_controller("kill");
    let ns = run_namespace(&client, "fault-kill").await;
    let img = unique("kill");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let key = format!("{}/{img}", lab.pool);
    RunBuilder::new(&ctl.selector)
        .param("action", "resync")
        .param("cluster", "site-b")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "resync")
        .await;
    let api = customruns(&client, &ns);
    // Kill it once the resync is recorded (write-ahead) and issued.
    wait_for(60, "the resync recorded in extraFields", || async {
        let o = api.get("resync").await.ok()?;
        o.data["status"]["extraFields"]["progress"]["resyncIssued"][&key]
            .as_str()
            .map(drop)
    })
    .await;
    ctl.wait_call(&img, "mirror image resync", 30).await;
    ctl.proc.child.kill().expect("SIGKILL the controller");
    ctl.proc.child.wait().unwrap();
    let before = api.get("resync").await.unwrap();
    assert_eq!(condition(&before).unwrap().0, "Unknown", "killed mid-step");

    // A new controller (same selector, same rbd log) resumes the run.
    let proc2 = start_controller(&ctl.selector, &Logged::env(&ctl.calls));
    let done = wait_done(&client, &ns, "resync", 180).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(result(&done, "outcomes").unwrap()[&key], "resynced");
    let resyncs = ctl.count(&img, "mirror image resync");
    assert_eq!(
        resyncs, 1,
        "the resync was issued exactly once across the restart"
    );
    drop(proc2);
}

#[tokio::test]
async fn unplanned_failover_and_failback_pipelines_with_a_lost_site() {
    use common::pipelines::*;
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let sel = shared_controller("faults");
    let ns = run_namespace(&client, "fault-pipelines").await;
    install_pipelines(&client, &ns).await;
    let img = unique("upf");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let key = format!("{}/{img}", lab.pool);
    let unplanned = |force: &str| {
        json!([
            {"name": "pool", "value": lab.pool},
            {"name": "images", "value": [img]},
            {"name": "lost-cluster", "value": "site-a"},
            {"name": "to-cluster", "value": "site-b"},
            {"name": "force", "value": force},
        ])
    };

    lab_cmd(&["freeze", "site-a"]);
    let thaw = ThawOnDrop;
    let t0 = Instant::now();
    start_pipeline(
        &sel,
        &client,
        &ns,
        "unplanned-failover",
        "no-force",
        unplanned("false"),
        json!({}),
    )
    .await;
    let pr = wait_pipeline(&client, &ns, "no-force", 120).await;
    assert_eq!(pr_condition(&pr).unwrap().0, "False");
    let step = customruns(&client, &ns)
        .get("no-force-promote")
        .await
        .unwrap();
    let (_, reason, message) = condition(&step).unwrap();
    assert_eq!(reason, "PeerUnavailable", "{message}");
    assert!(
        message.contains("force"),
        "tells the operator what to do: {message}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(90),
        "fails fast: {:?}",
        t0.elapsed()
    );

    start_pipeline(
        &sel,
        &client,
        &ns,
        "unplanned-failover",
        "forced",
        unplanned("true"),
        json!({}),
    )
    .await;
    let pr = wait_pipeline(&client, &ns, "forced", 180).await;
    let (s, r, m) = pr_condition(&pr).unwrap();
    assert_eq!(s, "True", "{r}: {m}");
    assert!(
        pr_result(&pr, "data-loss-window").unwrap()[&key].is_string(),
        "the data-loss window is a pipeline result"
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
    drop(thaw);

    // site-a returns still primary (split-brain); failback repairs it and
    // makes site-a primary again.
    wait_for(60, "site-a answers again", || async {
        lab.a.is_primary(&lab.pool, &img)
    })
    .await;
    start_pipeline(
        &sel,
        &client,
        &ns,
        "failback",
        "failback",
        json!([
            {"name": "pool", "value": lab.pool},
            {"name": "images", "value": [img]},
            {"name": "returning-cluster", "value": "site-a"},
            {"name": "current-cluster", "value": "site-b"},
        ]),
        json!({}),
    )
    .await;
    let pr = wait_pipeline(&client, &ns, "failback", 420).await;
    let (s, r, m) = pr_condition(&pr).unwrap();
    assert_eq!(s, "True", "{r}: {m}");
    assert_eq!(lab.a.is_primary(&lab.pool, &img), Some(true));
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
    assert_eq!(
        pr_result(&pr, "current-states").unwrap()[&key]["state"],
        "up+replaying"
    );
}

/// Two controller processes started with default flags (no leader
/// election) both watch the same runs. The run's owner (owner.rs) and the
/// claim before each mutation let exactly one of them act: every image is
/// demoted, then promoted, exactly once, and the runs succeed.
#[tokio::test]
async fn two_controllers_with_default_flags_never_both_act() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-twins").await;
    let calls = lab
        .dir
        .join("logs")
        .join(format!("rbd-calls-{}.log", unique("twins")));
    let selector = unique("twins");
    let env = [
        ("RBD_BINARY", RBD_TIMING),
        ("RBD_CALL_LOG", calls.to_str().unwrap()),
    ];
    let _first = start_controller(&selector, &env);
    let _second = start_controller(&selector, &env);
    let imgs: Vec<String> = (0..3).map(|_| unique("twin")).collect();
    for i in &imgs {
        mirrored_image(&lab.a, &lab.b, &lab.pool, i).await;
    }
    let step = |action: &str, cluster: &str| {
        RunBuilder::new(&selector)
            .param("action", action)
            .param("cluster", cluster)
            .param("pool", lab.pool.as_str())
            .param("images", json!(imgs))
    };
    step("demote", "site-a")
        .create(&client, &ns, "demote")
        .await;
    assert_condition(
        &wait_done(&client, &ns, "demote", 90).await,
        "True",
        "Succeeded",
    );
    step("promote", "site-b")
        .param("peerCluster", "site-a")
        .create(&client, &ns, "promote")
        .await;
    assert_condition(
        &wait_done(&client, &ns, "promote", 120).await,
        "True",
        "Succeeded",
    );
    let log = rbd_calls(&calls);
    for i in &imgs {
        let key = format!("{}/{i}", lab.pool);
        let calls_on = |verb: &str| -> Vec<(u128, u128)> {
            log.iter()
                .filter(|(_, _, a)| {
                    a.starts_with(&format!("mirror image {verb}")) && a.ends_with(&key)
                })
                // A call with no end may still run: it overlaps all after it.
                .map(|(s, e, _)| (*s, e.unwrap_or(u128::MAX)))
                .collect()
        };
        // A demote is sent once; a promote may be sent again after Ceph's
        // "not yet" (EBUSY), but never by two actors at once (I4).
        let demotes = calls_on("demote");
        assert_eq!(demotes.len(), 1, "demote of {key}: {log:#?}");
        let mut mutations = [demotes, calls_on("promote")].concat();
        mutations.sort();
        for w in mutations.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "two mutations of {key} overlapped: {w:?}\n{log:#?}"
            );
        }
    }
    assert_eq!(lab.b.is_primary(&lab.pool, &imgs[0]), Some(true));
}

/// A6's handover: SIGTERM to the leader of two replicas (the Deployment's
/// leader election) hands the Lease to the standby in seconds, not a lease
/// period: the leader releases it on its way out, and the standby, which
/// watches the Lease, takes it at once. Without either, the standby waits
/// out what is left of the lease (5-30 s of its 30 s).
#[tokio::test]
async fn a_sigtermed_leader_hands_the_lease_to_its_standby_in_seconds() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let ns = run_namespace(&client, "fault-handover").await;
    let selector = unique("handover");
    let replica = |who: &str| start_controller(&selector, &replica_env(&ns, who));
    let holder = || lease_holder(&client, &ns);
    let mut leader = replica("first");
    wait_for(60, "the first replica to lead", || async {
        (holder().await? == "first").then_some(())
    })
    .await;
    let standby = replica("second");
    wait_for(30, "the second replica to stand by", || async {
        let log = std::fs::read_to_string(&standby.log).ok()?;
        log.lines()
            // (colours between a field's name and its value)
            .any(|l| l.contains("waiting to lead") && l.contains("second"))
            .then_some(())
    })
    .await;
    let t0 = Instant::now();
    signal(leader.child.id(), "TERM");
    wait_for(40, "the standby to hold the Lease", || async {
        (holder().await? == "second").then_some(())
    })
    .await;
    let took = t0.elapsed();
    println!("handover: {took:?} from SIGTERM to the standby holding the Lease");
    assert!(
        took < Duration::from_secs(10),
        "the handover took {took:?}: a lease period, not seconds"
    );
    let status = leader.child.wait().unwrap();
    assert!(
        status.success(),
        "the old leader exits 0 on SIGTERM: {status}"
    );
    // The new leader serves.
    let img = unique("handover");
    mirrored_image(&lab().a, &lab().b, &lab().pool, &img).await;
    RunBuilder::one(&selector, "status", "site-b", &img)
        .create(&client, &ns, "after")
        .await;
    let done = wait_done(&client, &ns, "after", 60).await;
    assert_condition(&done, "True", "Succeeded");
}

/// SIGTERM while a demote is running: the controller starts nothing new,
/// lets the demote finish (it is never cut half-way), records progress and
/// exits; a new controller then finishes the run.
#[tokio::test]
async fn sigterm_lets_a_running_demote_finish() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-sigterm").await;
    let img = unique("term");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let calls = lab
        .dir
        .join("logs")
        .join(format!("rbd-calls-{}.log", unique("term")));
    let selector = unique("term");
    let env = [
        ("RBD_BINARY", RBD_TIMING),
        ("RBD_CALL_LOG", calls.to_str().unwrap()),
        ("RBD_SLEEP_MATCH", "mirror image demote"),
        ("RBD_SLEEP_SECS", "6"),
    ];
    let mut first = start_controller(&selector, &env);
    RunBuilder::new(&selector)
        .param("action", "demote")
        .param("cluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "demote")
        .await;
    // The claim before the demote records it in flight.
    wait_in_flight(&client, &ns, "demote").await;
    let api = customruns(&client, &ns);
    let pid = first.child.id();
    let t0 = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(s) = first.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "the controller did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");
    // The demote ran to its end (SIGKILLed children would have left the
    // image primary), and nothing was started after the SIGTERM.
    assert_eq!(lab.a.is_primary(&lab.pool, &img), Some(false));
    let demotes = rbd_calls(&calls)
        .into_iter()
        .filter(|(_, _, a)| a.starts_with("mirror image demote"))
        .count();
    assert_eq!(demotes, 1);
    // It gave the run up as it stopped: the next controller takes it at
    // once, not after the owner TTL.
    let run = api.get("demote").await.unwrap();
    let owner = &run.data["status"]["extraFields"]["owner"];
    assert!(
        owner.is_null(),
        "the stopped controller still owns the run: {owner}"
    );
    let _second = start_controller(&selector, &env);
    let done = wait_done(&client, &ns, "demote", 90).await;
    assert_condition(&done, "True", "Succeeded");
}

/// Someone demotes the image by hand after the controller checked it and
/// before its own demote runs: the run succeeds (the image is demoted) and
/// says so with a Warning `ActedByAnother` event, since a person or another
/// tool acted on an image this run had taken.
#[tokio::test]
async fn a_demote_done_by_hand_meanwhile_is_reported_as_acted_by_another() {
    use k8s_openapi::api::events::v1::Event;
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-other").await;
    let img = unique("other");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let selector = unique("other");
    // Every demote of this controller waits 6 s before it reaches rbd.
    let env = [
        ("RBD_BINARY", RBD_TIMING),
        ("RBD_SLEEP_MATCH", "mirror image demote"),
        ("RBD_SLEEP_SECS", "6"),
    ];
    let _ctl = start_controller(&selector, &env);
    RunBuilder::new(&selector)
        .param("action", "demote")
        .param("cluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "demote")
        .await;
    wait_in_flight(&client, &ns, "demote").await;
    let spec = format!("{}/{img}", lab.pool);
    lab.a.rbd_ok(&["mirror", "image", "demote", &spec]);
    let done = wait_done(&client, &ns, "demote", 60).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(
        result(&done, "outcomes").unwrap()[&spec],
        "already-non-primary"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let note = wait_for(30, "an ActedByAnother event", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            (e.reason.as_deref() == Some("ActedByAnother") && e.type_.as_deref() == Some("Warning"))
                .then(|| e.note.unwrap_or_default())
        })
    })
    .await;
    assert!(note.contains(&spec), "{note}");
}

/// faults.md B2: the API server is stopped and started again (3 times here;
/// `FAULT_B2_ROUNDS` for more): the controller's watches come back every
/// time, and a run created after each restart is picked up within 10 s.
#[tokio::test]
async fn api_server_restarts_lose_no_watch() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-api").await;
    let img = unique("api");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let ctl = logged_controller("api");
    let status = || {
        RunBuilder::new(&ctl.selector)
            .param("action", "status")
            .param("cluster", "site-b")
            .param("pool", lab.pool.as_str())
            .param("images", json!([img]))
    };
    // The controller serves before the first restart.
    status().create(&client, &ns, "before").await;
    assert_condition(
        &wait_done(&client, &ns, "before", 60).await,
        "True",
        "Succeeded",
    );
    let rounds: u32 = std::env::var("FAULT_B2_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for i in 0..rounds {
        lab_cmd(&["restart", "apiserver"]);
        let name = format!("after-restart-{i}");
        status().create(&client, &ns, &name).await;
        let done = wait_done(&client, &ns, &name, 90).await;
        assert_condition(&done, "True", "Succeeded");
        let created: jiff::Timestamp = serde_json::to_value(&done.metadata.creation_timestamp)
            .unwrap()
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let started: jiff::Timestamp = done.data["status"]["startTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let took = started.duration_since(created);
        eprintln!("restart {i}: picked up after {took:#}");
        assert!(
            took <= jiff::SignedDuration::from_secs(10),
            "restart {i}: the run was picked up {took:#} after it was created"
        );
    }
    drop(ctl);
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A5: two replicas with leader election (the Deployment's flags); the
/// leader is SIGSTOPped for more than two lease durations while a promote
/// waits (M4). The standby takes over and finishes the run; the old leader,
/// continued, makes no mutating call and no status write, and exits.
#[tokio::test]
async fn a_paused_leader_is_replaced_and_acts_no_more_when_it_wakes() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-leader").await;
    let selector = unique("leader");
    let calls = |who: &str| {
        lab.dir
            .join("logs")
            .join(format!("rbd-calls-{selector}-{who}.log"))
    };
    let replica = |who: &str| {
        let log = calls(who);
        start_controller(
            &selector,
            &[&Logged::env(&log)[..], &replica_env(&ns, who)[..]].concat(),
        )
    };
    // Both replicas log into one file (named by selector): who leads is
    // read from the Lease itself.
    let holder = || lease_holder(&client, &ns);
    let mut leader = replica("first");
    wait_for(60, "the first replica to lead", || async {
        (holder().await? == "first").then_some(())
    })
    .await;
    let _standby = replica("second");
    // A guarded promote on site-b while site-a is still primary: it waits.
    let img = waiting_promote(&client, &ns, &selector, "promote", "site-b", 0).await;
    let runs = customruns(&client, &ns);

    signal(leader.child.id(), "STOP");
    let paused_at = Instant::now();
    lab.a
        .rbd_ok(&["mirror", "image", "demote", &format!("{}/{img}", lab.pool)]);
    let done = wait_done(&client, &ns, "promote", 180).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
    assert_eq!(
        holder().await.as_deref(),
        Some("second"),
        "the standby took the lease"
    );
    // Keep the old leader paused for two lease durations (30 s each) in all.
    let lease_x2 = Duration::from_secs(60);
    if let Some(rest) = lease_x2.checked_sub(paused_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let version = done.metadata.resource_version.clone();
    let before = rbd_calls(&calls("first")).len();

    signal(leader.child.id(), "CONT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let exited = loop {
        if let Some(status) = leader.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader did not exit within 60 s of waking"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !exited.success(),
        "it exits with the lost lease as its error"
    );
    let after = rbd_calls(&calls("first"));
    let mutating: Vec<_> = after[before..]
        .iter()
        .filter(|(_, _, a)| a.contains("promote") || a.contains("demote"))
        .collect();
    assert!(
        mutating.is_empty(),
        "the old leader made a mutating call after waking: {mutating:?}"
    );
    assert!(
        !after
            .iter()
            .any(|(_, _, a)| a.starts_with("mirror image promote")),
        "the old leader never promoted: {after:?}"
    );
    let now = runs.get("promote").await.unwrap();
    assert_eq!(
        now.metadata.resource_version, version,
        "the old leader wrote nothing into the finished run"
    );
    assert_eq!(holder().await.as_deref(), Some("second"));
}

/// C4: the resyncing site's rbd-mirror is SIGKILLed while the image is
/// being re-created and synced, and started again 10 s later: the resync
/// completes, and it was issued exactly once (I2).
#[tokio::test]
async fn a_resync_survives_its_rbd_mirror_killed_mid_sync() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ctl = logged_controller("c4");
    let ns = run_namespace(&client, "fault-c4").await;
    let img = unique("c4");
    let spec = format!("{}/{img}", lab.pool);
    // Data to sync, so that the sync takes longer than the kill.
    lab.a.rbd_ok(&["create", "--size", "256M", &spec]);
    lab.a.rbd_ok(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4M",
        "--io-total",
        "256M",
        &spec,
    ]);
    lab.a
        .rbd_ok(&["mirror", "image", "enable", &spec, "snapshot"]);
    wait_for(120, "the image replaying on site-b", || async {
        (lab.b.mirror_state(&lab.pool, &img).as_deref() == Some("up+replaying")).then_some(())
    })
    .await;
    let id = |site: &common::Site| site.json(&["info", &spec]).map(|v| v["id"].clone());
    let id_before = id(&lab.b).expect("site-b's image id");
    RunBuilder::new(&ctl.selector)
        .param("action", "resync")
        .param("cluster", "site-b")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .timeout("10m")
        .create(&client, &ns, "resync")
        .await;
    ctl.wait_call(&img, "mirror image resync", 60).await;
    // Kill once site-b's rbd-mirror has taken the resync up (the old image
    // deleted, the new one being created and synced), not before, which
    // would prove nothing. (A 256 MiB snapshot image never showed
    // `up+syncing` here: its status is unreadable until it replays.)
    let state_at_kill = wait_for(30, "site-b's rbd-mirror to take the resync up", || async {
        let state = lab.b.mirror_state(&lab.pool, &img);
        let taken_up =
            state.as_deref() != Some("up+replaying") || id(&lab.b) != Some(id_before.clone());
        taken_up.then_some(state)
    })
    .await;
    let pid = std::fs::read_to_string(lab.dir.join("pids/ceph-b-rbd-mirror.pid")).unwrap();
    signal(pid.trim().parse().unwrap(), "KILL");
    eprintln!("site-b's image at the kill: {state_at_kill:?}");
    // The fault's length, not a wait for a condition: the daemon stays down.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let running = customruns(&client, &ns).get("resync").await.unwrap();
    assert_eq!(
        condition(&running).map(|c| c.0).as_deref(),
        Some("Unknown"),
        "the step waits while rbd-mirror is down"
    );
    lab_cmd(&["start", "site-b", "rbd-mirror"]);

    let done = wait_done(&client, &ns, "resync", 300).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(result(&done, "outcomes").unwrap()[&spec], "resynced");
    let resyncs = ctl.count(&img, "mirror image resync");
    assert_eq!(resyncs, 1, "the resync was issued exactly once");
    assert_ne!(id(&lab.b), Some(id_before), "site-b's image was re-created");
    wait_for(120, "site-b replaying the resynced image", || async {
        (lab.b.mirror_state(&lab.pool, &img).as_deref() == Some("up+replaying")).then_some(())
    })
    .await;
}

/// Starts a stopped daemon of a site again even when the test panics.
struct StartOnDrop(&'static str, &'static str);
impl Drop for StartOnDrop {
    fn drop(&mut self) {
        lab_cmd(&["start", self.0, self.1]);
    }
}

/// C3b: site-b's rbd-mirror is stopped for good after site-a's demotion.
/// The guarded promote on site-b can never be proven: it ends at its
/// timeout, and the message names the daemon to look at, not a bare
/// timeout. Nothing is promoted.
#[tokio::test]
async fn a_promote_whose_rbd_mirror_never_returns_times_out_naming_the_daemon() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-c3b").await;
    let ctl = logged_controller("c3b");
    let img = unique("c3b");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let _start = StartOnDrop("site-b", "rbd-mirror");
    lab_cmd(&["stop", "site-b", "rbd-mirror"]);
    lab.a
        .rbd_ok(&["mirror", "image", "demote", &format!("{}/{img}", lab.pool)]);
    RunBuilder::one(&ctl.selector, "promote", "site-b", &img)
        .param("peerCluster", "site-a")
        .timeout("40s")
        .create(&client, &ns, "promote")
        .await;
    let done = wait_done(&client, &ns, "promote", 120).await;
    let (status, reason, message) = condition(&done).unwrap();
    eprintln!("C3b: {status} {reason}: {message}");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CustomRunTimedOut")
    );
    assert!(
        message.contains("rbd-mirror on site-b is not reporting"),
        "the message names the daemon: {message}"
    );
    assert_eq!(ctl.count(&img, "mirror image promote"), 0);
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
}

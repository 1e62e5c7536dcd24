//! Faults of the control plane under a running step: a hung API server or
//! etcd (B1, B3), a lease that cannot be renewed (A8), a dead Tekton
//! controller (D1).

use super::*;

/// Resumes a paused control-plane daemon even when the test panics.
struct ResumeOnDrop(&'static str);
impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        lab_cmd(&["resume", self.0]);
    }
}

/// Demotes site-a's image by hand and waits until site-b's rbd-mirror has
/// seen the demotion: from then on the guarded promote may go ahead.
async fn demote_and_wait_arrival(img: &str) {
    let lab = lab();
    let spec = format!("{}/{img}", lab.pool);
    lab.a.rbd_ok(&["mirror", "image", "demote", &spec]);
    wait_for(60, "site-b to see site-a's demotion", || async {
        let s = lab.b.json(&["mirror", "image", "status", &spec])?;
        let d = s["description"].as_str()?;
        (d.contains("demoted") || d.contains("not primary")).then_some(())
    })
    .await;
}

/// B1 (API server) and B3 (etcd): the part hangs (SIGSTOP) while a guarded
/// promote waits, and the demotion arrives meanwhile, so the step decides
/// to promote (M1) while its intent cannot be written. No promote may start
/// before the part is back; then the intent is written, the promote runs
/// once and the run succeeds, the controller alive throughout.
async fn hung_part_holds_the_promote_until_its_intent_is_written(part: &'static str, secs: u64) {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, &format!("fault-{part}")).await;
    let mut ctl = logged_controller(part);
    let img = waiting_promote(&client, &ns, &ctl.selector, "promote", "site-b", 0).await;
    let resume = ResumeOnDrop(part);
    lab_cmd(&["pause", part]);
    let paused = Instant::now();
    demote_and_wait_arrival(&img).await;
    let arrived = paused.elapsed();
    // The step polls site-b while the part is paused, sees the demotion
    // and wants to promote: it is held at its intent.
    let hold = Duration::from_secs(secs);
    wait_for(secs + 30, "the pause to last", || async {
        (paused.elapsed() >= hold).then_some(())
    })
    .await;
    let reads_during = ctl
        .calls(&img)
        .iter()
        .filter(|(_, a)| a.contains("mirror image status") || a.contains("info"))
        .count();
    let promotes_during = ctl.count(&img, "mirror image promote");
    let resumed_at = now_ns();
    drop(resume);
    eprintln!(
        "{part} paused {:?}; the demotion reached site-b after {arrived:?}",
        paused.elapsed()
    );
    assert_eq!(
        promotes_during, 0,
        "a promote started while {part} was paused (its intent was not written)"
    );
    assert!(
        reads_during > 0,
        "the step did not poll Ceph during the pause"
    );
    assert!(
        ctl.proc.child.try_wait().unwrap().is_none(),
        "the controller exited during the {part} pause"
    );
    let done = wait_done(&client, &ns, "promote", 180).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
    let promotes = ctl.calls(&img);
    let promotes: Vec<_> = promotes
        .iter()
        .filter(|(_, a)| a.contains("mirror image promote"))
        .collect();
    // One took effect; one before it may have been refused and retried
    // (EROFS while the demotion snapshot still syncs); none before resume.
    assert_eq!(
        ctl.count_ok(&img, "mirror image promote"),
        1,
        "{promotes:?}"
    );
    assert!(
        promotes.iter().all(|(at, _)| *at >= resumed_at),
        "a promote started before {part} was resumed: {promotes:?}"
    );
    assert!(ctl.proc.child.try_wait().unwrap().is_none());
}

/// faults.md B1: the API server paused 30 s at M1.
#[tokio::test]
async fn a_hung_api_server_holds_the_promote_until_its_intent_is_written() {
    hung_part_holds_the_promote_until_its_intent_is_written("apiserver", 30).await;
}

/// faults.md B3: etcd paused 20 s while the step waits and decides.
#[tokio::test]
async fn a_hung_etcd_holds_the_promote_until_its_intent_is_written() {
    hung_part_holds_the_promote_until_its_intent_is_written("etcd", 20).await;
}

/// faults.md A8: a leader whose lease cannot be renewed (API server paused
/// for two lease durations) either exits or leads again and serves; it is
/// never alive and idle.
#[tokio::test]
async fn a_leader_cut_from_the_api_server_exits_or_leads_again() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-a8").await;
    let selector = unique("a8");
    let mut ctl = start_controller(&selector, &replica_env(&ns, "only"));
    let holder = || lease_holder(&client, &ns);
    wait_for(60, "the replica to lead", || async {
        (holder().await? == "only").then_some(())
    })
    .await;
    {
        let _resume = ResumeOnDrop("apiserver");
        lab_cmd(&["pause", "apiserver"]);
        // Two lease durations (30 s each): the renewal fails meanwhile.
        let t = Instant::now();
        wait_for(90, "two lease durations to pass", || async {
            (t.elapsed() >= Duration::from_secs(60)).then_some(())
        })
        .await;
    }
    let img = unique("a8");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let status = |name: &str| {
        let name = name.to_string();
        let (client, ns, selector, img) =
            (client.clone(), ns.clone(), selector.clone(), img.clone());
        async move {
            RunBuilder::one(&selector, "status", "site-b", &img)
                .create(&client, &ns, &name)
                .await;
        }
    };
    status("after").await;
    // Alive means serving: the run ends within a minute. Exited is the
    // other allowed answer (the Deployment restarts it); then the run waits
    // for that restart, which the next replica provides here.
    let runs = customruns(&client, &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        if let Some(code) = ctl.child.try_wait().unwrap() {
            break format!("exited ({code})");
        }
        if let Ok(r) = runs.get("after").await
            && condition(&r).is_some_and(|(s, _, _)| s != "Unknown")
        {
            assert_condition(&r, "True", "Succeeded");
            assert_eq!(holder().await.as_deref(), Some("only"));
            break "leads again and served a new run".to_string();
        }
        assert!(
            Instant::now() < deadline,
            "alive and idle: the controller neither exited nor served a run within 60 s of the API server's return"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("A8: {outcome}");
    if outcome.starts_with("exited") {
        // What the Deployment does next: a new replica leads and serves.
        let _next = start_controller(&selector, &replica_env(&ns, "next"));
        let done = wait_done(&client, &ns, "after", 120).await;
        assert_condition(&done, "True", "Succeeded");
    }
}

/// faults.md D1: the Tekton controller is killed for 30 s while a
/// pipeline's custom task waits. This controller finishes the CustomRun
/// meanwhile; the PipelineRun advances once Tekton is back.
#[tokio::test]
async fn a_dead_tekton_controller_delays_the_pipeline_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-d1").await;
    let ctl = logged_controller("d1");
    let img = unique("d1");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let task = |name: &str, action: &str, after: &[&str]| {
        json!({
            "name": name,
            "runAfter": after,
            "taskRef": {"apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep"},
            "params": [
                {"name": "action", "value": action},
                {"name": "cluster", "value": "site-b"},
                {"name": "peerCluster", "value": "site-a"},
                {"name": "pool", "value": lab.pool},
                {"name": "images", "value": [img]},
            ],
        })
    };
    let pr: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": "failover", "labels": {"rbdmirror.dev/test": ctl.selector}},
        "spec": {"pipelineSpec": {"tasks": [
            task("promote", "promote", &[]),
            task("check", "status", &["promote"]),
        ]}},
    }))
    .unwrap();
    let prs = common::pipelines::api(&client, &ns, "PipelineRun", "pipelineruns");
    prs.create(&Default::default(), &pr).await.unwrap();
    let runs = customruns(&client, &ns);
    let promote_run = wait_for(60, "the promote's CustomRun to wait", || async {
        let list = runs.list(&Default::default()).await.ok()?;
        let r = list.items.into_iter().find(|r| {
            r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("tekton.dev/pipelineTask"))
                == Some(&"promote".to_string())
        })?;
        let (_, _, m) = condition(&r)?;
        m.contains("waiting").then_some(r.metadata.name.unwrap())
    })
    .await;

    lab_cmd(&["kill", "tekton"]);
    let killed = Instant::now();
    let restart = RestartOnDrop("tekton");
    lab.a
        .rbd_ok(&["mirror", "image", "demote", &format!("{}/{img}", lab.pool)]);
    // Our controller finishes the CustomRun without Tekton.
    let done = wait_done(&client, &ns, &promote_run, 25).await;
    assert_condition(&done, "True", "Succeeded");
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the CustomRun ended while Tekton was down"
    );
    let stuck = prs.get("failover").await.unwrap();
    assert_eq!(
        condition(&stuck).map(|c| c.0).as_deref(),
        Some("Unknown"),
        "the PipelineRun cannot advance without Tekton"
    );
    wait_for(40, "Tekton to stay down 30 s", || async {
        (killed.elapsed() >= Duration::from_secs(30)).then_some(())
    })
    .await;
    drop(restart);
    let pr = common::pipelines::wait_pipeline(&client, &ns, "failover", 120).await;
    assert_condition(&pr, "True", "Succeeded");
    // One promote took effect; one before it may have been refused and
    // retried (EROFS while the demotion snapshot still syncs).
    assert_eq!(ctl.count_ok(&img, "mirror image promote"), 1);
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
}

/// Starts a killed control-plane daemon again even when the test panics.
struct RestartOnDrop(&'static str);
impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        lab_cmd(&["restart", self.0]);
    }
}

/// faults.md B4: the controller's watch expires (410 Gone). The controller
/// is SIGSTOPped with its watch open; runs it does not serve move the
/// resourceVersion on; etcd is compacted up to now and the API server
/// restarts, so neither holds the version the controller last saw. Woken, the controller's watch
/// resumes from that version and gets 410: it relists (no error loop: a
/// handful of watch errors, not one every backoff), and a new run is
/// picked up within 10 s.
#[tokio::test]
async fn an_expired_watch_is_relisted_without_an_error_loop() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-b4").await;
    let mut ctl = logged_controller("b4");
    let img = unique("b4");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let status = |name: &str, selector: &str| {
        let (name, selector) = (name.to_string(), selector.to_string());
        let (client, ns, img) = (client.clone(), ns.clone(), img.clone());
        async move {
            RunBuilder::one(&selector, "status", "site-b", &img)
                .create(&client, &ns, &name)
                .await;
        }
    };
    status("before", &ctl.selector).await;
    assert_condition(
        &wait_done(&client, &ns, "before", 60).await,
        "True",
        "Succeeded",
    );

    let pid = ctl.proc.child.id();
    signal(pid, "STOP");
    // Writes the controller does not see (another selector's runs).
    let other = unique("b4-other");
    for i in 0..20 {
        status(&format!("other-{i}"), &other).await;
    }
    lab_cmd(&["compact"]);
    lab_cmd(&["restart", "apiserver"]);
    let said_before = std::fs::read_to_string(&ctl.proc.log).unwrap().len();
    signal(pid, "CONT");
    let woke = Instant::now();

    status("after", &ctl.selector).await;
    let done = wait_done(&client, &ns, "after", 60).await;
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
    eprintln!(
        "B4: picked up {took:#} after creation, {:?} after waking",
        woke.elapsed()
    );
    assert!(
        took <= jiff::SignedDuration::from_secs(10),
        "picked up {took:#} late"
    );
    // Leave time for a loop to show, then count the watch errors.
    wait_for(30, "20 s after waking", || async {
        (woke.elapsed() >= Duration::from_secs(20)).then_some(())
    })
    .await;
    let said = std::fs::read_to_string(&ctl.proc.log).unwrap();
    let after = &said[said_before..];
    let expired = after
        .lines()
        .filter(|l| {
            l.contains("410") || l.contains("too old resource version") || l.contains("Expired")
        })
        .count();
    let errors = after
        .lines()
        .filter(|l| l.contains("controller stream"))
        .count();
    eprintln!("B4: {expired} lines name the expiry, {errors} watch errors in 20 s");
    assert!(
        expired > 0,
        "the watch never expired: the fault did not happen"
    );
    assert!(errors <= 10, "{errors} watch errors in 20 s: an error loop");
    assert!(
        ctl.proc.child.try_wait().unwrap().is_none(),
        "the controller exited"
    );
}

//! The controller's safety rules against the lab: a deleted run's task stops
//! and never writes into a new run of its name; messages are bounded; an
//! unreadable resume record ends the run; events are published per run.

mod common;

use common::runs::*;
use common::{client, lab, mirrored_image, unique, wait_for};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;

const SEL: &str = "safety";

fn run() -> RunBuilder {
    RunBuilder::new(shared_controller(SEL).as_str())
}

#[tokio::test]
async fn a_deleted_runs_task_stops_and_a_new_run_of_its_name_gets_its_own() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "safe-del").await;
    let img = unique("del");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    // A promote that waits (the peer is still primary) until its 60 min deadline.
    run()
        .param("action", "promote")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "r")
        .await;
    let first = wait_message(&client, &ns, "r", "still primary", 60).await;
    customruns(&client, &ns)
        .delete("r", &DeleteParams::default())
        .await
        .expect("delete the run");
    wait_for(30, "the first run to be gone", || async {
        match customruns(&client, &ns).get_opt("r").await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await;
    // The re-run: same name, same image. It needs the image lock the first
    // run's task held, and a task of its own.
    run()
        .param("action", "status")
        .param("cluster", "site-b")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "r")
        .await;
    let done = wait_done(&client, &ns, "r", 60).await;
    assert_ne!(done.metadata.uid, first.metadata.uid);
    assert_condition(&done, "True", "Succeeded");
    let key = format!("{}/{img}", lab.pool);
    assert_eq!(result(&done, "outcomes").unwrap()[&key], "checked");
    let (_, _, message) = condition(&done).unwrap();
    assert!(message.starts_with("checked"), "{message}");
    assert_eq!(
        done.data["status"]["extraFields"]["step"]["action"], "status",
        "the deleted run's task wrote into its successor"
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
}

#[tokio::test]
async fn a_huge_param_fails_the_run_with_a_bounded_message() {
    let client = client().await;
    let ns = run_namespace(&client, "safe-big").await;
    // Large enough that echoing it into the status exceeds etcd's limit.
    let huge = "x".repeat(900 * 1024);
    run()
        .param("action", huge.as_str())
        .param("cluster", "site-b")
        .param("pool", "replicapool")
        .param("images", json!(["a"]))
        .create(&client, &ns, "big")
        .await;
    let done = wait_done(&client, &ns, "big", 30).await;
    assert_condition(&done, "False", "InvalidParams");
    let (_, _, message) = condition(&done).unwrap();
    assert!(message.len() <= 1024, "{} bytes", message.len());
    assert!(message.starts_with("unknown action"), "{message}");
}

/// A run that is already started when this controller first sees it, with
/// `extraFields` as given: what a restarted controller resumes.
async fn started_run(client: &kube::Client, ns: &str, name: &str, extra: serde_json::Value) {
    let mut b = RunBuilder::new("not-yet");
    b.params = vec![json!({"name": "action", "value": "status"})];
    b.create(client, ns, name).await;
    let api: Api<DynamicObject> = customruns(client, ns);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "startTime": now,
            "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running",
                             "lastTransitionTime": now}],
            "extraFields": extra,
        }})),
    )
    .await
    .expect("write the status of a started run");
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"labels": {"rbdmirror.dev/test": shared_controller(SEL)}}}),
        ),
    )
    .await
    .expect("hand the run to the controller");
}

#[tokio::test]
async fn an_edited_resume_record_ends_the_run_and_the_controller_keeps_serving() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "safe-resume").await;
    let step = |image: &str| {
        json!({"action": "status", "cluster": "site-b", "concurrency": 8, "force": false,
               "pool": lab.pool, "selection": {"images": [image]}})
    };
    started_run(
        &client,
        &ns,
        "edited",
        json!({"version": 2, "step": step("replicapool/--not an image"), "progress": {}}),
    )
    .await;
    let done = wait_done(&client, &ns, "edited", 30).await;
    assert_condition(&done, "False", "InternalError");
    // A record of the last release (no version field) still resumes.
    let img = unique("v1");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    started_run(
        &client,
        &ns,
        "v1",
        json!({"step": step(&format!("{}/{img}", lab.pool)), "progress": {"done": {}}}),
    )
    .await;
    let done = wait_done(&client, &ns, "v1", 60).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(done.data["status"]["extraFields"]["version"], 2);
}

#[tokio::test]
async fn events_are_published_for_the_run() {
    use k8s_openapi::api::events::v1::Event;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "safe-ev").await;
    let img = unique("ev");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    run()
        .param("action", "status")
        .param("cluster", "site-b")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "ok")
        .await;
    run()
        .param("action", "status")
        .param("cluster", "site-c")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "bad")
        .await;
    let ok = wait_done(&client, &ns, "ok", 60).await;
    wait_done(&client, &ns, "bad", 60).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let of = |run: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            let mut found: Vec<(String, String)> = list
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(run))
                .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
                .collect();
            found.sort();
            Some(found)
        }
    };
    wait_for(30, "Started and Succeeded events of the run", || async {
        let found = of("ok").await?;
        (found
            == vec![
                ("Normal".to_string(), "Started".to_string()),
                ("Normal".to_string(), "Succeeded".to_string()),
            ])
        .then_some(())
    })
    .await;
    wait_for(30, "a Failed event of the failed run", || async {
        let found = of("bad").await?;
        found
            .contains(&("Warning".to_string(), "Failed".to_string()))
            .then_some(())
    })
    .await;
    let uid = ok.metadata.uid.clone();
    let list = events.list(&Default::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("ok"))
            .all(|e| e.regarding.as_ref().unwrap().uid == uid),
        "events name the run by its UID"
    );
}

/// E1: a key (raw and base64) appears in no artefact of the controller: its
/// log at debug level, the argv of every `rbd` it ran, the runs' status
/// (messages, results) and the events. One Secret holds the lab's real key,
/// another a key Ceph cannot parse, which Ceph's parser echoes.
#[tokio::test]
async fn no_key_reaches_a_log_an_argv_a_status_or_an_event() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::events::v1::Event;
    use kube::api::PostParams;
    let (client, lab) = (client().await, lab());
    let ctl = logged_controller("e1");
    let (selector, calls) = (ctl.selector.clone(), ctl.calls.clone());
    let ns = run_namespace(&client, "safe-e1").await;
    let real_key = std::fs::read_to_string(&lab.a.keyring)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("key = ").map(str::to_string))
        .expect("a key line in the lab's keyring");
    // Ceph's keyring parser echoes a value it cannot decode ("val=…"), up
    // to a '#' (a comment): none here, so all of it would be echoed.
    let bad_key = format!("AQBnot!base64!{}", unique("k").replace('-', "x"));
    let mon = std::fs::read_to_string(&lab.a.conf)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("mon host = ").map(str::to_string))
        .expect("mon host in the lab's ceph.conf");
    // The fault is real: given this key, rbd itself prints it.
    let dir = lab.dir.join("controller-tmp").join(&selector).join("echo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ceph.conf"),
        format!("[global]\nmon host = {mon}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("keyring"),
        format!("[client.{}]\n\tkey = {bad_key}\n", lab.a.user),
    )
    .unwrap();
    let echo = std::process::Command::new(common::client_rbd())
        .arg("-c")
        .arg(dir.join("ceph.conf"))
        .arg("--keyring")
        .arg(dir.join("keyring"))
        .args([
            "--id",
            &lab.a.user,
            "--client_mount_timeout",
            "10",
            "ls",
            &lab.pool,
        ])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        String::from_utf8_lossy(&echo.stderr).contains(&bad_key),
        "rbd echoes a key it cannot parse: {}",
        String::from_utf8_lossy(&echo.stderr)
    );
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bad-key", "labels": {"rbdmirror.dev/ceph-connection": "true"}},
        "stringData": {"monHost": mon, "userID": lab.a.user, "userKey": bad_key},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let img = unique("e1");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    for (name, cluster) in [("real", "site-a"), ("bad", "bad-key")] {
        RunBuilder::new(&selector)
            .param("action", "status")
            .param("cluster", cluster)
            .param("peerCluster", "site-b")
            .param("pool", lab.pool.as_str())
            .param("images", json!([img]))
            .retries(1)
            .create(&client, &ns, name)
            .await;
    }
    assert_condition(
        &wait_done(&client, &ns, "real", 60).await,
        "True",
        "Succeeded",
    );
    let bad = wait_done(&client, &ns, "bad", 90).await;
    let (s, reason, m) = condition(&bad).unwrap();
    assert_eq!(
        (s.as_str(), reason.as_str()),
        ("False", "InvalidSecret"),
        "{m}"
    );
    assert!(
        m.contains("\"bad-key\"") && m.contains("not a cephx key"),
        "the message names the Secret and what to put in it: {m}"
    );

    let runs = customruns(&client, &ns)
        .list(&Default::default())
        .await
        .unwrap();
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap();
    let log = ctl.proc.log.clone();
    drop(ctl);
    let artefacts = [
        ("controller log", std::fs::read_to_string(&log).unwrap()),
        ("rbd argv", std::fs::read_to_string(&calls).unwrap()),
        ("runs", serde_json::to_string(&runs).unwrap()),
        ("events", serde_json::to_string(&events).unwrap()),
    ];
    assert!(
        artefacts[1].1.contains("status"),
        "the call log holds the rbd calls: {}",
        artefacts[1].1
    );
    for key in [&real_key, &bad_key] {
        let b64 = serde_json::to_string(&ByteString(key.as_bytes().to_vec())).unwrap();
        let b64 = b64.trim_matches('"');
        for (what, text) in &artefacts {
            assert!(!text.contains(key.as_str()), "a key in the {what}");
            assert!(!text.contains(b64), "a base64 key in the {what}");
        }
    }
}

/// faults.md E4: the client every lab test's controller connects with (the
/// lab's `client.rbdstep`, the README's least-privilege caps) may not read
/// the cluster's keys: `ceph auth ls` is refused with EACCES on both sites.
#[tokio::test]
async fn the_least_privilege_client_is_refused_the_cluster_keys() {
    let lab = lab();
    for site in [&lab.a, &lab.b] {
        let out = std::process::Command::new(common::client_ceph())
            .arg("-c")
            .arg(&site.conf)
            .arg("--keyring")
            .arg(&site.keyring)
            .args(["--id", &site.user, "--connect-timeout", "15", "auth", "ls"])
            .output()
            .expect("ceph runs");
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(13), "{}: {said}", site.name);
        assert!(said.contains("EACCES"), "{}: {said}", site.name);
        assert!(out.stdout.is_empty(), "{}: keys were listed", site.name);
    }
}

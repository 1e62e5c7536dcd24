//! The controller against the lab: CustomRuns created directly (as Tekton
//! would), one controller process shared by these tests, real Ceph sites.

mod common;

use std::time::Duration;

use common::runs::*;
use common::{client, lab, mirrored_image, namespace, unique, wait_for};
use serde_json::json;

const SEL: &str = "controller";

fn run() -> RunBuilder {
    RunBuilder::new(shared_controller(SEL).as_str())
}

#[tokio::test]
async fn status_reports_role_state_and_results() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-status").await;
    let img = unique("st");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    run()
        .param("action", "status")
        .param("cluster", "site-b")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "st")
        .await;
    let done = wait_done(&client, &ns, "st", 60).await;
    assert_condition(&done, "True", "Succeeded");
    let key = format!("{}/{img}", lab.pool);
    assert_eq!(result(&done, "images").unwrap(), json!([key]));
    assert_eq!(result(&done, "outcomes").unwrap()[&key], "checked");
    let state = &result(&done, "states").unwrap()[&key];
    assert_eq!(state["role"], "non-primary");
    assert_eq!(state["state"], "up+replaying");
    assert!(result(&done, "duration").is_some());
    assert!(done.data["status"]["completionTime"].is_string());
    assert!(done.data["status"]["startTime"].is_string());
}

#[tokio::test]
async fn planned_failover_demotes_promotes_and_old_primary_replays() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-failover").await;
    let imgs: Vec<String> = (0..3).map(|_| unique("fo")).collect();
    for i in &imgs {
        mirrored_image(&lab.a, &lab.b, &lab.pool, i).await;
    }
    let step = |action: &str, cluster: &str| {
        run()
            .param("action", action)
            .param("cluster", cluster)
            .param("pool", lab.pool.as_str())
            .param("images", json!(imgs))
    };
    step("demote", "site-a")
        .create(&client, &ns, "demote")
        .await;
    let demoted = wait_done(&client, &ns, "demote", 90).await;
    assert_condition(&demoted, "True", "Succeeded");
    // The next step takes the previous step's `images` result, as a pipeline would.
    let images = demoted.data["status"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "images")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    run()
        .param("action", "promote")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", images.as_str())
        .create(&client, &ns, "promote")
        .await;
    let promoted = wait_done(&client, &ns, "promote", 120).await;
    assert_condition(&promoted, "True", "Succeeded");
    for i in &imgs {
        let key = format!("{}/{i}", lab.pool);
        assert_eq!(result(&demoted, "outcomes").unwrap()[&key], "demoted");
        assert_eq!(result(&promoted, "outcomes").unwrap()[&key], "promoted");
        assert_eq!(lab.b.is_primary(&lab.pool, i), Some(true));
        assert_eq!(lab.a.is_primary(&lab.pool, i), Some(false));
    }
    step("status", "site-a")
        .param("waitFor", "replaying")
        .create(&client, &ns, "replaying")
        .await;
    let replaying = wait_done(&client, &ns, "replaying", 120).await;
    assert_condition(&replaying, "True", "Succeeded");
    for i in &imgs {
        let key = format!("{}/{i}", lab.pool);
        assert_eq!(
            result(&replaying, "states").unwrap()[&key]["state"],
            "up+replaying"
        );
    }
    // Re-running a step is safe: the images are already in the state.
    step("demote", "site-a")
        .create(&client, &ns, "demote-again")
        .await;
    let again = wait_done(&client, &ns, "demote-again", 60).await;
    assert_condition(&again, "True", "Succeeded");
    assert_eq!(
        result(&again, "outcomes").unwrap()[format!("{}/{}", lab.pool, imgs[0])],
        "already-non-primary"
    );
    step("promote", "site-b")
        .create(&client, &ns, "promote-again")
        .await;
    let again = wait_done(&client, &ns, "promote-again", 60).await;
    assert_condition(&again, "True", "Succeeded");
    assert_eq!(
        result(&again, "outcomes").unwrap()[format!("{}/{}", lab.pool, imgs[0])],
        "already-primary"
    );
}

#[tokio::test]
async fn promote_waits_while_the_peer_is_primary_and_succeeds_once_it_demotes() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-wait").await;
    let img = unique("wait");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    run()
        .param("action", "promote")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "promote")
        .await;
    let waiting = wait_message(&client, &ns, "promote", "still primary", 60).await;
    assert_eq!(condition(&waiting).unwrap().0, "Unknown");
    assert_eq!(
        lab.b.is_primary(&lab.pool, &img),
        Some(false),
        "nothing promoted while site-a is primary"
    );
    lab.a
        .rbd_ok(&["mirror", "image", "demote", &format!("{}/{img}", lab.pool)]);
    let done = wait_done(&client, &ns, "promote", 90).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
}

#[tokio::test]
async fn cancel_stops_a_waiting_promote_at_once() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-cancel").await;
    let img = unique("cancel");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    run()
        .param("action", "promote")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "promote")
        .await;
    wait_message(&client, &ns, "promote", "still primary", 60).await;
    let t0 = std::time::Instant::now();
    cancel(&client, &ns, "promote").await;
    let done = wait_done(&client, &ns, "promote", 30).await;
    assert_condition(&done, "False", "CustomRunCancelled");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        t0.elapsed()
    );
    assert!(
        result(&done, "images").is_some(),
        "per-image state is reported on cancel"
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
    // A finished run is never moved back.
    let before = condition(&done).unwrap();
    customruns(&client, &ns)
        .patch(
            "promote",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    // An absence has no event to wait for: give the controller a window
    // (four times its 0.5 s polling) in which it would have rewritten it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = customruns(&client, &ns).get("promote").await.unwrap();
    assert_eq!(condition(&after).unwrap(), before);
}

#[tokio::test]
async fn timed_out_attempts_are_archived_then_the_run_times_out() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-timeout").await;
    let img = unique("to");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    // site-a stays primary, so a planned promote on site-b can only wait.
    run()
        .param("action", "promote")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .retries(1)
        .timeout("4s")
        .create(&client, &ns, "promote")
        .await;
    let done = wait_done(&client, &ns, "promote", 60).await;
    assert_condition(&done, "False", "CustomRunTimedOut");
    let attempts = done.data["status"]["retriesStatus"]
        .as_array()
        .expect("retriesStatus");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["conditions"][0]["reason"], "CustomRunTimedOut");
    assert_eq!(attempts[0]["conditions"][0]["status"], "False");
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
}

#[tokio::test]
async fn two_runs_on_one_image_are_serialised_across_namespaces_and_secrets() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-serial").await;
    // The second run comes from another namespace, through its own Secret
    // of the same cluster, which names the monitor differently (by host
    // name, msgr v1 only): no monitor address is shared, so only the
    // cluster's fsid tells the controller it is the same image.
    let ns2 = namespace(&client, "ctl-serial2").await;
    connection_secret(&client, &ns2, "site-a", &lab.a).await;
    let conf = std::fs::read_to_string(&lab.b.conf).unwrap();
    let v1 = conf
        .split(&format!("v1:{}:", lab.ip))
        .nth(1)
        .and_then(|r| r.split([']', ',', '/']).next())
        .expect("the lab's site-b conf names a v1 monitor address");
    connection_secret_conf(
        &client,
        &ns2,
        "site-b",
        &lab.b,
        format!("[global]\nmon host = {}:{v1}\n", lab.hostname),
    )
    .await;
    allow_secrets(&client, &ns2).await;
    let img = unique("ser");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let promote = run()
        .param("action", "promote")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]));
    promote.create(&client, &ns, "first").await;
    wait_message(&client, &ns, "first", "still primary", 60).await;
    promote.create(&client, &ns2, "second").await;
    let second = wait_message(&client, &ns2, "second", "waiting for run", 30).await;
    let msg = condition(&second).unwrap().2;
    assert!(msg.contains(&format!("{ns}/first")), "{msg}");
    cancel(&client, &ns, "first").await;
    wait_done(&client, &ns, "first", 30).await;
    // Now the second takes the image and waits on Ceph itself.
    wait_message(&client, &ns2, "second", "still primary", 30).await;
    cancel(&client, &ns2, "second").await;
    assert_condition(
        &wait_done(&client, &ns2, "second", 30).await,
        "False",
        "CustomRunCancelled",
    );
}

#[tokio::test]
async fn resync_on_a_primary_is_refused_without_retries() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-resync").await;
    let img = unique("rs");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    run()
        .param("action", "resync")
        .param("cluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .retries(2)
        .create(&client, &ns, "resync")
        .await;
    let done = wait_done(&client, &ns, "resync", 60).await;
    assert_condition(&done, "False", "ResyncOnPrimary");
    assert!(
        done.data["status"]["retriesStatus"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    );
}

#[tokio::test]
async fn resync_copies_the_image_again_and_waits_until_it_replays() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-resync2").await;
    let img = unique("rs2");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let old_id = lab
        .b
        .json(&["info", &format!("{}/{img}", lab.pool)])
        .unwrap()["id"]
        .clone();
    run()
        .param("action", "resync")
        .param("cluster", "site-b")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "resync")
        .await;
    let done = wait_done(&client, &ns, "resync", 120).await;
    assert_condition(&done, "True", "Succeeded");
    let key = format!("{}/{img}", lab.pool);
    assert_eq!(result(&done, "outcomes").unwrap()[&key], "resynced");
    let new_id = lab.b.json(&["info", &key]).unwrap()["id"].clone();
    assert_ne!(old_id, new_id, "the image was copied again");
    let issued = &done.data["status"]["extraFields"]["progress"]["resyncIssued"][&key];
    assert_eq!(
        issued, &old_id,
        "the resync was recorded (write-ahead) with the old id"
    );
}

#[tokio::test]
async fn secrets_must_be_labelled_and_readable_by_the_runs_service_account() {
    let client = client().await;
    let lab = lab();
    let ns = common::namespace(&client, "ctl-secrets").await;
    // Readable by the controller, but not by the run's ServiceAccount.
    connection_secret(&client, &ns, "site-a", &lab.a).await;
    let status = |cluster: &str| {
        run()
            .param("action", "status")
            .param("cluster", cluster)
            .param("pool", lab.pool.as_str())
            .param("images", json!(["x"]))
    };
    status("site-a").create(&client, &ns, "no-access").await;
    let done = wait_done(&client, &ns, "no-access", 30).await;
    assert_condition(&done, "False", "Forbidden");
    assert!(
        condition(&done)
            .unwrap()
            .2
            .contains("may not get Secret site-a")
    );

    allow_secrets(&client, &ns).await;
    // An unlabelled Secret is not a Ceph connection.
    let plain: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
        json!({"metadata": {"name": "plain"}, "stringData": {"keyring": "x"}}),
    )
    .unwrap();
    kube::api::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &plain)
        .await
        .unwrap();
    status("plain").create(&client, &ns, "unlabelled").await;
    let done = wait_done(&client, &ns, "unlabelled", 30).await;
    assert_condition(&done, "False", "Forbidden");
    assert!(
        condition(&done)
            .unwrap()
            .2
            .contains("rbdmirror.dev/ceph-connection")
    );

    status("missing").create(&client, &ns, "missing").await;
    assert_condition(
        &wait_done(&client, &ns, "missing", 30).await,
        "False",
        "SecretNotFound",
    );
}

#[tokio::test]
async fn malformed_inputs_fail_with_a_reason_and_the_controller_keeps_serving() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-bad").await;
    let pool = lab.pool.as_str();
    let ok = || run().param("cluster", "site-a").param("pool", pool);
    let cases: Vec<(&str, RunBuilder, &str)> = vec![
        (
            "no-action",
            run()
                .param("cluster", "site-a")
                .param("pool", pool)
                .param("images", json!(["a"])),
            "InvalidParams",
        ),
        (
            "bad-action",
            ok().param("action", "failover")
                .param("images", json!(["a"])),
            "InvalidParams",
        ),
        (
            "no-cluster",
            run()
                .param("action", "status")
                .param("pool", pool)
                .param("images", json!(["a"])),
            "InvalidParams",
        ),
        (
            "empty-images",
            ok().param("action", "status").param("images", json!([])),
            "InvalidParams",
        ),
        ("no-images", ok().param("action", "status"), "InvalidParams"),
        (
            "bad-image",
            ok().param("action", "status")
                .param("images", json!(["a@snap"])),
            "InvalidParams",
        ),
        (
            "option-image",
            ok().param("action", "status")
                .param("images", json!(["--pool=x"])),
            "InvalidParams",
        ),
        (
            "shell-image",
            ok().param("action", "status")
                .param("images", json!(["a;rm -rf /"])),
            "InvalidParams",
        ),
        (
            "bad-pool",
            run()
                .param("action", "status")
                .param("cluster", "site-a")
                .param("pool", "-x")
                .param("images", json!(["a"])),
            "InvalidParams",
        ),
        (
            "bad-json",
            ok().param("action", "status").param("images", "[\"a\","),
            "InvalidParams",
        ),
        (
            "unknown-param",
            ok().param("action", "status")
                .param("images", json!(["a"]))
                .param("imgs", "x"),
            "InvalidParams",
        ),
        (
            "force-on-status",
            ok().param("action", "status")
                .param("images", json!(["a"]))
                .param("force", "true"),
            "InvalidParams",
        ),
        (
            "bad-force",
            ok().param("action", "promote")
                .param("images", json!(["a"]))
                .param("force", "yes"),
            "InvalidParams",
        ),
        (
            "waitfor-demote",
            ok().param("action", "demote")
                .param("images", json!(["a"]))
                .param("waitFor", "primary"),
            "InvalidParams",
        ),
        (
            "bad-waitfor",
            ok().param("action", "status")
                .param("images", json!(["a"]))
                .param("waitFor", "synced"),
            "InvalidParams",
        ),
        (
            "zero-concurrency",
            ok().param("action", "status")
                .param("images", json!(["a"]))
                .param("concurrency", "0"),
            "InvalidParams",
        ),
        (
            "same-peer",
            ok().param("action", "promote")
                .param("images", json!(["a"]))
                .param("peerCluster", "site-a"),
            "InvalidParams",
        ),
        (
            "bad-secret-name",
            run()
                .param("action", "status")
                .param("cluster", "Site_A")
                .param("pool", pool)
                .param("images", json!(["a"])),
            "InvalidParams",
        ),
        (
            "both-selections",
            ok().param("action", "status")
                .param("images", json!(["a"]))
                .param("allImages", "true"),
            "InvalidParams",
        ),
        (
            "action-array",
            ok().param("action", json!(["status"]))
                .param("images", json!(["a"])),
            "InvalidParams",
        ),
        (
            "bad-timeout",
            ok().param("action", "status")
                .param("images", json!(["a"]))
                .timeout("soon"),
            "InvalidParams",
        ),
        (
            "missing-image",
            ok().param("action", "status")
                .param("images", json!(["does-not-exist"])),
            "ImageNotFound",
        ),
        (
            "missing-secret",
            run()
                .param("action", "status")
                .param("cluster", "site-x")
                .param("pool", pool)
                .param("images", json!(["a"])),
            "SecretNotFound",
        ),
        (
            "missing-ref",
            {
                let mut b = ok().param("action", "status").param("images", json!(["a"]));
                b.custom_ref_name = Some("nope".into());
                b
            },
            "InvalidParams",
        ),
    ];
    assert!(cases.len() >= 20);
    for (name, b, _) in &cases {
        b.create(&client, &ns, name).await;
    }
    // A run with an unparsable spec (params not a list), created beside them.
    let mut raw = ok().body("raw");
    raw["spec"]["params"] = json!({"action": "status"});
    let raw_obj: kube::api::DynamicObject = serde_json::from_value(raw).unwrap();
    let raw_created = customruns(&client, &ns)
        .create(&Default::default(), &raw_obj)
        .await;
    for (name, _, reason) in &cases {
        let done = wait_done(&client, &ns, name, 60).await;
        let (s, r, m) = condition(&done).unwrap();
        assert_eq!((s.as_str(), r.as_str()), ("False", *reason), "{name}: {m}");
        assert!(!m.is_empty(), "{name} has a message");
        assert!(
            done.data["status"]["retriesStatus"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "{name} is not retried"
        );
    }
    if raw_created.is_ok() {
        assert_condition(
            &wait_done(&client, &ns, "raw", 30).await,
            "False",
            "InvalidParams",
        );
    }
    // These two would not pass Tekton's admission webhook (absent in the lab)
    // and break Tekton's own CustomRun informer: remove them for the
    // pipeline tests that share this API server.
    for poison in ["bad-timeout", "raw"] {
        let _ = customruns(&client, &ns)
            .delete(poison, &Default::default())
            .await;
    }
    // Still serving: a good run right after.
    let img = unique("after-bad");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    ok().param("action", "status")
        .param("images", json!([img]))
        .create(&client, &ns, "good")
        .await;
    assert_condition(
        &wait_done(&client, &ns, "good", 60).await,
        "True",
        "Succeeded",
    );
}

#[tokio::test]
async fn referenced_step_object_supplies_the_spec_and_params_override_it() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-ref").await;
    let img = unique("ref");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let step: rbd_mirror_step::api::RbdMirrorStep = serde_json::from_value(json!({
        "apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep",
        "metadata": {"name": "check-a"},
        "spec": {"action": "status", "cluster": "site-a", "pool": lab.pool, "images": ["not-this-one"]}
    }))
    .unwrap();
    // The smoke test installs the CRD; make sure it is there for this test too.
    install_crd(&client).await;
    let api: kube::api::Api<rbd_mirror_step::api::RbdMirrorStep> =
        kube::api::Api::namespaced(client.clone(), &ns);
    wait_for(30, "RbdMirrorStep create", || async {
        api.create(&Default::default(), &step).await.ok()
    })
    .await;
    let mut b = run().param("images", json!([img]));
    b.custom_ref_name = Some("check-a".into());
    b.create(&client, &ns, "by-ref").await;
    let done = wait_done(&client, &ns, "by-ref", 60).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(
        result(&done, "states").unwrap()[format!("{}/{img}", lab.pool)]["role"],
        "primary"
    );
    // An embedded spec works the same way.
    let mut e = run();
    e.custom_spec =
        Some(json!({"action": "status", "cluster": "site-b", "pool": lab.pool, "images": [img]}));
    e.create(&client, &ns, "embedded").await;
    let done = wait_done(&client, &ns, "embedded", 60).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(
        result(&done, "states").unwrap()[format!("{}/{img}", lab.pool)]["role"],
        "non-primary"
    );
}

async fn install_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    let crds: kube::api::Api<CustomResourceDefinition> = kube::api::Api::all(client.clone());
    crds.patch(
        "rbdmirrorsteps.rbdmirror.dev",
        &kube::api::PatchParams::apply("rbd-mirror-step-tests").force(),
        &kube::api::Patch::Apply(rbd_mirror_step::api::RbdMirrorStep::crd()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn journal_mode_promote_needs_the_peer_and_then_fails_over() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-journal").await;
    let img = unique("jr");
    common::mirrored_image_mode(&lab.a, &lab.b, &lab.pool, &img, "journal").await;
    let step = |action: &str, cluster: &str| {
        run()
            .param("action", action)
            .param("cluster", cluster)
            .param("pool", lab.pool.as_str())
            .param("images", json!([img]))
    };
    step("demote", "site-a")
        .create(&client, &ns, "demote")
        .await;
    assert_condition(
        &wait_done(&client, &ns, "demote", 60).await,
        "True",
        "Succeeded",
    );
    // Without the peer's Secret nothing proves the journal was replayed
    // (a stale journal promote succeeds in Ceph: ceph-lab.md P10).
    step("promote", "site-b")
        .create(&client, &ns, "no-peer")
        .await;
    let done = wait_done(&client, &ns, "no-peer", 60).await;
    assert_condition(&done, "False", "PeerRequired");
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
}

/// Planned failovers back and forth in journal mode, through the
/// controller, with an image never written (an idle journal: what a planned
/// failover of a stopped application meets) beside one written before every
/// demote. After each failover the old primary must replay the new one,
/// never report split-brain. `JOURNAL_CHAIN` sets the number of failovers
/// (CI: 4; the proof: 20).
#[tokio::test]
async fn journal_failover_chains_never_split_brain() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-jchain").await;
    let failovers: usize = std::env::var("JOURNAL_CHAIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let idle = unique("jidle");
    let written = unique("jwr");
    for i in [&idle, &written] {
        common::mirrored_image_mode(&lab.a, &lab.b, &lab.pool, i, "journal").await;
    }
    let keys = [
        format!("{}/{idle}", lab.pool),
        format!("{}/{written}", lab.pool),
    ];
    let (mut from, mut to) = (&lab.a, &lab.b);
    for n in 0..failovers {
        from.rbd_ok(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4K",
            "--io-total",
            "64K",
            &keys[1],
        ]);
        let step = |action: &str, cluster: &str| {
            run()
                .param("action", action)
                .param("cluster", cluster)
                .param("pool", lab.pool.as_str())
                .param("images", json!([idle, written]))
        };
        let demote = format!("demote-{n}");
        step("demote", from.name)
            .create(&client, &ns, &demote)
            .await;
        assert_condition(
            &wait_done(&client, &ns, &demote, 90).await,
            "True",
            "Succeeded",
        );
        let promote = format!("promote-{n}");
        step("promote", to.name)
            .param("peerCluster", from.name)
            .create(&client, &ns, &promote)
            .await;
        let done = wait_done(&client, &ns, &promote, 120).await;
        assert_condition(&done, "True", "Succeeded");
        for k in &keys {
            assert_eq!(
                result(&done, "outcomes").unwrap()[k],
                "promoted",
                "failover {n}"
            );
        }
        for i in [&idle, &written] {
            wait_for(
                120,
                &format!(
                    "failover {n}: {i} replaying on {} (not split-brain)",
                    from.name
                ),
                || async {
                    let state = from.mirror_state(&lab.pool, i)?;
                    let desc = from
                        .json(&["mirror", "image", "status", &format!("{}/{i}", lab.pool)])
                        .and_then(|v| v["description"].as_str().map(String::from))
                        .unwrap_or_default();
                    assert!(
                        !desc.contains("split-brain"),
                        "failover {n}: {i} on {} reports {state} {desc}",
                        from.name
                    );
                    (state == "up+replaying").then_some(())
                },
            )
            .await;
        }
        std::mem::swap(&mut from, &mut to);
    }
    // Journal images replaying from site-a slow down every later forced
    // promote on site-b while site-a is frozen (the lost-site fault tests):
    // leave none behind. Disabling mirroring on the primary removes the
    // other site's copy.
    for k in &keys {
        from.rbd_ok(&["mirror", "image", "disable", k]);
        from.rbd_ok(&["rm", k]);
    }
}

#[tokio::test]
async fn demote_refuses_an_image_in_use_unless_forced() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-inuse").await;
    let img = unique("use");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let key = format!("{}/{img}", lab.pool);
    // A client writing to the image holds its exclusive lock: the lab's
    // model of a mounted volume.
    let mut writer = std::process::Command::new(&lab.a.rbd)
        .arg("-c")
        .arg(&lab.a.admin_conf)
        .args([
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
            &key,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(30, "the writer to hold the lock", || async {
        let locks = lab.a.json(&["lock", "ls", &key])?;
        (!locks.as_array()?.is_empty()).then_some(())
    })
    .await;
    let demote = || {
        run()
            .param("action", "demote")
            .param("cluster", "site-a")
            .param("pool", lab.pool.as_str())
            .param("images", json!([img]))
    };
    // A rehearsal meets the same refusal, after the same look at the lock.
    demote()
        .param("dryRun", "true")
        .create(&client, &ns, "dry")
        .await;
    assert_condition(
        &wait_done(&client, &ns, "dry", 60).await,
        "False",
        "ImageInUse",
    );
    demote().create(&client, &ns, "in-use").await;
    let done = wait_done(&client, &ns, "in-use", 60).await;
    assert_condition(&done, "False", "ImageInUse");
    assert!(condition(&done).unwrap().2.contains("stop the application"));
    assert_eq!(lab.a.is_primary(&lab.pool, &img), Some(true));
    demote()
        .param("force", "true")
        .create(&client, &ns, "forced")
        .await;
    let done = wait_done(&client, &ns, "forced", 60).await;
    let _ = writer.kill();
    let _ = writer.wait();
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(lab.a.is_primary(&lab.pool, &img), Some(false));
}

/// The legacy `tekton.dev/v1alpha1` Run (Tekton <= 0.46), created directly
/// against that release's Run CRD (installed by the lab).
fn legacy_runs(client: &kube::Client, ns: &str) -> kube::api::Api<kube::api::DynamicObject> {
    kube::api::Api::namespaced_with(
        client.clone(),
        ns,
        &rbd_mirror_step::api::Flavor::Run.api_resource(),
    )
}

fn legacy_run(
    name: &str,
    params: serde_json::Value,
    extra: serde_json::Value,
) -> kube::api::DynamicObject {
    let mut spec = json!({"ref": {"apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep"}, "params": params});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1alpha1", "kind": "Run",
        "metadata": {"name": name, "labels": {"rbdmirror.dev/test": shared_controller(SEL)}},
        "spec": spec,
    }))
    .unwrap()
}

async fn wait_legacy_done(
    api: &kube::api::Api<kube::api::DynamicObject>,
    name: &str,
    secs: u64,
) -> kube::api::DynamicObject {
    wait_for(secs, &format!("Run {name} to finish"), || async {
        let o = api.get(name).await.ok()?;
        condition(&o).filter(|(s, _, _)| s != "Unknown").map(|_| o)
    })
    .await
}

#[tokio::test]
async fn legacy_run_objects_follow_their_own_rules() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-legacy").await;
    let img = unique("legacy");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let runs = legacy_runs(&client, &ns);
    let params = |action: &str| {
        json!([
            {"name": "action", "value": action},
            {"name": "cluster", "value": "site-b"},
            {"name": "peerCluster", "value": "site-a"},
            {"name": "pool", "value": lab.pool},
            {"name": "images", "value": [img]},
        ])
    };
    runs.create(
        &Default::default(),
        &legacy_run("status", params("status"), json!({})),
    )
    .await
    .unwrap();
    let done = wait_legacy_done(&runs, "status", 60).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(
        result(&done, "states").unwrap()[format!("{}/{img}", lab.pool)]["role"],
        "non-primary"
    );

    // Cancel: spec.status RunCancelled -> reason RunCancelled.
    runs.create(
        &Default::default(),
        &legacy_run("cancel", params("promote"), json!({})),
    )
    .await
    .unwrap();
    wait_for(60, "the legacy promote to wait", || async {
        let o = runs.get("cancel").await.ok()?;
        condition(&o)
            .filter(|(_, _, m)| m.contains("still primary"))
            .map(drop)
    })
    .await;
    runs.patch(
        "cancel",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"spec": {"status": "RunCancelled"}})),
    )
    .await
    .unwrap();
    assert_condition(
        &wait_legacy_done(&runs, "cancel", 30).await,
        "False",
        "RunCancelled",
    );

    // The Run timeout spans all retries: no attempt after it, reason RunTimedOut.
    runs.create(
        &Default::default(),
        &legacy_run(
            "timeout",
            params("promote"),
            json!({"timeout": "4s", "retries": 3}),
        ),
    )
    .await
    .unwrap();
    let done = wait_legacy_done(&runs, "timeout", 60).await;
    assert_condition(&done, "False", "RunTimedOut");
    assert!(
        done.data["status"]["retriesStatus"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
}

/// `dryRun` on every action: each says what it would do, and the call log
/// of the controller's rbd shows not one mutating command.
#[tokio::test]
async fn dry_runs_say_what_they_would_do_and_change_nothing() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "ctl-dry").await;
    let img = unique("dry");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let key = format!("{}/{img}", lab.pool);
    let ctl = logged_controller("dry");
    let (selector, calls) = (&ctl.selector, &ctl.calls);
    let step = |action: &str, cluster: &str| {
        RunBuilder::new(selector)
            .param("action", action)
            .param("cluster", cluster)
            .param("pool", lab.pool.as_str())
            .param("images", json!([img]))
            .param("dryRun", "true")
    };
    let cases = [
        ("demote", step("demote", "site-a"), "would-demote"),
        (
            "promote",
            step("promote", "site-b").param("peerCluster", "site-a"),
            "would-wait: to promote",
        ),
        (
            "force",
            step("promote", "site-b").param("force", "true"),
            "would-force: data-loss window",
        ),
        ("resync", step("resync", "site-b"), "would-resync"),
        (
            "replaying",
            step("status", "site-a").param("waitFor", "replaying"),
            "would-wait: for",
        ),
    ];
    for (name, builder, _) in &cases {
        builder.clone().create(&client, &ns, name).await;
    }
    for (name, _, want) in &cases {
        let done = wait_done(&client, &ns, name, 60).await;
        assert_condition(&done, "True", "Succeeded");
        let outcome = result(&done, "outcomes").unwrap()[&key].clone();
        assert!(
            outcome.as_str().is_some_and(|o| o.starts_with(want)),
            "{name}: {outcome}"
        );
    }
    assert_eq!(lab.a.is_primary(&lab.pool, &img), Some(true));
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
    let log = rbd_calls(calls);
    assert!(!log.is_empty(), "the call log recorded the dry runs' reads");
    let mutations: Vec<&String> = log
        .iter()
        .map(|(_, _, a)| a)
        .filter(|a| {
            [
                "mirror image demote",
                "mirror image promote",
                "mirror image resync",
                "image-meta",
            ]
            .iter()
            .any(|m| a.contains(m))
        })
        .collect();
    assert!(mutations.is_empty(), "a dry run mutated: {mutations:?}");
}

/// D5: over a hundred malformed runs, generated: option-like, path-like,
/// unicode, shell and control-character values in every name a run gives
/// (images, pool, cluster, peerCluster), object- and array-typed params,
/// 1 MiB strings, duplicates, 501 images, out-of-range concurrency. Every one
/// ends False at once with a short reason and is not retried; no input ever
/// reaches an `rbd` argv (the call log); the controller keeps serving.
#[tokio::test]
async fn a_hundred_malformed_runs_each_fail_fast_and_none_reaches_rbd() {
    let (client, lab) = (client().await, lab());
    let mut ctl = logged_controller("d5");
    let (selector, calls) = (ctl.selector.clone(), ctl.calls.clone());
    let ns = run_namespace(&client, "ctl-d5").await;
    let pool = lab.pool.as_str();
    let base = || {
        RunBuilder::new(&selector)
            .param("action", "status")
            .param("cluster", "site-a")
            .param("pool", pool)
    };
    let evil: Vec<String> = [
        "--keyring=/x",
        "-n",
        "--id=admin",
        "-c",
        "--conf=/etc/ceph/ceph.conf",
        "-p",
        "--cluster=x",
        "a/../b",
        "../a",
        "a/./b",
        "/a",
        "a/",
        "p/ns/img/extra",
        "ímage",
        "图像",
        "a\u{200b}b",
        "💥",
        "\u{202e}gpj",
        "a\u{7f}b",
        "a b",
        "a\tb",
        "a\nb",
        " a",
        "a ",
        "$(id)",
        "`id`",
        "a|b",
        "a&b",
        "a>b",
        "*",
        "a'b",
        "a\"b",
        "a\\b",
        "a@snap",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // (name, run, the reason it must end with; None: any refusal)
    let mut cases: Vec<(String, RunBuilder, Option<&str>)> = vec![];
    for (i, v) in evil.iter().enumerate() {
        // Surrounding blanks are trimmed (YAML block scalars leave a
        // newline): " a" is the image "a", refused only as missing.
        let want = (v.trim() == v).then_some("InvalidParams");
        cases.push((
            format!("image-{i}"),
            base().param("images", json!([v])),
            want,
        ));
        cases.push((
            format!("pool-{i}"),
            RunBuilder::new(&selector)
                .param("action", "status")
                .param("cluster", "site-a")
                .param("pool", v.as_str())
                .param("images", json!(["a"])),
            want,
        ));
        cases.push((
            format!("cluster-{i}"),
            RunBuilder::new(&selector)
                .param("action", "status")
                .param("cluster", v.as_str())
                .param("pool", pool)
                .param("images", json!(["a"])),
            want,
        ));
    }
    for (i, c) in [
        "-1",
        "65",
        "99999999999999999999",
        "1.5",
        "x",
        "0x10",
        " 8",
        "0",
    ]
    .iter()
    .enumerate()
    {
        // " 8" may be read as 8: then the missing image refuses it.
        let want = (*c != " 8").then_some("InvalidParams");
        cases.push((
            format!("concurrency-{i}"),
            base()
                .param("images", json!(["a"]))
                .param("concurrency", *c),
            want,
        ));
    }
    let many: Vec<String> = (0..501).map(|i| format!("img-{i}")).collect();
    let huge = "a".repeat(1 << 20);
    let more: Vec<(&str, RunBuilder, Option<&str>)> = vec![
        (
            "501-images",
            base().param("images", json!(many)),
            Some("InvalidParams"),
        ),
        (
            "huge-image",
            base().param("images", json!([huge])),
            Some("InvalidParams"),
        ),
        (
            "huge-pool",
            base()
                .param("images", json!(["a"]))
                .param("pool", huge.as_str()),
            Some("InvalidParams"),
        ),
        (
            "object-images",
            base().param("images", json!({"a": "b"})),
            Some("InvalidParams"),
        ),
        (
            "object-action",
            base()
                .param("images", json!(["a"]))
                .param("action", json!({"x": 1})),
            Some("InvalidParams"),
        ),
        (
            "array-pool",
            base()
                .param("images", json!(["a"]))
                .param("pool", json!(["p"])),
            Some("InvalidParams"),
        ),
        (
            "number-force",
            base()
                .param("images", json!(["a"]))
                .param("force", json!(1)),
            Some("InvalidParams"),
        ),
        (
            "duplicate-images",
            base().param("images", json!(["missing-a", "missing-a"])),
            None,
        ),
        (
            "duplicate-action",
            base()
                .param("images", json!(["a"]))
                .param("action", "demote"),
            None,
        ),
        (
            "peer-option",
            base()
                .param("images", json!(["a"]))
                .param("peerCluster", "--keyring=/x"),
            Some("InvalidParams"),
        ),
    ];
    cases.extend(more.into_iter().map(|(n, b, r)| (n.to_string(), b, r)));
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut created = vec![];
    for (name, b, reason) in cases {
        // The API server may refuse a run outright (e.g. a param value of
        // the wrong JSON type for its schema): that is a refusal too.
        let obj: kube::api::DynamicObject = serde_json::from_value(b.body(&name)).unwrap();
        if customruns(&client, &ns)
            .create(&Default::default(), &obj)
            .await
            .is_ok()
        {
            created.push((name, reason));
        }
    }
    assert!(created.len() >= 100, "{} runs accepted", created.len());
    for (name, reason) in &created {
        let done = wait_done(&client, &ns, name, 60).await;
        let (s, r, m) = condition(&done).unwrap();
        assert_eq!(s, "False", "{name}: {r} {m}");
        match reason {
            Some(want) => assert_eq!(r, *want, "{name}: {m}"),
            None => assert!(
                ["InvalidParams", "ImageNotFound", "SecretNotFound"].contains(&r.as_str()),
                "{name}: {r} {m}"
            ),
        }
        assert!(m.len() <= 1024, "{name}: a message of {} bytes", m.len());
        assert!(
            done.data["status"]["retriesStatus"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "{name} is not retried"
        );
    }
    let log = rbd_calls(&calls);
    for (_, _, argv) in &log {
        for v in &evil {
            assert!(
                !argv
                    .split(' ')
                    .any(|a| a == v || a.ends_with(&format!("/{v}"))),
                "an input reached rbd: {argv}"
            );
        }
    }
    // Still serving, the same process: a good run right after.
    assert!(
        ctl.proc.child.try_wait().unwrap().is_none(),
        "the controller is alive"
    );
    let img = unique("after-d5");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    base()
        .param("images", json!([img]))
        .create(&client, &ns, "good")
        .await;
    assert_condition(
        &wait_done(&client, &ns, "good", 60).await,
        "True",
        "Succeeded",
    );
}

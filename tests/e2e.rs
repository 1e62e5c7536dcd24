//! End to end: the real Tekton controller runs the pipelines in tekton/,
//! creating the CustomRuns that this project's controller executes.

mod common;

use common::pipelines::*;
use common::runs::*;
use common::{client, lab, mirrored_image, unique, wait_for};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

const SEL: &str = "e2e";

#[tokio::test]
async fn planned_failover_pipeline_moves_images_and_publishes_results() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "e2e-planned").await;
    install_pipelines(&client, &ns).await;
    let imgs: Vec<String> = (0..2).map(|_| unique("pf")).collect();
    for i in &imgs {
        mirrored_image(&lab.a, &lab.b, &lab.pool, i).await;
    }
    start_pipeline(
        SEL,
        &client,
        &ns,
        "planned-failover",
        "move",
        planned_failover_params(&imgs),
        json!({}),
    )
    .await;
    let pr = wait_pipeline(&client, &ns, "move", 240).await;
    let (s, r, m) = pr_condition(&pr).unwrap();
    assert_eq!(s, "True", "{r}: {m}");
    for i in &imgs {
        assert_eq!(
            lab.b.is_primary(&lab.pool, i),
            Some(true),
            "{i} primary on site-b"
        );
        assert_eq!(
            lab.a.is_primary(&lab.pool, i),
            Some(false),
            "{i} non-primary on site-a"
        );
        let key = format!("{}/{i}", lab.pool);
        assert_eq!(
            pr_result(&pr, "to-states").unwrap()[&key]["role"],
            "primary"
        );
        assert_eq!(
            pr_result(&pr, "from-states").unwrap()[&key]["state"],
            "up+replaying"
        );
    }
    let moved = pr_result(&pr, "images").unwrap();
    assert_eq!(moved.as_array().unwrap().len(), 2);
    // Every step was a CustomRun that our controller finished.
    let runs = customruns(&client, &ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(
        runs.items.len(),
        6,
        "check-from, check-to, demote, promote, wait-replaying, report"
    );
    for r in &runs.items {
        assert_condition(r, "True", "Succeeded");
    }
}

#[tokio::test]
async fn cancelled_pipeline_ends_cancelled_not_failed() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "e2e-cancel").await;
    install_pipelines(&client, &ns).await;
    let img = unique("pc");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    // Promote on site-b while site-a stays primary: the step can only wait.
    start_pipeline(
        SEL,
        &client,
        &ns,
        "unplanned-failover",
        "stuck",
        json!([
            {"name": "pool", "value": lab.pool},
            {"name": "images", "value": [img]},
            {"name": "lost-cluster", "value": "site-a"},
            {"name": "to-cluster", "value": "site-b"},
        ]),
        json!({}),
    )
    .await;
    wait_message(&client, &ns, "stuck-promote", "still primary", 90).await;
    api(&client, &ns, "PipelineRun", "pipelineruns")
        .patch(
            "stuck",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"status": "Cancelled"}})),
        )
        .await
        .unwrap();
    let cr = wait_done(&client, &ns, "stuck-promote", 60).await;
    assert_condition(&cr, "False", "CustomRunCancelled");
    let pr = wait_pipeline(&client, &ns, "stuck", 60).await;
    let (s, r, m) = pr_condition(&pr).unwrap();
    assert_eq!((s.as_str(), r.as_str()), ("False", "Cancelled"), "{m}");
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
}

#[tokio::test]
async fn pipeline_task_timeout_stops_the_customrun() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "e2e-timeout").await;
    install_pipelines(&client, &ns).await;
    let img = unique("pt");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    start_pipeline(
        SEL,
        &client,
        &ns,
        "unplanned-failover",
        "slow",
        json!([
            {"name": "pool", "value": lab.pool},
            {"name": "images", "value": [img]},
            {"name": "lost-cluster", "value": "site-a"},
            {"name": "to-cluster", "value": "site-b"},
        ]),
        json!({"timeouts": {"pipeline": "1h", "tasks": "8s"}}),
    )
    .await;
    let cr = wait_done(&client, &ns, "slow-promote", 90).await;
    let (s, r, _) = condition(&cr).unwrap();
    assert_eq!(s, "False");
    assert!(
        r == "CustomRunCancelled" || r == "CustomRunTimedOut",
        "stopped by the tasks timeout: {r}"
    );
    let pr = wait_pipeline(&client, &ns, "slow", 60).await;
    let (s, r, m) = pr_condition(&pr).unwrap();
    assert_eq!(s, "False", "{r}: {m}");
    assert!(
        r.contains("Timeout") || r.contains("TimedOut"),
        "the PipelineRun times out cleanly: {r}: {m}"
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
}

#[tokio::test]
async fn retried_step_shows_its_attempts_and_the_pipeline_succeeds() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "e2e-retry").await;
    let img = unique("pr");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    // One promote step with a short per-attempt timeout and retries: the
    // first attempt times out while site-a is primary; site-a then demotes
    // and a later attempt succeeds.
    let pipeline: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1", "kind": "Pipeline",
        "metadata": {"name": "promote-with-retries"},
        "spec": {"tasks": [{
            "name": "promote", "retries": 3, "timeout": "6s",
            "taskRef": {"apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep"},
            "params": [
                {"name": "action", "value": "promote"},
                {"name": "cluster", "value": "site-b"},
                {"name": "peerCluster", "value": "site-a"},
                {"name": "pool", "value": lab.pool},
                {"name": "images", "value": [img]},
            ]
        }]}
    }))
    .unwrap();
    api(&client, &ns, "Pipeline", "pipelines")
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();
    start_pipeline(
        SEL,
        &client,
        &ns,
        "promote-with-retries",
        "retry",
        json!([]),
        json!({}),
    )
    .await;
    let runs = customruns(&client, &ns);
    wait_for(60, "a first attempt archived in retriesStatus", || async {
        let o = runs.get("retry-promote").await.ok()?;
        o.data["status"]["retriesStatus"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(drop)
    })
    .await;
    lab.a
        .rbd_ok(&["mirror", "image", "demote", &format!("{}/{img}", lab.pool)]);
    let pr = wait_pipeline(&client, &ns, "retry", 120).await;
    let (s, r, m) = pr_condition(&pr).unwrap();
    assert_eq!(s, "True", "{r}: {m}");
    let cr = runs.get("retry-promote").await.unwrap();
    assert_condition(&cr, "True", "Succeeded");
    let attempts = cr.data["status"]["retriesStatus"].as_array().unwrap();
    assert!(!attempts.is_empty());
    assert!(
        attempts
            .iter()
            .all(|a| a["conditions"][0]["reason"] == "CustomRunTimedOut")
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
}

/// Runs `tkn` (on PATH from `lab env`) with the lab's kubeconfig and no
/// terminal, as a script or CI would; its stdout.
fn tkn(args: &[&str]) -> String {
    let out = std::process::Command::new("tkn")
        .args(args)
        .env("KUBECONFIG", &lab().kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tkn on PATH: eval \"$(tests/lab/lab env)\" (lab up builds it)");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "tkn {args:?}: {o}{e}");
    o
}

/// The README's tkn commands, run as printed (plus `-n` and, so that this
/// binary's controller takes the runs, its label): a failover started by
/// `tkn pipeline start`, and what an operator then sees of each step.
#[tokio::test]
async fn tkn_starts_a_failover_and_shows_each_steps_reason_results_and_message() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "e2e-tkn").await;
    install_pipelines(&client, &ns).await;
    let imgs: Vec<String> = (0..2).map(|_| unique("tkn")).collect();
    for i in &imgs {
        mirrored_image(&lab.a, &lab.b, &lab.pool, i).await;
    }
    let label = format!("rbdmirror.dev/test={}", shared_controller(SEL));
    let start = |images: &str| {
        let out = tkn(&[
            "-n",
            &ns,
            "pipeline",
            "start",
            "planned-failover",
            "-p",
            &format!("pool={}", lab.pool),
            "-p",
            &format!("images={images}"),
            "-p",
            "from-cluster=site-a",
            "-p",
            "to-cluster=site-b",
            "--use-param-defaults",
            "--showlog=false",
            "-l",
            &label,
        ]);
        out.lines()
            .find_map(|l| l.strip_prefix("PipelineRun started: "))
            .unwrap_or_else(|| panic!("no PipelineRun name in: {out}"))
            .trim()
            .to_string()
    };

    let name = start(&imgs.join(","));
    let pr = wait_pipeline(&client, &ns, &name, 240).await;
    assert_eq!(pr_condition(&pr).unwrap().0, "True");
    for i in &imgs {
        assert_eq!(lab.b.is_primary(&lab.pool, i), Some(true), "{i} moved");
    }
    let described = tkn(&["-n", &ns, "pipelinerun", "describe", "--last"]);
    assert!(described.contains("Succeeded"), "{described}");
    for r in ["images", "to-states", "from-states", "promote-duration"] {
        assert!(described.contains(r), "result {r} shown: {described}");
    }
    assert!(
        described.contains(&format!("{}/{}", lab.pool, imgs[0])),
        "{described}"
    );
    let steps = tkn(&["-n", &ns, "customrun", "list"]);
    for task in [
        "check-from",
        "check-to",
        "demote",
        "promote",
        "wait-replaying",
        "report",
    ] {
        let line = steps
            .lines()
            .find(|l| l.starts_with(&format!("{name}-{task} ")))
            .unwrap_or_else(|| panic!("step {task} listed: {steps}"));
        assert!(line.trim_end().ends_with("Succeeded"), "{line}");
    }
    let promote = tkn(&[
        "-n",
        &ns,
        "customrun",
        "describe",
        &format!("{name}-promote"),
    ]);
    assert!(promote.contains("peerCluster"), "params shown: {promote}");
    assert!(
        promote.contains("\"promoted\""),
        "outcomes shown: {promote}"
    );
    assert!(
        !promote.contains("Message"),
        "no message on success: {promote}"
    );

    // A failed step: its reason in the list, its message in describe.
    let missing = unique("tkn-missing");
    let name = start(&missing);
    let pr = wait_pipeline(&client, &ns, &name, 120).await;
    assert_eq!(pr_condition(&pr).unwrap().0, "False");
    let steps = tkn(&["-n", &ns, "customrun", "list"]);
    let line = steps
        .lines()
        .find(|l| l.starts_with(&format!("{name}-check-from ")))
        .unwrap_or_else(|| panic!("check-from listed: {steps}"));
    assert!(line.contains("Failed(ImageNotFound)"), "{line}");
    let failed = tkn(&[
        "-n",
        &ns,
        "customrun",
        "describe",
        &format!("{name}-check-from"),
    ]);
    assert!(failed.contains("Message"), "{failed}");
    assert!(
        failed.contains(&format!("{}/{missing} was not found on site-a", lab.pool)),
        "the message says what is wrong: {failed}"
    );
}

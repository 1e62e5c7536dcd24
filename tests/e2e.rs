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
        json!([
            {"name": "pool", "value": lab.pool},
            {"name": "images", "value": imgs},
            {"name": "from-cluster", "value": "site-a"},
            {"name": "to-cluster", "value": "site-b"},
        ]),
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

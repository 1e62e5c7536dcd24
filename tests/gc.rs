//! Garbage collection in the lab (its kube-controller-manager): deleting a
//! PipelineRun deletes its CustomRuns through their owner references, and
//! the controller stops the task of each collected run: no rbd mutation
//! after the deletion, and the image lock it held is free for the next run.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::pipelines::api;
use common::runs::*;
use common::{client, lab, mirrored_image, unique, wait_for};
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::json;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn a_deleted_pipelineruns_customruns_are_collected_and_their_work_stops() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "gc").await;
    let calls = lab
        .dir
        .join("logs")
        .join(format!("rbd-calls-{}.log", unique("gc")));
    let selector = unique("gc");
    let ctl = start_controller(
        &selector,
        &[
            ("RBD_BINARY", RBD_TIMING),
            ("RBD_CALL_LOG", calls.to_str().unwrap()),
        ],
    );
    let img = unique("gc");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    // A promote of site-b while site-a is still primary: it waits (until its
    // timeout) for a demotion that nobody makes.
    let pr: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": "failover", "labels": {"rbdmirror.dev/test": selector}},
        "spec": {"pipelineSpec": {"tasks": [{
            "name": "promote",
            "taskRef": {"apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep"},
            "params": [
                {"name": "action", "value": "promote"},
                {"name": "cluster", "value": "site-b"},
                {"name": "peerCluster", "value": "site-a"},
                {"name": "pool", "value": lab.pool},
                {"name": "images", "value": [img]},
            ],
        }]}},
    }))
    .unwrap();
    let prs = api(&client, &ns, "PipelineRun", "pipelineruns");
    prs.create(&PostParams::default(), &pr)
        .await
        .expect("create PipelineRun");
    let runs = customruns(&client, &ns);
    let by_pr = ListParams::default().labels("tekton.dev/pipelineRun=failover");
    let cr = wait_for(
        60,
        "the PipelineRun's CustomRun to wait for the demotion",
        || async {
            let list = runs.list(&by_pr).await.ok()?;
            list.items.into_iter().find(|o| {
                condition(o).is_some_and(|(s, _, m)| s == "Unknown" && m.contains("still primary"))
            })
        },
    )
    .await;
    let name = cr.metadata.name.clone().unwrap();
    let owner = &cr
        .metadata
        .owner_references
        .as_ref()
        .expect("owner references")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("PipelineRun", "failover", Some(true))
    );

    let deleted_at = now_ns();
    prs.delete("failover", &DeleteParams::default())
        .await
        .expect("delete the PipelineRun");
    // Tekton does not delete it: kube-controller-manager's garbage collector does.
    wait_for(
        60,
        "the garbage collector to delete the CustomRun",
        || async { matches!(runs.get_opt(&name).await, Ok(None)).then_some(()) },
    )
    .await;
    wait_for(
        30,
        "the controller to stop the collected run's task",
        || async {
            let log = std::fs::read_to_string(&ctl.log).ok()?;
            log.lines()
                .any(|l| l.contains(&name) && l.contains("its task stops without writing"))
                .then_some(())
        },
    )
    .await;
    // The image lock the task held is free: a new run on the image is not
    // kept waiting for the collected one.
    RunBuilder::new(&selector)
        .param("action", "status")
        .param("cluster", "site-b")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "after")
        .await;
    let after = wait_done(&client, &ns, "after", 60).await;
    assert_condition(&after, "True", "Succeeded");
    let key = format!("{}/{img}", lab.pool);
    let late: Vec<_> = rbd_calls(&calls)
        .into_iter()
        .filter(|(start, _, args)| {
            *start > deleted_at
                && args.ends_with(&key)
                && ["promote", "demote", "resync"]
                    .iter()
                    .any(|m| args.starts_with(&format!("mirror image {m}")))
        })
        .collect();
    assert!(
        late.is_empty(),
        "rbd mutations after the deletion: {late:?}"
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
    assert_eq!(lab.a.is_primary(&lab.pool, &img), Some(true));
}

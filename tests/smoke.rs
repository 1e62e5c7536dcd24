//! Smoke tests: each part of the lab is real and answers.

mod common;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{CustomResourceExt, ResourceExt};
use rbd_mirror_step::api::{Flavor, RbdMirrorStep};

use common::{client, lab, mirrored_image, namespace, unique, wait_for};

#[tokio::test]
async fn crd_object_arrives_through_a_kube_rs_watch() {
    let client = client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "rbdmirrorsteps.rbdmirror.dev",
        &PatchParams::apply("rbd-mirror-step-tests").force(),
        &Patch::Apply(RbdMirrorStep::crd()),
    )
    .await
    .expect("apply the CRD");
    wait_for(30, "CRD established", || async {
        let crd = crds.get("rbdmirrorsteps.rbdmirror.dev").await.ok()?;
        let established = crd
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;

    let ns = namespace(&client, "smoke-watch").await;
    let steps: Api<RbdMirrorStep> = Api::namespaced(client.clone(), &ns);
    // The CRD is served a moment after it is established: wait for a list to work.
    wait_for(30, "RbdMirrorStep served", || async {
        steps.list(&ListParams::default()).await.ok()
    })
    .await;
    let mut events = watcher(steps.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let name = unique("promote-b");
    let obj: RbdMirrorStep = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep",
        "metadata": {"name": name},
        "spec": {"action": "promote", "cluster": "site-b", "pool": "replicapool", "images": ["csi-vol-1"]}
    }))
    .unwrap();
    steps
        .create(&PostParams::default(), &obj)
        .await
        .expect("create RbdMirrorStep");
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = events.next().await {
            let o = ev.expect("watch event");
            if o.name_any() == name {
                return o;
            }
        }
        panic!("watch ended")
    })
    .await
    .expect("the object arrives through the watch within 30s");
    assert_eq!(seen.spec.cluster.as_deref(), Some("site-b"));
    assert_eq!(seen.spec.images, Some(vec!["csi-vol-1".to_string()]));
}

#[tokio::test]
async fn snapshot_mirrored_image_replays_on_the_other_site() {
    let lab = lab();
    let name = unique("smoke-img");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &name).await;
    assert_eq!(lab.a.is_primary(&lab.pool, &name), Some(true));
    assert_eq!(lab.b.is_primary(&lab.pool, &name), Some(false));
    assert_eq!(
        lab.b.mirror_state(&lab.pool, &name).as_deref(),
        Some("up+replaying")
    );
}

#[tokio::test]
async fn tekton_creates_a_customrun_for_a_custom_task() {
    let client = client().await;
    let ns = namespace(&client, "smoke-tekton").await;
    let pr_name = unique("pr");
    let pipelineruns: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"),
            "pipelineruns",
        ),
    );
    let pr: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": pr_name},
        "spec": {"pipelineSpec": {"tasks": [{
            "name": "promote",
            "taskRef": {"apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep"},
            "params": [{"name": "action", "value": "status"}]
        }]}}
    }))
    .unwrap();
    pipelineruns
        .create(&PostParams::default(), &pr)
        .await
        .expect("create PipelineRun");

    let customruns: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &Flavor::CustomRun.api_resource());
    let expected = format!("{pr_name}-promote");
    let cr = wait_for(
        60,
        &format!("CustomRun {expected} created by Tekton"),
        || async { customruns.get(&expected).await.ok() },
    )
    .await;
    let labels = cr.labels();
    assert_eq!(labels.get("tekton.dev/pipelineRun"), Some(&pr_name));
    assert_eq!(
        labels.get("tekton.dev/pipelineTask").map(String::as_str),
        Some("promote")
    );
    assert_eq!(cr.data["spec"]["customRef"]["kind"], "RbdMirrorStep");
    let owner = &cr
        .metadata
        .owner_references
        .as_ref()
        .expect("owner reference")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("PipelineRun", pr_name.as_str())
    );
}

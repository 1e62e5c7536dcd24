//! Tekton pipelines in tests: install tekton/, start and await PipelineRuns.
#![allow(dead_code)]

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

use super::runs::{condition, shared_controller};
use super::wait_for;

pub fn api(client: &kube::Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("tekton.dev", "v1", kind),
            plural,
        ),
    )
}

/// Creates the pipelines of tekton/ in `ns`, as `kubectl apply -f tekton/` would.
pub async fn install_pipelines(client: &kube::Client, ns: &str) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tekton");
    for f in [
        "planned-failover.yaml",
        "unplanned-failover.yaml",
        "failback.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
        let value: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        let obj: DynamicObject = serde_json::from_value(value).unwrap();
        api(client, ns, "Pipeline", "pipelines")
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

pub async fn start_pipeline(
    selector: &str,
    client: &kube::Client,
    ns: &str,
    pipeline: &str,
    name: &str,
    params: Value,
    extra_spec: Value,
) {
    let label = shared_controller(selector);
    create_pipeline_run(&label, client, ns, pipeline, name, params, extra_spec).await;
}

/// A PipelineRun of `pipeline` whose custom tasks the controller of
/// selector value `label` serves.
pub async fn create_pipeline_run(
    label: &str,
    client: &kube::Client,
    ns: &str,
    pipeline: &str,
    name: &str,
    params: Value,
    extra_spec: Value,
) {
    let mut spec = json!({"pipelineRef": {"name": pipeline}, "params": params});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    let pr: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "labels": {"rbdmirror.dev/test": label}},
        "spec": spec,
    }))
    .unwrap();
    api(client, ns, "PipelineRun", "pipelineruns")
        .create(&PostParams::default(), &pr)
        .await
        .expect("create PipelineRun");
}

/// The `planned-failover` pipeline's params: `images` from site-a to site-b.
pub fn planned_failover_params(images: &[String]) -> Value {
    json!([
        {"name": "pool", "value": super::lab().pool},
        {"name": "images", "value": images},
        {"name": "from-cluster", "value": "site-a"},
        {"name": "to-cluster", "value": "site-b"},
    ])
}

pub fn pr_condition(o: &DynamicObject) -> Option<(String, String, String)> {
    condition(o)
}

pub async fn wait_pipeline(
    client: &kube::Client,
    ns: &str,
    name: &str,
    secs: u64,
) -> DynamicObject {
    let prs = api(client, ns, "PipelineRun", "pipelineruns");
    wait_for(
        secs,
        &format!("PipelineRun {ns}/{name} to finish"),
        || async {
            let o = prs.get(name).await.ok()?;
            pr_condition(&o)
                .filter(|(s, _, _)| s != "Unknown")
                .map(|_| o)
        },
    )
    .await
}

pub fn pr_result(o: &DynamicObject, name: &str) -> Option<Value> {
    let v = o.data["status"]["results"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)?["value"]
        .clone();
    match v {
        Value::String(s) => Some(serde_json::from_str(&s).unwrap_or(Value::String(s))),
        other => Some(other),
    }
}

//! The YAML under tekton/ is well formed (no lab needed): every document
//! parses, pipelines declare the params they use, every RbdMirrorStep task
//! names an action and a cluster, and the trigger examples never force.

use serde_json::Value;

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    text.split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn params_used(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(i) = rest.find("$(params.") {
                let tail = &rest[i + 9..];
                let end = tail.find([')', '[']).unwrap_or(tail.len());
                out.push(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
        Value::Array(a) => a.iter().for_each(|x| params_used(x, out)),
        Value::Object(o) => o.values().for_each(|x| params_used(x, out)),
        _ => {}
    }
}

#[test]
fn pipelines_are_well_formed() {
    for f in [
        "planned-failover.yaml",
        "unplanned-failover.yaml",
        "failback.yaml",
        "assess.yaml",
    ] {
        let d = docs(&format!("tekton/{f}")).remove(0);
        assert_eq!(d["apiVersion"], "tekton.dev/v1", "{f}");
        assert_eq!(d["kind"], "Pipeline", "{f}");
        let declared: Vec<&str> = d["spec"]["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let mut used = vec![];
        params_used(&d["spec"], &mut used);
        for u in used {
            assert!(
                declared.contains(&u.as_str()),
                "{f} uses undeclared param {u}"
            );
        }
        let tasks = d["spec"]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .chain(d["spec"]["finally"].as_array().into_iter().flatten());
        for t in tasks {
            assert_eq!(
                t["taskRef"]["apiVersion"], "rbdmirror.dev/v1alpha1",
                "{f} {}",
                t["name"]
            );
            assert_eq!(t["taskRef"]["kind"], "RbdMirrorStep");
            let names: Vec<&str> = t["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert!(
                names.contains(&"action") && names.contains(&"cluster"),
                "{f} {}",
                t["name"]
            );
        }
    }
}

#[test]
fn only_the_unplanned_pipeline_can_force_and_only_when_asked_or_rehearsed() {
    for f in [
        "planned-failover.yaml",
        "failback.yaml",
        "assess.yaml",
        "unplanned-failover.yaml",
    ] {
        let d = docs(&format!("tekton/{f}")).remove(0);
        for t in d["spec"]["tasks"].as_array().unwrap() {
            let params = t["params"].as_array().unwrap();
            // A rehearsal (dryRun "true", fixed) may force: it changes nothing.
            let rehearsal = params
                .iter()
                .any(|p| p["name"] == "dryRun" && p["value"] == "true");
            for p in params {
                if p["name"] == "force" && !rehearsal {
                    assert_eq!(f, "unplanned-failover.yaml");
                    assert_eq!(
                        p["value"], "$(params.force)",
                        "force only from the operator's param"
                    );
                }
            }
        }
    }
    let unplanned = docs("tekton/unplanned-failover.yaml").remove(0);
    let force = unplanned["spec"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "force")
        .unwrap();
    assert_eq!(force["default"], "false");
}

#[test]
fn trigger_examples_are_well_formed_and_never_force() {
    let d = docs("tekton/triggers/failover-events.yaml");
    let kinds: Vec<&str> = d.iter().map(|x| x["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "EventListener",
            "TriggerBinding",
            "TriggerTemplate",
            "TriggerTemplate"
        ]
    );
    for x in &d {
        assert_eq!(x["apiVersion"], "triggers.tekton.dev/v1beta1");
    }
    for trigger in d[0]["spec"]["triggers"].as_array().unwrap() {
        let filter = trigger["interceptors"][0]["params"][0]["value"]
            .as_str()
            .unwrap();
        assert!(
            filter.contains("body.status == 'firing'"),
            "resolved notifications are dropped"
        );
    }
    for template in &d[2..] {
        let run = &template["spec"]["resourcetemplates"][0];
        let name = run["metadata"]["name"].as_str().unwrap();
        assert!(
            name.contains("$(tt.params.fingerprint)"),
            "deterministic run names: {name}"
        );
        assert!(run["metadata"]["generateName"].is_null());
        assert_ne!(run["spec"]["pipelineRef"]["name"], "unplanned-failover");
    }
}

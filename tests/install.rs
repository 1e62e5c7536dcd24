//! The install manifests of config/: they apply, their RBAC is enough and no
//! more, and the binary works with exactly the Deployment's arguments and
//! environment, as its ServiceAccount. (No image can be built and no pod can
//! run in the lab, so the binary is run locally in the pod's place.)

mod common;

use std::process::{Command, Stdio};

use common::runs::*;
use common::{client, lab, mirrored_image, unique, wait_for};
use serde_json::{Value, json};

const NS: &str = "rbd-mirror-step";
const SA: &str = "system:serviceaccount:rbd-mirror-step:rbd-mirror-step";

fn kubectl(args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .env("KUBECONFIG", &lab().kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(path: &str) -> String {
    format!("{}/config/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(config(path)).unwrap();
    text.split("\n---")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// The install namespace, the CRD and the RBAC, applied for real, once per
/// test binary: the tests run side by side, and two client-side applies
/// of objects that do not exist yet race to create them (seen on a fresh
/// lab: "AlreadyExists" from the second).
fn install_rbac() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(apply_rbac);
}

fn apply_rbac() {
    let ns = kubectl(&["create", "namespace", NS]);
    assert!(ns.status.success() || String::from_utf8_lossy(&ns.stderr).contains("AlreadyExists"));
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        &config("crd"),
    ]);
    kubectl_ok(&["apply", "-k", &config("rbac")]);
}

#[tokio::test]
async fn config_applies_with_kubectl_apply_k() {
    install_rbac();
    let out = kubectl_ok(&["apply", "-k", &config(""), "--dry-run=server"]);
    for kind in [
        "customresourcedefinition",
        "clusterrole",
        "deployment.apps/rbd-mirror-step",
        "serviceaccount/rbd-mirror-step",
    ] {
        assert!(out.contains(kind), "{kind} missing from: {out}");
    }
}

fn can_i(verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(format!("--subresource={s}"))),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "--as", SA];
    if let Some(s) = &sub {
        args.push(s);
    }
    match ns {
        Some(n) => args.extend(["-n", n]),
        None => args.push("--all-namespaces"),
    }
    String::from_utf8_lossy(&kubectl(&args).stdout).trim() == "yes"
}

#[tokio::test]
async fn service_account_can_do_what_the_controller_needs_and_no_more() {
    install_rbac();
    // Everything the ClusterRole grants is granted...
    let role = yaml_docs("rbac/cluster-role.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .unwrap();
    for rule in role["rules"].as_array().unwrap() {
        let group = rule["apiGroups"][0].as_str().unwrap();
        for res in rule["resources"].as_array().unwrap() {
            let res = res.as_str().unwrap();
            let full = if group.is_empty() {
                res.to_string()
            } else {
                format!("{}.{group}", res.split('/').next().unwrap())
                    + res.find('/').map_or("", |i| &res[i..])
            };
            for verb in rule["verbs"].as_array().unwrap() {
                let verb = verb.as_str().unwrap();
                assert!(can_i(verb, &full, None), "{verb} {full} should be allowed");
            }
        }
    }
    // ... exactly what the controller does ...
    for (verb, res, ns) in [
        ("watch", "customruns.tekton.dev", None),
        ("patch", "customruns.tekton.dev/status", None),
        ("get", "secrets", Some("default")),
        ("get", "persistentvolumeclaims", Some("default")),
        ("list", "persistentvolumeclaims", Some("default")),
        ("get", "persistentvolumes", None),
        ("create", "subjectaccessreviews.authorization.k8s.io", None),
        ("create", "events.events.k8s.io", Some("default")),
        ("patch", "leases.coordination.k8s.io", Some(NS)),
        ("watch", "leases.coordination.k8s.io", Some(NS)),
    ] {
        assert!(can_i(verb, res, ns), "{verb} {res} is needed");
    }
    // ... and nothing it must not.
    for (verb, res, ns) in [
        ("list", "secrets", Some("default")),
        ("watch", "secrets", Some("default")),
        ("create", "secrets", Some("default")),
        ("watch", "persistentvolumeclaims", Some("default")),
        ("patch", "persistentvolumeclaims", Some("default")),
        ("list", "persistentvolumes", None),
        ("delete", "persistentvolumes", None),
        ("patch", "customruns.tekton.dev", Some("default")),
        ("delete", "customruns.tekton.dev", Some("default")),
        ("create", "customruns.tekton.dev", Some("default")),
        ("create", "pods", Some("default")),
        ("create", "pods/exec", Some("default")),
        ("get", "configmaps", Some("default")),
        ("delete", "rbdmirrorsteps.rbdmirror.dev", Some("default")),
        ("patch", "pipelineruns.tekton.dev", Some("default")),
        ("patch", "leases.coordination.k8s.io", Some("kube-system")),
        ("watch", "leases.coordination.k8s.io", Some("kube-system")),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
        ),
    ] {
        assert!(!can_i(verb, res, ns), "{verb} {res} must not be allowed");
    }
}

/// Env and args of the Deployment's container, with the Downward API
/// values a pod would get.
fn deployment_command() -> (Vec<String>, Vec<(String, String)>) {
    let dep = yaml_docs("manager/deployment.yaml").remove(0);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let args = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let env = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => NS.to_string(),
                Some("metadata.name") => "rbd-mirror-step-test-pod".to_string(),
                _ => e["value"].as_str().unwrap().to_string(),
            };
            (name, value)
        })
        .collect();
    (args, env)
}

#[tokio::test]
async fn binary_runs_with_the_deployment_arguments_as_its_service_account() {
    install_rbac();
    let (client, lab) = (client().await, lab());
    // The pod's credentials: a token of the controller's ServiceAccount.
    let token = kubectl_ok(&["create", "token", "rbd-mirror-step", "-n", NS])
        .trim()
        .to_string();
    let dir = lab.dir.join("install-test");
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let admin: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&lab.kubeconfig).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    std::fs::write(
        &kubeconfig,
        serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "lab", "cluster": cluster}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "lab", "user": "sa"}}],
            "current-context": "sa",
        }))
        .unwrap(),
    )
    .unwrap();
    let (args, env) = deployment_command();
    let selector = unique("install");
    let emptydir = dir.join("emptydir");
    std::fs::create_dir_all(&emptydir).unwrap();
    let log = std::fs::File::create(
        lab.dir
            .join("logs")
            .join(format!("controller-{selector}.log")),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbd-mirror-step"));
    cmd.args(&args)
        .arg("--exit-on-stdin-eof")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    // Differences from the pod, each forced by the lab: the emptyDir's path,
    // the kubeconfig in place of the in-cluster token, a label selector so
    // that this controller only takes this test's runs, and the lab's client
    // (`LAB_CLIENT`'s rbd and ceph) where the image has its own on PATH.
    cmd.env("RBDSTEP_TMP_DIR", &emptydir)
        .env("RBD_BINARY", common::client_rbd())
        .env("CEPH_BINARY", common::client_ceph())
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "RBDSTEP_LABEL_SELECTOR",
            format!("rbdmirror.dev/test={selector}"),
        )
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = std::sync::Mutex::new(Kill(cmd.spawn().unwrap()));
    let health = args
        .iter()
        .position(|a| a == "--health-addr")
        .map(|i| args[i + 1].replace("0.0.0.0", "127.0.0.1"))
        .unwrap();
    wait_for(30, "/readyz", || async {
        if let Ok(Some(status)) = child.lock().unwrap().0.try_wait() {
            panic!("the controller exited: {status}");
        }
        let out = Command::new("curl")
            .args(["-fsS", &format!("http://{health}/readyz")])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
    // It leads, through its Lease.
    let holder = wait_for(30, "the Lease held", || async {
        let out = kubectl(&[
            "get",
            "lease",
            "rbd-mirror-step",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let h = String::from_utf8_lossy(&out.stdout).to_string();
        (!h.is_empty()).then_some(h)
    })
    .await;
    assert_eq!(holder, "rbd-mirror-step-test-pod");
    // And it does a step, with only its ServiceAccount's rights.
    let ns = run_namespace(&client, "install").await;
    let img = unique("inst");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    RunBuilder::new(&selector)
        .param("action", "status")
        .param("cluster", "site-a")
        .param("pool", lab.pool.as_str())
        .param("images", json!([img]))
        .create(&client, &ns, "status")
        .await;
    let done = wait_done(&client, &ns, "status", 60).await;
    assert_condition(&done, "True", "Succeeded");
    // Nothing of the connection stays on disk once the step is done: the
    // emptyDir holds only the process's own (locked) directory, and that
    // holds nothing but its lock file.
    let owners: Vec<_> = std::fs::read_dir(&emptydir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(owners.len(), 1, "one owner directory: {owners:?}");
    let left: Vec<_> = std::fs::read_dir(&owners[0])
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "lock")
        .collect();
    assert!(left.is_empty(), "connection files left behind: {left:?}");
}

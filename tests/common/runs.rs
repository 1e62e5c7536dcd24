//! Helpers for tests that drive the controller: its process, Secrets, runs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use rbd_mirror_step::api::Flavor;
use serde_json::{Value, json};

use super::{Site, lab, wait_for};

/// A controller process owned by a test binary; it exits when the test
/// process does (its stdin closes).
pub struct ControllerProcess {
    pub child: Child,
    pub selector: String,
    pub log: std::path::PathBuf,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_controller(selector_value: &str, extra_env: &[(&str, &str)]) -> ControllerProcess {
    start_controller_under(&[], selector_value, extra_env)
}

/// Like `start_controller`, the binary run by `prefix` (e.g. valgrind) when
/// it is not empty.
pub fn start_controller_under(
    prefix: &[&str],
    selector_value: &str,
    extra_env: &[(&str, &str)],
) -> ControllerProcess {
    let lab = lab();
    let log = lab.dir.join("logs").join(format!(
        "controller-{selector_value}-{}.log",
        std::process::id()
    ));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("controller log");
    let selector = format!("rbdmirror.dev/test={selector_value}");
    let tmp = lab.dir.join("controller-tmp").join(selector_value);
    std::fs::create_dir_all(&tmp).unwrap();
    let bin = env!("CARGO_BIN_EXE_rbd-mirror-step");
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(["run", "--exit-on-stdin-eof", "--label-selector", &selector]);
    // A test that names its own tmp dir (several controllers sharing one).
    if !extra_env.iter().any(|(k, _)| *k == "RBDSTEP_TMP_DIR") {
        cmd.arg("--tmp-dir").arg(&tmp);
    }
    cmd.env("KUBECONFIG", &lab.kubeconfig)
        .env("RUST_LOG", "info,rbd_mirror_step=debug")
        .stdin(Stdio::piped())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in extra_env {
        cmd.env(k, v);
        // The call log's ends are in this controller's log: say where.
        if *k == "RBD_CALL_LOG" {
            let mut reg = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(controllers_of(std::path::Path::new(v)))
                .expect("call log registry");
            writeln!(reg, "{}", log.display()).unwrap();
        }
    }
    let child = cmd.spawn().expect("start the controller");
    ControllerProcess {
        child,
        selector,
        log,
    }
}

/// The controller shared by the tests of one binary.
/// A controller of one test only, running `rbd` through the logging
/// wrapper (`tests/lab/rbd-timing`): its call log is the oracle for what
/// was sent to Ceph.
pub struct Logged {
    pub proc: ControllerProcess,
    pub calls: std::path::PathBuf,
    pub selector: String,
}

pub fn logged_controller(name: &str) -> Logged {
    let calls = lab()
        .dir
        .join("logs")
        .join(format!("rbd-calls-{}.log", super::unique(name)));
    let selector = super::unique(name);
    let proc = start_controller(&selector, &Logged::env(&calls));
    Logged {
        proc,
        calls,
        selector,
    }
}

impl Logged {
    /// The environment that makes a controller log its rbd calls to `calls`
    /// (for a second process writing the same log).
    pub fn env(calls: &std::path::Path) -> [(&'static str, &str); 2] {
        [
            ("RBD_BINARY", RBD_TIMING),
            ("RBD_CALL_LOG", calls.to_str().unwrap()),
        ]
    }

    /// (start time in ns, arguments) of every rbd call naming `needle`.
    pub fn calls(&self, needle: &str) -> Vec<(u128, String)> {
        rbd_calls(&self.calls)
            .into_iter()
            .filter(|(_, _, a)| a.contains(needle))
            .map(|(start, _, a)| (start, a))
            .collect()
    }

    /// How many calls naming `needle` were `command` (e.g. "mirror image resync").
    pub fn count(&self, needle: &str, command: &str) -> usize {
        self.calls(needle)
            .iter()
            .filter(|(_, a)| a.contains(command))
            .count()
    }

    /// How many calls naming `needle` were `command` and succeeded (exit 0).
    pub fn count_ok(&self, needle: &str, command: &str) -> usize {
        call_log(&self.calls)
            .iter()
            .filter(|c| c.exit == Some(0) && c.args.contains(needle) && c.args.contains(command))
            .count()
    }

    /// Waits until a `command` call naming `needle` has ended (its end is
    /// in the controller's log): it has run, not just started.
    pub async fn wait_call(&self, needle: &str, command: &str, secs: u64) {
        wait_for(secs, &format!("{command} of {needle} run"), || async {
            rbd_calls(&self.calls)
                .iter()
                .any(|(_, end, a)| end.is_some() && a.contains(needle) && a.contains(command))
                .then_some(())
        })
        .await
    }
}

pub fn shared_controller(selector_value: &str) -> String {
    static SHARED: Mutex<Option<ControllerProcess>> = Mutex::new(None);
    let mut g = SHARED.lock().unwrap();
    match &*g {
        Some(c) => assert_eq!(
            c.selector,
            format!("rbdmirror.dev/test={selector_value}"),
            "one shared controller per test binary"
        ),
        None => *g = Some(start_controller(selector_value, &[])),
    }
    selector_value.to_string()
}

/// Who holds the controller's leader Lease (`rbd-mirror-step`) in `ns`;
/// None when nobody does (a released Lease has an empty or no holder).
pub async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), ns)
        .get("rbd-mirror-step")
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

pub fn customruns(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &Flavor::CustomRun.api_resource())
}

/// A labelled connection Secret for `site` as cephx user `user` with `key`.
pub async fn connection_secret_user(
    client: &Client,
    ns: &str,
    name: &str,
    site: &Site,
    user: &str,
    key: &str,
) {
    let conf = std::fs::read_to_string(&site.conf).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"rbdmirror.dev/ceph-connection": "true"}},
        "stringData": {
            "ceph.conf": conf,
            "keyring": format!("[client.{user}]\n\tkey = {key}\n"),
            "userID": user,
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create connection Secret");
}

/// A labelled connection Secret for `site`, from the lab's least-privilege client.
pub async fn connection_secret(client: &Client, ns: &str, name: &str, site: &Site) {
    let conf = std::fs::read_to_string(&site.conf).unwrap();
    connection_secret_conf(client, ns, name, site, conf).await;
}

/// A connection Secret of `site` with a ceph.conf of the test's own.
pub async fn connection_secret_conf(
    client: &Client,
    ns: &str,
    name: &str,
    site: &Site,
    conf: String,
) {
    let keyring = std::fs::read_to_string(&site.keyring).unwrap();
    let mut data = BTreeMap::new();
    data.insert("ceph.conf".to_string(), conf);
    data.insert("keyring".to_string(), keyring);
    data.insert("userID".to_string(), site.user.clone());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"rbdmirror.dev/ceph-connection": "true"}},
        "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create connection Secret");
}

/// Lets the namespace's `default` ServiceAccount (the runs') read Secrets.
pub async fn allow_secrets(client: &Client, ns: &str) {
    grant(
        client,
        ns,
        "ceph-connections",
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
        ns,
    )
    .await;
}

/// A Role `name` with `rules` in `ns`, bound to the `default`
/// ServiceAccount of `run_ns` (the runs' ServiceAccount in these tests).
pub async fn grant(client: &Client, ns: &str, name: &str, rules: Value, run_ns: &str) {
    let role: Role =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": run_ns}]
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// A namespace with site-a and site-b connection Secrets readable by its runs.
pub async fn run_namespace(client: &Client, prefix: &str) -> String {
    let ns = super::namespace(client, prefix).await;
    let lab = lab();
    connection_secret(client, &ns, "site-a", &lab.a).await;
    connection_secret(client, &ns, "site-b", &lab.b).await;
    allow_secrets(client, &ns).await;
    ns
}

#[derive(Clone)]
pub struct RunBuilder {
    pub params: Vec<Value>,
    pub retries: Option<u32>,
    pub timeout: Option<String>,
    pub custom_ref_name: Option<String>,
    pub custom_spec: Option<Value>,
    pub selector: String,
}

impl RunBuilder {
    pub fn new(selector: &str) -> RunBuilder {
        RunBuilder {
            params: vec![],
            retries: None,
            timeout: None,
            custom_ref_name: None,
            custom_spec: None,
            selector: selector.into(),
        }
    }

    /// `action` on `cluster` (a Secret's name) for one image of the lab's pool.
    pub fn one(selector: &str, action: &str, cluster: &str, image: &str) -> RunBuilder {
        RunBuilder::new(selector)
            .param("action", action)
            .param("cluster", cluster)
            .param("pool", lab().pool.as_str())
            .param("images", json!([image]))
    }

    pub fn param(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.params
            .push(json!({"name": name, "value": value.into()}));
        self
    }

    pub fn retries(mut self, n: u32) -> Self {
        self.retries = Some(n);
        self
    }

    pub fn timeout(mut self, t: &str) -> Self {
        self.timeout = Some(t.into());
        self
    }

    pub fn body(&self, name: &str) -> Value {
        let mut spec = json!({"params": self.params, "serviceAccountName": ""});
        match &self.custom_spec {
            Some(s) => {
                spec["customSpec"] = json!({"apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep", "spec": s})
            }
            None => {
                spec["customRef"] =
                    json!({"apiVersion": "rbdmirror.dev/v1alpha1", "kind": "RbdMirrorStep"});
                if let Some(n) = &self.custom_ref_name {
                    spec["customRef"]["name"] = json!(n);
                }
            }
        }
        if let Some(r) = self.retries {
            spec["retries"] = json!(r);
        }
        if let Some(t) = &self.timeout {
            spec["timeout"] = json!(t);
        }
        let (k, v) = self
            .selector
            .split_once('=')
            .unwrap_or(("rbdmirror.dev/test", &self.selector));
        let label_key = if self.selector.contains('=') {
            k.to_string()
        } else {
            "rbdmirror.dev/test".to_string()
        };
        json!({
            "apiVersion": "tekton.dev/v1beta1", "kind": "CustomRun",
            "metadata": {"name": name, "labels": {label_key: v}},
            "spec": spec,
        })
    }

    pub async fn create(&self, client: &Client, ns: &str, name: &str) {
        let obj: DynamicObject = serde_json::from_value(self.body(name)).unwrap();
        customruns(client, ns)
            .create(&PostParams::default(), &obj)
            .await
            .expect("create CustomRun");
    }
}

pub fn condition(obj: &DynamicObject) -> Option<(String, String, String)> {
    let c = obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Succeeded")?
        .clone();
    Some((
        c["status"].as_str().unwrap_or("").to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
        c["message"].as_str().unwrap_or("").to_string(),
    ))
}

pub fn result(obj: &DynamicObject, name: &str) -> Option<Value> {
    let v = obj.data["status"]["results"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)?["value"]
        .as_str()?
        .to_string();
    Some(serde_json::from_str(&v).unwrap_or(Value::String(v)))
}

/// Waits until the run is done (Succeeded not Unknown) and returns it.
pub async fn wait_done(client: &Client, ns: &str, name: &str, secs: u64) -> DynamicObject {
    let api = customruns(client, ns);
    wait_for(
        secs,
        &format!("CustomRun {ns}/{name} to finish"),
        || async {
            let o = api.get(name).await.ok()?;
            match condition(&o) {
                Some((s, _, _)) if s != "Unknown" => Some(o),
                _ => None,
            }
        },
    )
    .await
}

/// Waits until the condition message of a running run contains `text`.
pub async fn wait_message(
    client: &Client,
    ns: &str,
    name: &str,
    text: &str,
    secs: u64,
) -> DynamicObject {
    let api = customruns(client, ns);
    wait_for(
        secs,
        &format!("CustomRun {ns}/{name} to say {text:?}"),
        || async {
            let o = api.get(name).await.ok()?;
            condition(&o)
                .filter(|(_, _, m)| m.contains(text))
                .map(|_| o)
        },
    )
    .await
}

pub async fn cancel(client: &Client, ns: &str, name: &str) {
    customruns(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"status": "RunCancelled", "statusMessage": "cancelled by the test"}})),
        )
        .await
        .expect("cancel the run");
}

pub fn assert_condition(obj: &DynamicObject, status: &str, reason: &str) {
    let (s, r, m) = condition(obj).expect("a Succeeded condition");
    assert_eq!((s.as_str(), r.as_str()), (status, reason), "message: {m}");
}

pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An `rbd` that logs each call (tests/lab/rbd-timing), for tests and the
/// benchmark that count and order the controller's commands.
pub const RBD_TIMING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/rbd-timing");

/// The file listing the logs of the controllers that write call log `calls`.
fn controllers_of(calls: &std::path::Path) -> std::path::PathBuf {
    let mut p = calls.as_os_str().to_owned();
    p.push(".controllers");
    p.into()
}

/// One call of an rbd-timing log. The start and the process id come from
/// the call log, written as the call starts; the end and the exit status
/// from the "rbd call ended" debug line of the same pid in the log of a
/// controller that wrote this call log. No end: the call did not end under
/// its controller (killed with it, or still running).
#[derive(Clone, Debug)]
pub struct Call {
    pub start: u128,
    pub end: Option<u128>,
    pub exit: Option<i32>,
    pub args: String,
}

pub fn call_log(log: &std::path::Path) -> Vec<Call> {
    let mut ends: BTreeMap<u32, Vec<(u128, i32)>> = BTreeMap::new();
    let registry = std::fs::read_to_string(controllers_of(log)).unwrap_or_default();
    for controller_log in registry.lines() {
        let text = std::fs::read_to_string(controller_log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("rbd call ended")) {
            if let Some((pid, end, exit)) = call_end(line) {
                ends.entry(pid).or_default().push((end, exit));
            }
        }
    }
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let start: u128 = it.next()?.parse().ok()?;
            let pid: u32 = it.next()?.parse().ok()?;
            let args = it.next()?.to_string();
            let end = ends.get(&pid).and_then(|e| {
                e.iter()
                    .copied()
                    .filter(|(end, _)| *end >= start)
                    .min_by_key(|(end, _)| *end)
            });
            Some(Call {
                start,
                end: end.map(|e| e.0),
                exit: end.map(|e| e.1),
                args,
            })
        })
        .collect()
}

/// (start ns, end ns, arguments) of every call in an rbd-timing log
/// (`call_log`).
pub fn rbd_calls(log: &std::path::Path) -> Vec<(u128, Option<u128>, String)> {
    call_log(log)
        .into_iter()
        .map(|c| (c.start, c.end, c.args))
        .collect()
}

/// (pid, time in ns, exit status) of a controller's "rbd call ended" line.
fn call_end(line: &str) -> Option<(u32, u128, i32)> {
    // The log is tracing's text format, with colours: drop the escapes.
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    let at: jiff::Timestamp = plain.split_whitespace().next()?.parse().ok()?;
    let field = |name: &str| -> Option<String> {
        let v = plain.split(&format!(" {name}=")).nth(1)?;
        Some(
            v.chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect(),
        )
    };
    let pid = field("pid")?.parse().ok()?;
    let exit = field("exit")?.parse().ok()?;
    Some((pid, u128::try_from(at.as_nanosecond()).ok()?, exit))
}

/// Waits until the run records a mutation in flight (the claim written just
/// before a mutating rbd command starts).
pub async fn wait_in_flight(client: &Client, ns: &str, name: &str) {
    let api = customruns(client, ns);
    wait_for(
        60,
        &format!("a mutation of {ns}/{name} to be in flight"),
        || async {
            let o = api.get(name).await.ok()?;
            let f = &o.data["status"]["extraFields"]["progress"]["inFlight"];
            f.as_object().is_some_and(|m| !m.is_empty()).then_some(())
        },
    )
    .await;
}

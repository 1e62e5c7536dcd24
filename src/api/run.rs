//! Permissive views of Tekton's `CustomRun` (tekton.dev/v1beta1) and legacy
//! `Run` (tekton.dev/v1alpha1): only the fields this controller reads and
//! writes, every one optional, unknown ones ignored. The controller watches
//! every custom task's runs, so a foreign or malformed object must parse (or
//! fail to parse) without stalling anything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which Tekton API a run came from; the two differ in field names and reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `tekton.dev/v1beta1` CustomRun (Tekton >= 0.43; the only one since 0.47).
    CustomRun,
    /// `tekton.dev/v1alpha1` Run (Tekton <= 0.46).
    Run,
}

impl Flavor {
    pub fn api_resource(self) -> ApiResource {
        match self {
            Flavor::CustomRun => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("tekton.dev", "v1beta1", "CustomRun"),
                "customruns",
            ),
            Flavor::Run => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("tekton.dev", "v1alpha1", "Run"),
                "runs",
            ),
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Flavor::CustomRun => "CustomRun",
            Flavor::Run => "Run",
        }
    }
}

/// A reference to the custom task: `spec.customRef` (CustomRun) or `spec.ref` (Run).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRef {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// An embedded custom task: `spec.customSpec` (CustomRun) or `spec.spec` (Run).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedSpec {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub spec: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Param {
    #[serde(default)]
    pub name: String,
    /// A string, an array of strings or an object of strings (Tekton's ParamValue).
    #[serde(default)]
    pub value: Value,
}

/// The run's spec with both flavors' field names folded into one shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSpec {
    pub task_ref: Option<TaskRef>,
    pub embedded: Option<EmbeddedSpec>,
    pub params: Vec<Param>,
    /// `RunCancelled` when Tekton (or a user) cancels the run.
    pub status: Option<String>,
    pub status_message: Option<String>,
    pub retries: u32,
    /// Go duration string; absent means Tekton's default of 60 minutes.
    pub timeout: Option<String>,
    pub service_account_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    custom_ref: Option<TaskRef>,
    #[serde(default, rename = "ref")]
    legacy_ref: Option<TaskRef>,
    #[serde(default)]
    custom_spec: Option<EmbeddedSpec>,
    #[serde(default, rename = "spec")]
    legacy_spec: Option<EmbeddedSpec>,
    #[serde(default)]
    params: Option<Vec<Param>>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    status_message: Option<String>,
    #[serde(default)]
    retries: Option<i64>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    service_account_name: Option<String>,
}

/// One knative condition; the controller only ever writes type `Succeeded`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    pub value: String,
}

/// `status` of a CustomRun/Run: knative duck status plus the run fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<RunResult>,
    /// Earlier attempts, newest last; kept as raw JSON so nothing is lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries_status: Vec<Value>,
    /// This controller's own data: the resolved step and its progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_fields: Option<Value>,
}

/// A CustomRun or Run, as far as this controller is concerned.
#[derive(Clone, Debug)]
pub struct TektonRun {
    pub flavor: Flavor,
    pub metadata: ObjectMeta,
    pub spec: RunSpec,
    pub status: RunStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum RunParseError {
    #[error("{kind} {name}: spec is not a valid run spec: {source}")]
    Spec {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} {name}: status is not a valid run status: {source}")]
    Status {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl TektonRun {
    /// The reference this run makes to its custom task, whichever flavor, so
    /// a foreign run can be recognised (and ignored) before anything else is parsed.
    pub fn task_identity(obj: &DynamicObject) -> Option<(String, String)> {
        let spec = obj.data.get("spec")?;
        for key in ["customRef", "ref", "customSpec", "spec"] {
            if let Some(r) = spec.get(key) {
                let api = r.get("apiVersion").and_then(Value::as_str);
                let kind = r.get("kind").and_then(Value::as_str);
                if let (Some(a), Some(k)) = (api, kind) {
                    return Some((a.to_string(), k.to_string()));
                }
            }
        }
        None
    }

    pub fn from_dynamic(flavor: Flavor, obj: &DynamicObject) -> Result<TektonRun, RunParseError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let raw: RawSpec = match obj.data.get("spec") {
            None | Some(Value::Null) => RawSpec::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|source| RunParseError::Spec {
                kind: flavor.kind(),
                name: name.clone(),
                source,
            })?,
        };
        let status: RunStatus = match obj.data.get("status") {
            None | Some(Value::Null) => RunStatus::default(),
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|source| RunParseError::Status {
                    kind: flavor.kind(),
                    name,
                    source,
                })?
            }
        };
        let (task_ref, embedded) = match flavor {
            Flavor::CustomRun => (raw.custom_ref, raw.custom_spec),
            Flavor::Run => (raw.legacy_ref, raw.legacy_spec),
        };
        Ok(TektonRun {
            flavor,
            metadata: obj.metadata.clone(),
            spec: RunSpec {
                task_ref,
                embedded,
                params: raw.params.unwrap_or_default(),
                status: raw.status,
                status_message: raw.status_message,
                retries: raw.retries.unwrap_or(0).clamp(0, 1000) as u32,
                timeout: raw.timeout,
                service_account_name: raw.service_account_name.filter(|s| !s.is_empty()),
            },
            status,
        })
    }

    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("")
    }

    pub fn is_cancelled(&self) -> bool {
        self.spec.status.as_deref() == Some("RunCancelled")
    }
}

//! The `RbdMirrorStep` custom resource: a reusable, named step that a Tekton
//! task references with `taskRef: {apiVersion: rbdmirror.dev/v1alpha1, kind:
//! RbdMirrorStep, name: ...}`. Every field is optional because a run's params
//! override it and may supply what it leaves out.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "rbdmirror.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "RbdMirrorStep";
pub const API_VERSION: &str = "rbdmirror.dev/v1alpha1";

/// What one step does to the images it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read-only: report role, mirror state and last sync time; optionally wait for a state.
    Status,
    /// Make the images non-primary on `cluster`.
    Demote,
    /// Make the images primary on `cluster` (without `force`, only once the peer's demotion arrived).
    Promote,
    /// Discard the local non-primary copy and copy the image again from the primary.
    Resync,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::Demote => "demote",
            Action::Promote => "promote",
            Action::Resync => "resync",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "status" => Some(Action::Status),
            "demote" => Some(Action::Demote),
            "promote" => Some(Action::Promote),
            "resync" => Some(Action::Resync),
            _ => None,
        }
    }
}

/// The state a `status` step can wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WaitFor {
    Primary,
    NonPrimary,
    Replaying,
}

impl WaitFor {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitFor::Primary => "primary",
            WaitFor::NonPrimary => "non-primary",
            WaitFor::Replaying => "replaying",
        }
    }

    pub fn parse(s: &str) -> Option<WaitFor> {
        match s {
            "primary" => Some(WaitFor::Primary),
            "non-primary" => Some(WaitFor::NonPrimary),
            "replaying" => Some(WaitFor::Replaying),
            _ => None,
        }
    }
}

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbdmirror.dev",
    version = "v1alpha1",
    kind = "RbdMirrorStep",
    namespaced,
    shortname = "rms",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RbdMirrorStepSpec {
    /// `status`, `demote`, `promote` or `resync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Name of the Secret (in the run's namespace, labelled
    /// `rbdmirror.dev/ceph-connection: "true"`) holding the Ceph connection of the site to act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Secret of the other site, used for the safety checks of a promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_cluster: Option<String>,
    /// RBD pool holding the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// RADOS namespace inside the pool, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rados_namespace: Option<String>,
    /// Images as `image`, `pool/image` or `pool/namespace/image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// PersistentVolumeClaims (names, in `pvcNamespace`) whose ceph-csi RBD
    /// volumes are the images, instead of `images`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvcs: Option<Vec<String>>,
    /// A label selector (`app=db,tier in (a,b)`) choosing the PersistentVolumeClaims
    /// in `pvcNamespace` whose volumes are the images; it must match at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_selector: Option<String>,
    /// Namespace of the PersistentVolumeClaims (default: the run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_namespace: Option<String>,
    /// Act on every mirror-enabled image of the pool instead of `images`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_images: Option<bool>,
    /// Promote only: promote even though the peer did not demote (a human decision; loses the peer's unsynced writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Plan only: read everything the step would, change nothing, and report per image what it would do (`would-demote`, `would-promote`, `would-wait: ...`, `would-force: ...`, `would-resync`), failing where the real step would refuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Status only: wait (within the attempt's timeout) until every image is in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<WaitFor>,
    /// How many images are acted on at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: Option<u32>,
}

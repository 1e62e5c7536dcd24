//! Resolves a run into one validated step: params of the run override the
//! referenced (or embedded) `RbdMirrorStep` spec, which overrides defaults.
//! Pure: the referenced object is fetched by the caller.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pvc::SelectedPvcs;
use crate::api::{Action, Param, RbdMirrorStepSpec, WaitFor};
use crate::ceph::ImageSpec;
use crate::ceph::image::{check_namespace, check_pool};

pub const DEFAULT_CONCURRENCY: u32 = 8;
pub const MAX_CONCURRENCY: u32 = 64;
/// Bounds what one run may name, so results stay small enough for a status.
pub const MAX_IMAGES: usize = 500;
/// Bounds the bytes of the image names (`pool/[namespace/]image`) one run
/// acts on. Each name appears in four results and twice in extraFields, and
/// MAX_IMAGES names of the longest valid length (506 bytes) would make a
/// status of about 2 MB, over etcd's default object limit (1.5 MiB).
pub const MAX_NAME_BYTES: usize = 32 * 1024;

/// Refuses a selection whose names exceed MAX_NAME_BYTES.
pub fn check_name_budget<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), InvalidParams> {
    let (count, bytes) = names
        .into_iter()
        .fold((0usize, 0usize), |(n, b), s| (n + 1, b + s.len()));
    if bytes > MAX_NAME_BYTES {
        return invalid(format!(
            "the {count} image names take {bytes} bytes; one step acts on at most {MAX_NAME_BYTES} bytes of names (its results must fit in the run's status): split the images over several steps"
        ));
    }
    Ok(())
}

/// Which images a step acts on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Selection {
    Images(Vec<ImageSpecRepr>),
    AllImages,
}

/// `ImageSpec` as it is stored in `extraFields` (`pool/ns/image` string).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageSpecRepr(pub String);

/// A step ready to execute; stored in the run's `extraFields` so that a
/// restarted controller resumes exactly what was resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedStep {
    pub action: Action,
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_cluster: Option<String>,
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rados_namespace: Option<String>,
    pub selection: Selection,
    #[serde(default)]
    pub force: bool,
    /// Reads only: what the step would do (`dryRun`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<WaitFor>,
    pub concurrency: u32,
    /// The PVCs the images were selected by, resolved once when the run
    /// started (a selector is never evaluated again, not even on resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvcs: Option<SelectedPvcs>,
}

impl ResolvedStep {
    pub fn images(&self) -> Vec<ImageSpec> {
        match &self.selection {
            Selection::Images(list) => list
                .iter()
                .filter_map(|i| {
                    ImageSpec::parse(&i.0, &self.pool, self.rados_namespace.as_deref()).ok()
                })
                .collect(),
            Selection::AllImages => vec![],
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct InvalidParams(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, InvalidParams> {
    Err(InvalidParams(msg.into()))
}

const PARAM_NAMES: &[&str] = &[
    "action",
    "cluster",
    "peerCluster",
    "pool",
    "radosNamespace",
    "images",
    "pvcs",
    "pvcSelector",
    "pvcNamespace",
    "allImages",
    "force",
    "dryRun",
    "waitFor",
    "concurrency",
];

fn string_param(p: &Param) -> Result<String, InvalidParams> {
    match &p.value {
        Value::String(s) => Ok(s.trim().to_string()),
        other => invalid(format!(
            "param {:?} must be a string, got {}",
            p.name,
            kind_of(other)
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bool_param(p: &Param) -> Result<bool, InvalidParams> {
    match &p.value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.trim() {
            "true" => Ok(true),
            "false" | "" => Ok(false),
            other => invalid(format!(
                "param {:?} must be \"true\" or \"false\", got {other:?}",
                p.name
            )),
        },
        other => invalid(format!(
            "param {:?} must be \"true\" or \"false\", got {}",
            p.name,
            kind_of(other)
        )),
    }
}

/// `images` (and `pvcs`): an array param, a JSON array in a string (so one
/// step's `images` result feeds the next step), or one name.
fn images_param(p: &Param) -> Result<Vec<String>, InvalidParams> {
    let name = &p.name;
    let strings = |items: &Vec<Value>| -> Result<Vec<String>, InvalidParams> {
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.trim().to_string()),
                other => invalid(format!(
                    "param {name:?} must hold strings, got {}",
                    kind_of(other)
                )),
            })
            .collect()
    };
    match &p.value {
        Value::Array(items) => strings(items),
        Value::String(s) if s.trim_start().starts_with('[') => {
            match serde_json::from_str::<Value>(s) {
                Ok(Value::Array(items)) => strings(&items),
                _ => invalid(format!(
                    "param {name:?} is not a JSON array of strings: {s:?}"
                )),
            }
        }
        Value::String(s) if s.trim().is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![s.trim().to_string()]),
        other => invalid(format!(
            "param {name:?} must be an array of names, got {}",
            kind_of(other)
        )),
    }
}

/// The spec after params are laid over it.
pub fn overlay(
    base: &RbdMirrorStepSpec,
    params: &[Param],
) -> Result<RbdMirrorStepSpec, InvalidParams> {
    let mut spec = base.clone();
    let mut seen = std::collections::BTreeSet::new();
    for p in params {
        if !seen.insert(p.name.as_str()) {
            return invalid(format!("param {:?} is given twice", p.name));
        }
        match p.name.as_str() {
            "action" => {
                let s = string_param(p)?;
                spec.action = Some(Action::parse(&s).ok_or_else(|| {
                    InvalidParams(format!(
                        "unknown action {s:?}: use status, demote, promote or resync"
                    ))
                })?);
            }
            "cluster" => spec.cluster = Some(string_param(p)?),
            "peerCluster" => spec.peer_cluster = Some(string_param(p)?).filter(|s| !s.is_empty()),
            "pool" => spec.pool = Some(string_param(p)?),
            "radosNamespace" => {
                spec.rados_namespace = Some(string_param(p)?).filter(|s| !s.is_empty())
            }
            "images" => spec.images = Some(images_param(p)?),
            "pvcs" => spec.pvcs = Some(images_param(p)?),
            "pvcSelector" => spec.pvc_selector = Some(string_param(p)?),
            "pvcNamespace" => spec.pvc_namespace = Some(string_param(p)?).filter(|s| !s.is_empty()),
            "allImages" => spec.all_images = Some(bool_param(p)?),
            "force" => spec.force = Some(bool_param(p)?),
            "dryRun" => spec.dry_run = Some(bool_param(p)?),
            "waitFor" => {
                let s = string_param(p)?;
                spec.wait_for = if s.is_empty() {
                    None
                } else {
                    Some(WaitFor::parse(&s).ok_or_else(|| {
                        InvalidParams(format!(
                            "unknown waitFor {s:?}: use primary, non-primary or replaying"
                        ))
                    })?)
                };
            }
            "concurrency" => {
                let s = string_param(p)?;
                spec.concurrency = Some(s.parse().map_err(|_| {
                    InvalidParams(format!(
                        "param \"concurrency\" must be a whole number, got {s:?}"
                    ))
                })?);
            }
            other => {
                return invalid(format!(
                    "unknown param {other:?}; RbdMirrorStep takes {}",
                    PARAM_NAMES.join(", ")
                ));
            }
        }
    }
    Ok(spec)
}

/// A Kubernetes Secret name (DNS-1123 subdomain).
fn is_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_namespace_name(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_secret_name(s)
}

/// A connection Secret of the run's namespace, or `<namespace>/<secret>`:
/// a Rook cluster's CSI Secret (controller/secrets.rs).
fn check_secret_name(what: &str, s: &str) -> Result<(), InvalidParams> {
    let ok = match s.split_once('/') {
        Some((ns, name)) => is_namespace_name(ns) && is_secret_name(name),
        None => is_secret_name(s),
    };
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "{what} {s:?} is not a Secret name (lowercase letters, digits, '-' and '.') \
             nor <namespace>/<secret> (a Rook cluster's CSI Secret)"
        ))
    }
}

/// Validates the overlaid spec into a step.
pub fn validate(spec: &RbdMirrorStepSpec) -> Result<ResolvedStep, InvalidParams> {
    let Some(action) = spec.action else {
        return invalid("param \"action\" is required: status, demote, promote or resync");
    };
    let Some(cluster) = spec.cluster.clone().filter(|s| !s.is_empty()) else {
        return invalid(
            "param \"cluster\" is required: the name of the Ceph connection Secret of the site to act on",
        );
    };
    check_secret_name("cluster", &cluster)?;
    if let Some(peer) = &spec.peer_cluster {
        check_secret_name("peerCluster", peer)?;
        if *peer == cluster {
            return invalid(format!(
                "peerCluster {peer:?} is the same as cluster: name the other site's Secret"
            ));
        }
    }
    // Empty ones are a pipeline's defaults beside `images` (step/pvc.rs).
    if spec.pvcs.as_ref().is_some_and(|l| !l.is_empty())
        || spec
            .pvc_selector
            .as_ref()
            .is_some_and(|s| !s.trim().is_empty())
    {
        // The controller turns PVCs into images (controller/pvcs.rs) before
        // validating; only a step run without Kubernetes gets here with them.
        return invalid(
            "PVCs (pvcs, pvcSelector) are resolved to images by the controller, from the Kubernetes API; name the images instead",
        );
    }
    let pool = spec.pool.clone().unwrap_or_default();
    let namespace = spec.rados_namespace.clone();
    if let Some(ns) = &namespace {
        check_namespace(ns).map_err(|e| InvalidParams(e.to_string()))?;
    }
    let all = spec.all_images.unwrap_or(false);
    let selection = match (&spec.images, all) {
        (Some(list), false) => {
            if list.is_empty() {
                return invalid(
                    "param \"images\" is empty: name at least one image, or set allImages to \"true\"",
                );
            }
            if list.len() > MAX_IMAGES {
                return invalid(format!(
                    "{} images named; one step acts on at most {MAX_IMAGES}",
                    list.len()
                ));
            }
            let mut specs = Vec::with_capacity(list.len());
            for s in list {
                if pool.is_empty() && s.split('/').count() == 1 {
                    return invalid(format!(
                        "image {s:?} names no pool and param \"pool\" is not set"
                    ));
                }
                let parsed = ImageSpec::parse(s, &pool, namespace.as_deref())
                    .map_err(|e| InvalidParams(e.to_string()))?;
                let repr = ImageSpecRepr(parsed.to_string());
                if !specs.contains(&repr) {
                    specs.push(repr);
                }
            }
            check_name_budget(specs.iter().map(|s| s.0.as_str()))?;
            Selection::Images(specs)
        }
        (Some(list), true) if !list.is_empty() => {
            return invalid("give either \"images\" or allImages: \"true\", not both");
        }
        (_, true) => Selection::AllImages,
        (None, false) => {
            return invalid("param \"images\" is required (or set allImages to \"true\")");
        }
    };
    if !pool.is_empty() || matches!(selection, Selection::AllImages) {
        check_pool(&pool).map_err(|e| InvalidParams(format!("param \"pool\": {e}")))?;
    }
    let force = spec.force.unwrap_or(false);
    if force && !matches!(action, Action::Promote | Action::Demote) {
        return invalid(format!(
            "force applies to promote and demote, not {}",
            action.as_str()
        ));
    }
    if spec.wait_for.is_some() && action != Action::Status {
        return invalid(format!(
            "waitFor applies to status, not {}",
            action.as_str()
        ));
    }
    let concurrency = spec.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 || concurrency > MAX_CONCURRENCY {
        return invalid(format!(
            "concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
        ));
    }
    Ok(ResolvedStep {
        action,
        cluster,
        peer_cluster: spec.peer_cluster.clone(),
        pool,
        rados_namespace: namespace,
        selection,
        force,
        dry_run: spec.dry_run.unwrap_or(false),
        wait_for: spec.wait_for,
        concurrency,
        pvcs: None,
    })
}

/// Reads an embedded `customSpec.spec` as an `RbdMirrorStep` spec.
pub fn embedded_spec(raw: &Value) -> Result<RbdMirrorStepSpec, InvalidParams> {
    serde_json::from_value(raw.clone())
        .map_err(|e| InvalidParams(format!("customSpec.spec is not an RbdMirrorStep spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(name: &str, value: Value) -> Param {
        Param {
            name: name.into(),
            value,
        }
    }

    fn base() -> Vec<Param> {
        vec![
            p("action", json!("promote")),
            p("cluster", json!("site-b")),
            p("pool", json!("replicapool")),
            p("images", json!(["csi-vol-1", "csi-vol-2"])),
        ]
    }

    fn resolve(params: &[Param]) -> Result<ResolvedStep, InvalidParams> {
        validate(&overlay(&RbdMirrorStepSpec::default(), params)?)
    }

    #[test]
    fn params_resolve_into_a_step() {
        let s = resolve(&base()).unwrap();
        assert_eq!(s.action, Action::Promote);
        assert_eq!(
            s.selection,
            Selection::Images(vec![
                ImageSpecRepr("replicapool/csi-vol-1".into()),
                ImageSpecRepr("replicapool/csi-vol-2".into())
            ])
        );
        assert_eq!(s.concurrency, DEFAULT_CONCURRENCY);
    }

    #[test]
    fn a_cluster_may_name_a_rook_secret_of_another_namespace() {
        let mut b = base();
        b[1] = p("cluster", json!("rook-ceph/rook-csi-rbd-provisioner"));
        b.push(p(
            "peerCluster",
            json!("rook-ceph-b/rook-csi-rbd-provisioner"),
        ));
        let s = resolve(&b).unwrap();
        assert_eq!(s.cluster, "rook-ceph/rook-csi-rbd-provisioner");
        assert_eq!(
            s.peer_cluster.as_deref(),
            Some("rook-ceph-b/rook-csi-rbd-provisioner")
        );
    }

    #[test]
    fn params_override_the_referenced_spec() {
        let spec = RbdMirrorStepSpec {
            action: Some(Action::Demote),
            cluster: Some("site-a".into()),
            pool: Some("replicapool".into()),
            images: Some(vec!["x".into()]),
            concurrency: Some(2),
            ..Default::default()
        };
        let s = validate(&overlay(&spec, &[p("cluster", json!("site-b"))]).unwrap()).unwrap();
        assert_eq!(
            (s.action, s.cluster.as_str(), s.concurrency),
            (Action::Demote, "site-b", 2)
        );
    }

    #[test]
    fn names_beyond_the_byte_budget_are_refused() {
        let mut ps = base();
        let long: Vec<String> = (0..MAX_IMAGES).map(|i| format!("{i:0>250}")).collect();
        ps[3] = p("images", json!(long));
        let e = resolve(&ps).unwrap_err();
        assert!(e.0.contains("bytes of names"), "{e}");
        ps[3] = p("images", json!(long[..100].to_vec()));
        assert!(resolve(&ps).is_ok());
    }

    #[test]
    fn images_result_of_one_step_feeds_the_next() {
        let mut ps = base();
        ps[3] = p(
            "images",
            json!("[\"replicapool/csi-vol-1\",\"other/ns/img\"]"),
        );
        let s = resolve(&ps).unwrap();
        assert_eq!(
            s.selection,
            Selection::Images(vec![
                ImageSpecRepr("replicapool/csi-vol-1".into()),
                ImageSpecRepr("other/ns/img".into())
            ])
        );
    }

    #[test]
    fn bad_input_is_refused_with_a_message() {
        let cases: Vec<(Vec<Param>, &str)> = vec![
            (vec![p("action", json!("failover"))], "unknown action"),
            (
                vec![p("action", json!("promote"))],
                "\"cluster\" is required",
            ),
            (
                vec![
                    p("action", json!("promote")),
                    p("cluster", json!("Site_B")),
                    p("pool", json!("p")),
                    p("images", json!(["a"])),
                ],
                "not a Secret name",
            ),
            (
                vec![
                    p("action", json!("promote")),
                    p("cluster", json!("rook.ceph/rook-csi-rbd-provisioner")),
                    p("pool", json!("p")),
                    p("images", json!(["a"])),
                ],
                "nor <namespace>/<secret>",
            ),
            (
                vec![
                    p("action", json!("promote")),
                    p("cluster", json!("rook-ceph/a/b")),
                    p("pool", json!("p")),
                    p("images", json!(["a"])),
                ],
                "nor <namespace>/<secret>",
            ),
            (
                vec![
                    p("action", json!("promote")),
                    p("cluster", json!("site-a")),
                    p("peerCluster", json!("/rook-csi-rbd-provisioner")),
                    p("pool", json!("p")),
                    p("images", json!(["a"])),
                ],
                "peerCluster \"/rook-csi-rbd-provisioner\" is not a Secret name",
            ),
            (
                {
                    let mut b = base();
                    b[3] = p("images", json!([]));
                    b
                },
                "is empty",
            ),
            (
                {
                    let mut b = base();
                    b[3] = p("images", json!(["a@snap"]));
                    b
                },
                "image name",
            ),
            (
                {
                    let mut b = base();
                    b[3] = p("images", json!("[not json"));
                    b
                },
                "not a JSON array",
            ),
            (
                {
                    let mut b = base();
                    b.push(p("imgs", json!("x")));
                    b
                },
                "unknown param",
            ),
            (
                {
                    let mut b = base();
                    b.push(p("pool", json!("x")));
                    b
                },
                "given twice",
            ),
            (
                {
                    let mut b = base();
                    b.push(p("concurrency", json!("0")));
                    b
                },
                "between 1 and",
            ),
            (
                {
                    let mut b = base();
                    b.push(p("concurrency", json!("many")));
                    b
                },
                "whole number",
            ),
            (
                {
                    let mut b = base();
                    b.push(p("waitFor", json!("primary")));
                    b
                },
                "waitFor applies to status",
            ),
            (
                {
                    let mut b = base();
                    b.push(p("force", json!("yes")));
                    b
                },
                "\"true\" or \"false\"",
            ),
            (
                {
                    let mut b = base();
                    b.push(p("peerCluster", json!("site-b")));
                    b
                },
                "same as cluster",
            ),
            (
                {
                    let mut b = base();
                    b.push(p("allImages", json!("true")));
                    b
                },
                "not both",
            ),
            (
                // Without the controller (the direct `step` command) no
                // Kubernetes API can turn claims into images.
                {
                    let mut b = base();
                    b[3] = p("pvcSelector", json!("app=db"));
                    b
                },
                "resolved to images by the controller",
            ),
            (
                {
                    let mut b = base();
                    b[2] = p("pool", json!("-x"));
                    b
                },
                "pool",
            ),
            (
                {
                    let mut b = base();
                    b.remove(2);
                    b
                },
                "names no pool",
            ),
            (
                {
                    let mut b = base();
                    b[0] = p("action", json!(["promote"]));
                    b
                },
                "must be a string",
            ),
            (
                {
                    let mut b = base();
                    b[0] = p("action", json!("resync"));
                    b.push(p("force", json!("true")));
                    b
                },
                "force applies",
            ),
        ];
        for (params, expected) in cases {
            let err = resolve(&params).expect_err(expected);
            assert!(
                err.0.contains(expected),
                "{:?} should mention {expected:?}",
                err.0
            );
        }
    }

    #[test]
    fn all_images_needs_only_a_pool() {
        let s = resolve(&[
            p("action", json!("status")),
            p("cluster", json!("site-a")),
            p("pool", json!("replicapool")),
            p("allImages", json!("true")),
            p("waitFor", json!("replaying")),
        ])
        .unwrap();
        assert_eq!(s.selection, Selection::AllImages);
        assert_eq!(s.wait_for, Some(WaitFor::Replaying));
    }

    #[test]
    fn resolved_step_round_trips_through_extra_fields() {
        let s = resolve(&base()).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<ResolvedStep>(v).unwrap(), s);
    }
}

//! Images selected by PersistentVolumeClaim: the `pvcs` / `pvcSelector` /
//! `pvcNamespace` params, and the mapping from a bound claim's ceph-csi
//! PersistentVolume to its RBD image. Pure: the Kubernetes reads that feed
//! it are in controller/pvcs.rs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::outcome::{Progress, outcome_of};
use super::resolve::{ImageSpecRepr, InvalidParams, MAX_IMAGES, ResolvedStep};
use crate::api::{RbdMirrorStepSpec, RunResult};
use crate::ceph::ImageSpec;
use crate::ceph::image::{check_image, check_namespace, check_pool};

/// The CSI driver of ceph-csi's RBD plugin. Rook names it after its operator
/// namespace: `rook-ceph.rbd.csi.ceph.com`.
pub const RBD_DRIVER: &str = "rbd.csi.ceph.com";

pub fn is_rbd_driver(driver: &str) -> bool {
    driver == RBD_DRIVER
        || driver
            .strip_suffix(RBD_DRIVER)
            .and_then(|p| p.strip_suffix('.'))
            .is_some_and(|p| !p.is_empty())
}

/// Which claims a step names.
#[derive(Clone, Debug, PartialEq)]
pub enum PvcQuery {
    Names(Vec<String>),
    /// A label selector, as the API server's `labelSelector` takes it.
    Selector(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct PvcRequest {
    pub namespace: String,
    pub query: PvcQuery,
}

/// What a step selected by PVC records in its resolved step: each claim and
/// the image it was resolved to, once, when the run started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectedPvcs {
    pub namespace: String,
    /// PVC name → `pool/[namespace/]image`.
    pub images: BTreeMap<String, ImageSpecRepr>,
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, InvalidParams> {
    Err(InvalidParams(msg.into()))
}

/// A Kubernetes object name (DNS-1123 subdomain), as PVC names are.
fn is_object_name(s: &str, max: usize, dots: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The claims a step names, if it names any; refuses params that mix ways of
/// selecting images or name no claim.
pub fn request(
    spec: &RbdMirrorStepSpec,
    run_namespace: &str,
) -> Result<Option<PvcRequest>, InvalidParams> {
    // A pipeline passes every param it declares, empty by default: an empty
    // way of selecting beside a non-empty one is "not this way", so one
    // pipeline can take either images or PVCs. Alone, an empty one is an
    // error below (it selects nothing, or for a selector, everything).
    let images_given =
        spec.images.as_ref().is_some_and(|l| !l.is_empty()) || spec.all_images == Some(true);
    let names_given = spec.pvcs.as_ref().is_some_and(|l| !l.is_empty());
    let selector_given = spec
        .pvc_selector
        .as_ref()
        .is_some_and(|s| !s.trim().is_empty());
    let pvcs = spec
        .pvcs
        .as_ref()
        .filter(|l| !l.is_empty() || !(images_given || selector_given));
    let selector = spec
        .pvc_selector
        .as_ref()
        .filter(|s| !s.trim().is_empty() || !(images_given || names_given));
    let query = match (pvcs, selector) {
        (None, None) => {
            if let Some(ns) = &spec.pvc_namespace {
                return invalid(format!(
                    "param \"pvcNamespace\" ({ns:?}) applies only with \"pvcs\" or \"pvcSelector\""
                ));
            }
            return Ok(None);
        }
        (Some(_), Some(_)) => {
            return invalid("give either \"pvcs\" or \"pvcSelector\", not both");
        }
        (Some(names), None) => {
            if names.is_empty() {
                return invalid("param \"pvcs\" is empty: name at least one PersistentVolumeClaim");
            }
            if names.len() > MAX_IMAGES {
                return invalid(format!(
                    "{} PVCs named; one step acts on at most {MAX_IMAGES}",
                    names.len()
                ));
            }
            let mut unique: Vec<String> = Vec::with_capacity(names.len());
            for n in names {
                if !is_object_name(n, 253, true) {
                    return invalid(format!(
                        "PVC name {n:?} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')"
                    ));
                }
                if !unique.contains(n) {
                    unique.push(n.clone());
                }
            }
            PvcQuery::Names(unique)
        }
        (None, Some(sel)) => {
            // An empty selector matches every claim of the namespace: never
            // what a failover means, so it is refused rather than guessed.
            if sel.trim().is_empty() {
                return invalid(
                    "param \"pvcSelector\" is empty: an empty selector would select every PVC of the namespace; give a label selector such as app=db",
                );
            }
            PvcQuery::Selector(sel.trim().to_string())
        }
    };
    if spec.images.as_ref().is_some_and(|l| !l.is_empty()) {
        return invalid("give either \"images\" or PVCs (\"pvcs\", \"pvcSelector\"), not both");
    }
    if spec.all_images == Some(true) {
        return invalid(
            "give either allImages: \"true\" or PVCs (\"pvcs\", \"pvcSelector\"), not both",
        );
    }
    let namespace = spec
        .pvc_namespace
        .clone()
        .unwrap_or_else(|| run_namespace.to_string());
    if !is_object_name(&namespace, 63, false) {
        return invalid(format!(
            "param \"pvcNamespace\" {namespace:?} is not a namespace name"
        ));
    }
    Ok(Some(PvcRequest { namespace, query }))
}

/// Why a claim cannot be acted on. Every message names the claim.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PvcError {
    #[error("PVC {namespace}/{pvc} does not exist")]
    NotFound { namespace: String, pvc: String },
    #[error(
        "PVC {namespace}/{pvc} is {phase}, not Bound: it has no volume yet, so it names no image"
    )]
    NotBound {
        namespace: String,
        pvc: String,
        phase: String,
    },
    #[error("PVC {namespace}/{pvc} is bound to PersistentVolume {pv}, which does not exist")]
    PvNotFound {
        namespace: String,
        pvc: String,
        pv: String,
    },
    #[error(
        "PVC {namespace}/{pvc} names PersistentVolume {pv}, but that volume is bound to {claim}: not acting on a volume the claim does not own"
    )]
    ClaimMismatch {
        namespace: String,
        pvc: String,
        pv: String,
        claim: String,
    },
    #[error("PVC {namespace}/{pvc} is not a ceph-csi RBD volume: its PersistentVolume {pv} {what}")]
    NotRbd {
        namespace: String,
        pvc: String,
        pv: String,
        what: String,
    },
    #[error(
        "PVC {namespace}/{pvc}: its PersistentVolume {pv} has no volumeAttributes.{attribute}, which ceph-csi writes on every RBD volume"
    )]
    MissingAttribute {
        namespace: String,
        pvc: String,
        pv: String,
        attribute: &'static str,
    },
    #[error("PVC {namespace}/{pvc}: its PersistentVolume {pv} names {detail}")]
    BadName {
        namespace: String,
        pvc: String,
        pv: String,
        detail: String,
    },
    #[error(
        "PVC {namespace}/{pvc}: its PersistentVolume {pv} names ceph-csi cluster {cluster_id:?}, which the ceph-csi config has no entry for, so its RADOS namespace is unknown"
    )]
    UnknownCluster {
        namespace: String,
        pvc: String,
        pv: String,
        cluster_id: String,
    },
    #[error(
        "no PVC in namespace {namespace} matches pvcSelector {selector:?}: nothing to act on (check the labels with `kubectl get pvc -n {namespace} -l '{selector}'`)"
    )]
    NoMatch { namespace: String, selector: String },
    #[error(
        "pvcSelector {selector:?} matches {count} PVCs in namespace {namespace}; one step acts on at most {MAX_IMAGES}"
    )]
    TooMany {
        namespace: String,
        selector: String,
        count: usize,
    },
    #[error(
        "PVC {namespace}/{pvc} is a volume in pool {found}, not in pool {pool} (param \"pool\")"
    )]
    OtherPool {
        namespace: String,
        pvc: String,
        found: String,
        pool: String,
    },
    #[error(
        "PVC {namespace}/{pvc} is a volume in RADOS namespace {found:?}, not in {wanted:?} (param \"radosNamespace\")"
    )]
    OtherNamespace {
        namespace: String,
        pvc: String,
        found: String,
        wanted: String,
    },
    #[error(
        "PVCs {namespace}/{first} and {namespace}/{second} are volumes of different Ceph clusters (ceph-csi clusterID {first_cluster:?} and {second_cluster:?}); one step acts on one cluster"
    )]
    MixedClusters {
        namespace: String,
        first: String,
        first_cluster: String,
        second: String,
        second_cluster: String,
    },
}

/// The name of the PersistentVolume a claim is bound to.
pub fn bound_volume(namespace: &str, pvc: &PersistentVolumeClaim) -> Result<String, PvcError> {
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty());
    match (phase.as_str(), volume) {
        ("Bound", Some(v)) => Ok(v),
        _ => Err(PvcError::NotBound {
            namespace: namespace.into(),
            pvc: name,
            phase,
        }),
    }
}

/// ceph-csi's config (its `config.json`: one entry per clusterID) reduced to
/// what a volume needs from it: each cluster's RADOS namespace for RBD.
/// Current ceph-csi has it at `rbd.radosNamespace`, older at `radosNamespace`.
pub fn csi_rados_namespaces(config_json: &str) -> Result<BTreeMap<String, String>, String> {
    let v: Value = serde_json::from_str(config_json)
        .map_err(|e| format!("the ceph-csi config is not JSON: {e}"))?;
    let entries = v
        .as_array()
        .ok_or("the ceph-csi config is not a JSON array of clusters")?;
    let mut out = BTreeMap::new();
    for e in entries {
        let Some(id) = e["clusterID"].as_str() else {
            continue;
        };
        let ns = e["rbd"]["radosNamespace"]
            .as_str()
            .or(e["radosNamespace"].as_str())
            .unwrap_or("");
        out.insert(id.to_string(), ns.to_string());
    }
    Ok(out)
}

/// One claim resolved to its image.
#[derive(Clone, Debug, PartialEq)]
pub struct PvcVolume {
    pub pvc: String,
    pub pv: String,
    /// ceph-csi's name of the Ceph cluster (`volumeAttributes.clusterID`).
    pub cluster_id: String,
    pub image: ImageSpec,
}

/// The RBD image of a claim's PersistentVolume, as ceph-csi wrote it:
/// `volumeAttributes.pool` + `imageName` (+ `radosNamespace`, which ceph-csi
/// writes only when it is set), or for a static volume (`staticVolume:
/// "true"`) the image named by `volumeHandle`. A volume without
/// `radosNamespace` takes its cluster's entry of the ceph-csi config when
/// one is given (`csi`), else none.
pub fn volume_of(
    namespace: &str,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
    csi: Option<&BTreeMap<String, String>>,
) -> Result<PvcVolume, PvcError> {
    let pvc_name = pvc.metadata.name.clone().unwrap_or_default();
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let spec = pv.spec.clone().unwrap_or_default();
    // The claim's volumeName alone does not make the volume its own: the
    // volume must name the claim back (and the same object, by UID).
    if let Some(c) = &spec.claim_ref {
        let same_name = c.namespace.as_deref() == Some(namespace)
            && c.name.as_deref() == Some(pvc_name.as_str());
        let same_uid = match (&c.uid, &pvc.metadata.uid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if !(same_name && same_uid) {
            return Err(PvcError::ClaimMismatch {
                namespace: namespace.into(),
                pvc: pvc_name,
                pv: pv_name,
                claim: format!(
                    "{}/{}{}",
                    c.namespace.as_deref().unwrap_or(""),
                    c.name.as_deref().unwrap_or(""),
                    if same_name {
                        " (an earlier claim of that name)"
                    } else {
                        ""
                    }
                ),
            });
        }
    } else {
        return Err(PvcError::ClaimMismatch {
            namespace: namespace.into(),
            pvc: pvc_name,
            pv: pv_name,
            claim: "no claim".into(),
        });
    }
    let not_rbd = |what: String| PvcError::NotRbd {
        namespace: namespace.into(),
        pvc: pvc_name.clone(),
        pv: pv_name.clone(),
        what,
    };
    let Some(csi_source) = spec.csi else {
        return Err(not_rbd("is not a CSI volume".into()));
    };
    if !is_rbd_driver(&csi_source.driver) {
        return Err(not_rbd(format!(
            "is a volume of CSI driver {:?}, not {RBD_DRIVER} (or <prefix>.{RBD_DRIVER})",
            csi_source.driver
        )));
    }
    let attrs = csi_source.volume_attributes.unwrap_or_default();
    let attr = |attribute: &'static str| {
        attrs
            .get(attribute)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| PvcError::MissingAttribute {
                namespace: namespace.into(),
                pvc: pvc_name.clone(),
                pv: pv_name.clone(),
                attribute,
            })
    };
    let cluster_id = attr("clusterID")?;
    let pool = attr("pool")?;
    let image = if attrs.get("staticVolume").map(String::as_str) == Some("true") {
        csi_source.volume_handle.clone()
    } else {
        attr("imageName")?
    };
    let rados_namespace = match attrs.get("radosNamespace").filter(|v| !v.is_empty()) {
        Some(ns) => Some(ns.clone()),
        None => match csi {
            None => None,
            Some(config) => match config.get(&cluster_id) {
                Some(ns) => Some(ns.clone()).filter(|n| !n.is_empty()),
                None => {
                    return Err(PvcError::UnknownCluster {
                        namespace: namespace.into(),
                        pvc: pvc_name,
                        pv: pv_name,
                        cluster_id,
                    });
                }
            },
        },
    };
    let bad = |detail: String| PvcError::BadName {
        namespace: namespace.into(),
        pvc: pvc_name.clone(),
        pv: pv_name.clone(),
        detail,
    };
    check_pool(&pool).map_err(|e| bad(e.to_string()))?;
    check_image(&image).map_err(|e| bad(e.to_string()))?;
    if let Some(ns) = &rados_namespace {
        check_namespace(ns).map_err(|e| bad(e.to_string()))?;
    }
    Ok(PvcVolume {
        pvc: pvc_name.clone(),
        pv: pv_name.clone(),
        cluster_id,
        image: ImageSpec {
            pool,
            namespace: rados_namespace,
            image,
        },
    })
}

/// The images of the resolved claims.
#[derive(Clone, Debug, PartialEq)]
pub struct Selected {
    /// `pool/[namespace/]image`, once each, in claim order.
    pub images: Vec<String>,
    /// The pool all claims share, if they share one.
    pub pool: Option<String>,
    pub record: SelectedPvcs,
}

/// Checks the resolved claims against each other and against the step's
/// `pool` and `radosNamespace` params (when given).
pub fn select(
    request: &PvcRequest,
    volumes: Vec<PvcVolume>,
    pool: Option<&str>,
    rados_namespace: Option<&str>,
) -> Result<Selected, PvcError> {
    let ns = &request.namespace;
    if volumes.is_empty() {
        let selector = match &request.query {
            PvcQuery::Selector(s) => s.clone(),
            PvcQuery::Names(n) => n.join(","),
        };
        return Err(PvcError::NoMatch {
            namespace: ns.clone(),
            selector,
        });
    }
    if let PvcQuery::Selector(s) = &request.query
        && volumes.len() > MAX_IMAGES
    {
        return Err(PvcError::TooMany {
            namespace: ns.clone(),
            selector: s.clone(),
            count: volumes.len(),
        });
    }
    let first = &volumes[0];
    let mut images = Vec::with_capacity(volumes.len());
    let mut record = BTreeMap::new();
    for v in &volumes {
        if let Some(p) = pool.filter(|p| !p.is_empty())
            && v.image.pool != p
        {
            return Err(PvcError::OtherPool {
                namespace: ns.clone(),
                pvc: v.pvc.clone(),
                found: v.image.pool.clone(),
                pool: p.into(),
            });
        }
        if let Some(want) = rados_namespace
            && v.image.namespace.as_deref() != Some(want)
        {
            return Err(PvcError::OtherNamespace {
                namespace: ns.clone(),
                pvc: v.pvc.clone(),
                found: v.image.namespace.clone().unwrap_or_default(),
                wanted: want.into(),
            });
        }
        if v.cluster_id != first.cluster_id {
            return Err(PvcError::MixedClusters {
                namespace: ns.clone(),
                first: first.pvc.clone(),
                first_cluster: first.cluster_id.clone(),
                second: v.pvc.clone(),
                second_cluster: v.cluster_id.clone(),
            });
        }
        let name = v.image.to_string();
        if !images.contains(&name) {
            images.push(name.clone());
        }
        record.insert(v.pvc.clone(), ImageSpecRepr(name));
    }
    let common = volumes
        .iter()
        .all(|v| v.image.pool == first.image.pool)
        .then(|| first.image.pool.clone());
    Ok(Selected {
        images,
        pool: common,
        record: SelectedPvcs {
            namespace: ns.clone(),
            images: record,
        },
    })
}

/// The results of a step selected by PVC, beside the per-image ones: `pvcs`
/// (PVC → image) and `pvcOutcomes` (PVC → the outcome of its image). The
/// per-image results keep their shape, so a later step takes `images`
/// whichever way the first step selected them.
///
/// Empty maps when the step selected no claims: a pipeline's results may
/// name them whichever way a run selects (Tekton fails a PipelineRun whose
/// result names a task result that was not written).
pub fn pvc_results(step: &ResolvedStep, progress: &Progress) -> Vec<RunResult> {
    let Some(sel) = &step.pvcs else {
        return ["pvcs", "pvcOutcomes"]
            .into_iter()
            .map(|name| RunResult {
                name: name.into(),
                value: "{}".into(),
            })
            .collect();
    };
    let images: BTreeMap<&str, &str> = sel
        .images
        .iter()
        .map(|(p, i)| (p.as_str(), i.0.as_str()))
        .collect();
    let outcomes: BTreeMap<&str, String> = sel
        .images
        .iter()
        .map(|(p, i)| (p.as_str(), outcome_of(&i.0, progress)))
        .collect();
    vec![
        RunResult {
            name: "pvcs".into(),
            value: serde_json::to_string(&images).unwrap_or_default(),
        },
        RunResult {
            name: "pvcOutcomes".into(),
            value: serde_json::to_string(&outcomes).unwrap_or_default(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvc(name: &str, phase: &str, volume: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "app", "uid": format!("uid-{name}")},
            "spec": {"volumeName": volume, "storageClassName": "ceph-rbd"},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    /// A PersistentVolume as ceph-csi (through Rook) provisions it.
    fn pv(name: &str, claim: &str, attrs: Value) -> PersistentVolume {
        let mut a = json!({
            "clusterID": "rook-ceph",
            "imageFeatures": "layering",
            "imageName": format!("csi-vol-{name}"),
            "journalPool": "replicapool",
            "pool": "replicapool",
            "storage.kubernetes.io/csiProvisionerIdentity": "1700000000000-8081-rook-ceph.rbd.csi.ceph.com",
        });
        for (k, v) in attrs.as_object().unwrap() {
            if v.is_null() {
                a.as_object_mut().unwrap().remove(k);
            } else {
                a[k] = v.clone();
            }
        }
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "claimRef": {"namespace": "app", "name": claim, "uid": format!("uid-{claim}")},
                "csi": {
                    "driver": "rook-ceph.rbd.csi.ceph.com",
                    "volumeHandle": format!("0001-0009-rook-ceph-0000000000000002-{name}"),
                    "volumeAttributes": a,
                },
            },
        }))
        .unwrap()
    }

    fn map(c: &PersistentVolumeClaim, v: &PersistentVolume) -> Result<PvcVolume, PvcError> {
        volume_of("app", c, v, None)
    }

    #[test]
    fn a_provisioned_volume_maps_to_pool_and_image() {
        let c = pvc("data", "Bound", Some("pv-1"));
        assert_eq!(bound_volume("app", &c).unwrap(), "pv-1");
        let v = map(&c, &pv("pv-1", "data", json!({}))).unwrap();
        assert_eq!(v.image.to_string(), "replicapool/csi-vol-pv-1");
        assert_eq!(
            (v.pvc.as_str(), v.cluster_id.as_str()),
            ("data", "rook-ceph")
        );
        let v = map(&c, &pv("pv-1", "data", json!({"radosNamespace": "tenant"}))).unwrap();
        assert_eq!(v.image.to_string(), "replicapool/tenant/csi-vol-pv-1");
    }

    #[test]
    fn a_static_volume_is_the_image_its_handle_names() {
        let c = pvc("data", "Bound", Some("pv-1"));
        let mut v = pv(
            "pv-1",
            "data",
            json!({"staticVolume": "true", "imageName": null}),
        );
        v.spec.as_mut().unwrap().csi.as_mut().unwrap().volume_handle = "legacy-image".into();
        assert_eq!(
            map(&c, &v).unwrap().image.to_string(),
            "replicapool/legacy-image"
        );
    }

    #[test]
    fn the_driver_may_carry_rooks_prefix() {
        assert!(is_rbd_driver("rbd.csi.ceph.com"));
        assert!(is_rbd_driver("rook-ceph.rbd.csi.ceph.com"));
        assert!(!is_rbd_driver("cephfs.csi.ceph.com"));
        assert!(!is_rbd_driver(".rbd.csi.ceph.com"));
        assert!(!is_rbd_driver("evilrbd.csi.ceph.com"));
    }

    #[test]
    fn older_ceph_csi_takes_the_namespace_from_its_config() {
        let config = csi_rados_namespaces(
            r#"[{"clusterID":"rook-ceph","monitors":["10.0.0.1:6789"],"rbd":{"radosNamespace":"tenant"}},
                {"clusterID":"old","radosNamespace":"legacy"},{"clusterID":"plain"}]"#,
        )
        .unwrap();
        let c = pvc("data", "Bound", Some("pv-1"));
        let v = pv("pv-1", "data", json!({}));
        let got = volume_of("app", &c, &v, Some(&config)).unwrap();
        assert_eq!(got.image.to_string(), "replicapool/tenant/csi-vol-pv-1");
        let v = pv("pv-1", "data", json!({"clusterID": "old"}));
        let got = volume_of("app", &c, &v, Some(&config)).unwrap();
        assert_eq!(got.image.namespace.as_deref(), Some("legacy"));
        let v = pv("pv-1", "data", json!({"clusterID": "plain"}));
        assert_eq!(
            volume_of("app", &c, &v, Some(&config))
                .unwrap()
                .image
                .namespace,
            None
        );
        // The PV's own attribute wins over the config.
        let v = pv("pv-1", "data", json!({"radosNamespace": "own"}));
        let got = volume_of("app", &c, &v, Some(&config)).unwrap();
        assert_eq!(got.image.namespace.as_deref(), Some("own"));
        let v = pv("pv-1", "data", json!({"clusterID": "elsewhere"}));
        let e = volume_of("app", &c, &v, Some(&config)).unwrap_err();
        assert!(
            e.to_string().contains("PVC app/data") && e.to_string().contains("elsewhere"),
            "{e}"
        );
        assert!(csi_rados_namespaces("{}").is_err());
        assert!(csi_rados_namespaces("not json").is_err());
    }

    #[test]
    fn bad_volumes_are_refused_naming_the_claim() {
        let c = pvc("data", "Bound", Some("pv-1"));
        let no_csi: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv-1"},
            "spec": {"claimRef": {"namespace": "app", "name": "data"}, "hostPath": {"path": "/x"}},
        }))
        .unwrap();
        let mut cephfs = pv("pv-1", "data", json!({}));
        cephfs.spec.as_mut().unwrap().csi.as_mut().unwrap().driver =
            "rook-ceph.cephfs.csi.ceph.com".into();
        let mut no_claim = pv("pv-1", "data", json!({}));
        no_claim.spec.as_mut().unwrap().claim_ref = None;
        let mut old_uid = pv("pv-1", "data", json!({}));
        old_uid
            .spec
            .as_mut()
            .unwrap()
            .claim_ref
            .as_mut()
            .unwrap()
            .uid = Some("uid-gone".into());
        // A static volume's handle is the image name: a handle that is no
        // RBD name is refused like a bad imageName.
        let mut static_bad = pv(
            "pv-1",
            "data",
            json!({"staticVolume": "true", "imageName": null}),
        );
        static_bad
            .spec
            .as_mut()
            .unwrap()
            .csi
            .as_mut()
            .unwrap()
            .volume_handle = "a b".into();
        let cases: Vec<(PersistentVolume, &str)> = vec![
            (no_csi, "is not a CSI volume"),
            (cephfs, "cephfs.csi.ceph.com"),
            (pv("pv-1", "other", json!({})), "bound to app/other"),
            (no_claim, "no claim"),
            (old_uid, "an earlier claim"),
            (pv("pv-1", "data", json!({"imageName": null})), "imageName"),
            (
                pv("pv-1", "data", json!({"pool": null})),
                "volumeAttributes.pool",
            ),
            (pv("pv-1", "data", json!({"clusterID": ""})), "clusterID"),
            (
                pv("pv-1", "data", json!({"imageName": "--help"})),
                "image name",
            ),
            (pv("pv-1", "data", json!({"pool": "a/b"})), "pool name"),
            (
                pv("pv-1", "data", json!({"radosNamespace": "x y"})),
                "namespace name",
            ),
            (static_bad, "image name"),
        ];
        for (v, expected) in cases {
            let e = map(&c, &v).expect_err(expected).to_string();
            assert!(e.contains("PVC app/data"), "{e}");
            assert!(e.contains(expected), "{e:?} should mention {expected:?}");
        }
        for (phase, volume) in [("Pending", None), ("Lost", Some("pv-1")), ("Bound", None)] {
            let e = bound_volume("app", &pvc("data", phase, volume)).unwrap_err();
            assert!(matches!(e, PvcError::NotBound { .. }), "{e}");
            assert!(e.to_string().contains("PVC app/data is"), "{e}");
        }
    }

    fn req(query: PvcQuery) -> PvcRequest {
        PvcRequest {
            namespace: "app".into(),
            query,
        }
    }

    fn vol(pvc: &str, image: &str, cluster: &str) -> PvcVolume {
        PvcVolume {
            pvc: pvc.into(),
            pv: format!("pv-{pvc}"),
            cluster_id: cluster.into(),
            image: ImageSpec::parse(image, "", None).unwrap(),
        }
    }

    #[test]
    fn selected_claims_name_their_images() {
        let r = req(PvcQuery::Selector("app=db".into()));
        let s = select(
            &r,
            vec![
                vol("b", "replicapool/img-b", "c"),
                vol("a", "replicapool/img-a", "c"),
            ],
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.images, ["replicapool/img-b", "replicapool/img-a"]);
        assert_eq!(s.pool.as_deref(), Some("replicapool"));
        assert_eq!(s.record.images["a"].0, "replicapool/img-a");
        // Claims in two pools are fine when no pool is given: names are full.
        let s = select(
            &r,
            vec![vol("a", "p1/x", "c"), vol("b", "p2/y", "c")],
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.pool, None);
    }

    #[test]
    fn claims_that_do_not_fit_the_step_are_refused() {
        let r = req(PvcQuery::Selector("app=db".into()));
        // (claims, param pool, param radosNamespace, expected message)
        type Case<'a> = (Vec<PvcVolume>, Option<&'a str>, Option<&'a str>, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![],
                None,
                None,
                "no PVC in namespace app matches pvcSelector \"app=db\"",
            ),
            (
                vec![vol("a", "replicapool/x", "c"), vol("b", "other/y", "c")],
                Some("replicapool"),
                None,
                "PVC app/b is a volume in pool other, not in pool replicapool",
            ),
            (
                vec![vol("a", "replicapool/x", "c")],
                None,
                Some("tenant"),
                "PVC app/a is a volume in RADOS namespace \"\"",
            ),
            (
                vec![
                    vol("a", "replicapool/x", "c1"),
                    vol("b", "replicapool/y", "c2"),
                ],
                None,
                None,
                "different Ceph clusters",
            ),
            (
                (0..=MAX_IMAGES)
                    .map(|i| vol(&format!("p{i}"), &format!("rp/i{i}"), "c"))
                    .collect(),
                None,
                None,
                "one step acts on at most",
            ),
        ];
        for (vols, pool, ns, expected) in cases {
            let e = select(&r, vols, pool, ns).expect_err(expected).to_string();
            assert!(e.contains(expected), "{e:?} should mention {expected:?}");
        }
    }

    fn spec(v: Value) -> RbdMirrorStepSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn params_name_claims_one_way_only() {
        let r = request(&spec(json!({"pvcSelector": "app=db"})), "run-ns")
            .unwrap()
            .unwrap();
        assert_eq!(r.namespace, "run-ns");
        assert_eq!(r.query, PvcQuery::Selector("app=db".into()));
        let r = request(
            &spec(json!({"pvcs": ["a", "b", "a"], "pvcNamespace": "apps"})),
            "run-ns",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.namespace, "apps");
        assert_eq!(r.query, PvcQuery::Names(vec!["a".into(), "b".into()]));
        assert_eq!(
            request(&spec(json!({"images": ["x"]})), "run-ns").unwrap(),
            None
        );
        // A pipeline's empty defaults beside the way it does select.
        assert_eq!(
            request(
                &spec(json!({"images": ["x"], "pvcs": [], "pvcSelector": ""})),
                "run-ns"
            )
            .unwrap(),
            None
        );
        let r = request(
            &spec(json!({"images": [], "pvcs": [], "pvcSelector": "app=db"})),
            "run-ns",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.query, PvcQuery::Selector("app=db".into()));
        let r = request(
            &spec(json!({"images": [], "pvcs": ["a"], "pvcSelector": " "})),
            "run-ns",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.query, PvcQuery::Names(vec!["a".into()]));
        let cases = [
            (json!({"pvcs": ["a"], "pvcSelector": "app=db"}), "not both"),
            (
                json!({"pvcs": ["a"], "images": ["x"]}),
                "either \"images\" or PVCs",
            ),
            (
                json!({"pvcSelector": "app=db", "allImages": true}),
                "allImages",
            ),
            (json!({"pvcs": []}), "\"pvcs\" is empty"),
            (
                json!({"pvcSelector": " "}),
                "empty selector would select every PVC",
            ),
            (json!({"pvcs": ["Data_1"]}), "not a Kubernetes object name"),
            (
                json!({"pvcs": ["a"], "pvcNamespace": "Apps!"}),
                "not a namespace name",
            ),
            (
                json!({"pvcNamespace": "apps", "images": ["x"]}),
                "applies only with",
            ),
        ];
        for (v, expected) in cases {
            let e = request(&spec(v.clone()), "run-ns").expect_err(expected);
            assert!(
                e.0.contains(expected),
                "{v}: {:?} should mention {expected:?}",
                e.0
            );
        }
        let many: Vec<String> = (0..=MAX_IMAGES).map(|i| format!("p{i}")).collect();
        let e = request(&spec(json!({"pvcs": many})), "run-ns").unwrap_err();
        assert!(e.0.contains("at most"), "{e}");
    }

    #[test]
    fn results_name_each_claim_beside_its_image() {
        let mut record = BTreeMap::new();
        record.insert(
            "data".to_string(),
            ImageSpecRepr("replicapool/img-a".into()),
        );
        record.insert(
            "logs".to_string(),
            ImageSpecRepr("replicapool/img-b".into()),
        );
        let step: ResolvedStep = serde_json::from_value(json!({
            "action": "promote", "cluster": "site-b", "pool": "replicapool", "concurrency": 8,
            "selection": {"images": ["replicapool/img-a", "replicapool/img-b"]},
            "pvcs": {"namespace": "app", "images": record},
        }))
        .unwrap();
        let mut progress = Progress::default();
        progress.done.insert(
            "replicapool/img-a".into(),
            crate::step::ImageOutcome {
                outcome: "promoted".into(),
                state: Default::default(),
            },
        );
        let r = pvc_results(&step, &progress);
        let get = |n: &str| -> Value {
            serde_json::from_str(&r.iter().find(|x| x.name == n).unwrap().value).unwrap()
        };
        assert_eq!(
            get("pvcs"),
            json!({"data": "replicapool/img-a", "logs": "replicapool/img-b"})
        );
        assert_eq!(get("pvcOutcomes")["data"], "promoted");
        assert_eq!(get("pvcOutcomes")["logs"], "not-attempted");
    }

    #[test]
    fn a_step_selected_by_name_has_empty_pvc_results() {
        let step = crate::step::resolve::validate(&crate::api::RbdMirrorStepSpec {
            action: Some(crate::api::Action::Status),
            cluster: Some("site-a".into()),
            pool: Some("p".into()),
            images: Some(vec!["x".into()]),
            ..Default::default()
        })
        .unwrap();
        let r = pvc_results(&step, &Progress::default());
        let names: Vec<(&str, &str)> = r
            .iter()
            .map(|r| (r.name.as_str(), r.value.as_str()))
            .collect();
        assert_eq!(names, [("pvcs", "{}"), ("pvcOutcomes", "{}")]);
    }
}

//! Reads the PersistentVolumeClaims a run selects, their PersistentVolumes
//! and (when a volume lacks its RADOS namespace) ceph-csi's config, for the
//! pure mapping in step/pvc.rs. Claims are read only where the run's own
//! ServiceAccount may read them (a SubjectAccessReview, as for Secrets: the
//! controller's wider rights are not lent to pipelines). Volumes are
//! cluster-scoped and read with the controller's own get-only right: a claim
//! the run may read names exactly one volume.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ListParams};

use super::access::Asker;

use crate::step::pvc::{
    PvcError, PvcQuery, PvcRequest, PvcVolume, bound_volume, csi_rados_namespaces, volume_of,
};
use crate::step::resolve::MAX_IMAGES;
use crate::step::{Failure, Reason};

/// Reads at once; PVC names are bounded by MAX_IMAGES.
const READS_AT_ONCE: usize = 8;

/// Where ceph-csi's config lives: `<namespace>/<ConfigMap>`, set by the
/// controller's admin (`--ceph-csi-config`), never by a run.
#[derive(Clone, Debug, PartialEq)]
pub struct CsiConfigRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for CsiConfigRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(CsiConfigRef {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!(
                "{s:?} is not <namespace>/<ConfigMap> (e.g. rook-ceph/rook-ceph-csi-config)"
            )),
        }
    }
}

/// The keys ceph-csi's config is found under: ceph-csi's own ConfigMap, and Rook's.
const CSI_CONFIG_KEYS: [&str; 2] = ["config.json", "csi-cluster-config-json"];

/// Why claims could not be resolved: a refusal the run ends with, or an API
/// error worth another reconcile.
#[derive(Debug, thiserror::Error)]
pub enum PvcReadError {
    #[error("{}", .0.message)]
    Refused(Failure),
    #[error("reading PersistentVolumeClaims: {0}")]
    Api(#[source] kube::Error),
}

fn refused(e: PvcError) -> PvcReadError {
    PvcReadError::Refused(Failure::new(Reason::InvalidPvc, e.to_string()))
}

/// May the run's ServiceAccount `verb` PVCs (`name`, or all) in `namespace`?
async fn allowed(
    client: &kube::Client,
    run_namespace: &str,
    service_account: &str,
    namespace: &str,
    verb: &str,
    name: Option<&str>,
) -> Result<bool, PvcReadError> {
    let asker = Asker {
        namespace: run_namespace,
        service_account,
    };
    asker
        .may(client, namespace, verb, "persistentvolumeclaims", name)
        .await
        .map_err(PvcReadError::Api)
}

fn forbidden(run_namespace: &str, sa: &str, what: String) -> PvcReadError {
    PvcReadError::Refused(Failure::new(
        Reason::Forbidden,
        format!(
            "ServiceAccount {run_namespace}/{sa} (the run's) may not {what}: grant it a Role with get and list on persistentvolumeclaims there (see the README's PVC section)"
        ),
    ))
}

/// The claims of `request`, each with its image.
pub async fn resolve_pvcs(
    client: &kube::Client,
    run_namespace: &str,
    service_account: &str,
    request: &PvcRequest,
    csi_config: Option<&CsiConfigRef>,
) -> Result<Vec<PvcVolume>, PvcReadError> {
    let ns = request.namespace.as_str();
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let claims: Vec<PersistentVolumeClaim> = match &request.query {
        PvcQuery::Selector(selector) => {
            if !allowed(client, run_namespace, service_account, ns, "list", None).await? {
                return Err(forbidden(
                    run_namespace,
                    service_account,
                    format!("list PersistentVolumeClaims in namespace {ns}"),
                ));
            }
            let list = pvcs
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| match e {
                    // The API server is the judge of selector syntax.
                    kube::Error::Api(s) if s.code == 400 => PvcReadError::Refused(Failure::new(
                        Reason::InvalidParams,
                        format!(
                            "param \"pvcSelector\" {selector:?} is not a label selector: {}",
                            s.message
                        ),
                    )),
                    e => PvcReadError::Api(e),
                })?;
            let mut items = list.items;
            // Refused before a volume is read for any of them.
            if items.len() > MAX_IMAGES {
                return Err(refused(PvcError::TooMany {
                    namespace: ns.into(),
                    selector: selector.clone(),
                    count: items.len(),
                }));
            }
            // Named order, so results and locks do not depend on list order.
            items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            items
        }
        PvcQuery::Names(names) => {
            // Owned arguments, futures collected before streaming: a stream
            // mapping with a borrowing closure is not Send for every
            // lifetime, which the controller's reconcile future must be.
            let reads: Vec<_> = names
                .iter()
                .map(|name| {
                    read_claim(
                        client.clone(),
                        run_namespace.to_string(),
                        service_account.to_string(),
                        ns.to_string(),
                        name.clone(),
                    )
                })
                .collect();
            futures::stream::iter(reads)
                .buffered(READS_AT_ONCE)
                .try_collect()
                .await?
        }
    };
    // Every claim bound before any volume is read: an unbound claim is the
    // likelier mistake, and it is reported first.
    let mut bound = Vec::with_capacity(claims.len());
    for c in claims {
        let pv = bound_volume(ns, &c).map_err(refused)?;
        bound.push((c, pv));
    }
    let reads: Vec<_> = bound
        .into_iter()
        .map(|(c, pv)| read_volume(client.clone(), ns.to_string(), c, pv))
        .collect();
    let volumes: Vec<(PersistentVolumeClaim, PersistentVolume)> = futures::stream::iter(reads)
        .buffered(READS_AT_ONCE)
        .try_collect()
        .await?;
    // ceph-csi's config only for volumes that need it (older ceph-csi left
    // radosNamespace out of the volume), and only where the admin named it.
    let needs_config = volumes.iter().any(|(_, pv)| {
        pv.spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .and_then(|c| c.volume_attributes.as_ref())
            .is_some_and(|a| a.get("radosNamespace").is_none_or(|v| v.is_empty()))
    });
    let config = match csi_config {
        Some(r) if needs_config => Some(read_csi_config(client, r).await?),
        _ => None,
    };
    volumes
        .iter()
        .map(|(c, pv)| volume_of(ns, c, pv, config.as_ref()).map_err(refused))
        .collect()
}

/// One named claim, if the run's ServiceAccount may get it.
async fn read_claim(
    client: kube::Client,
    run_namespace: String,
    service_account: String,
    ns: String,
    name: String,
) -> Result<PersistentVolumeClaim, PvcReadError> {
    if !allowed(
        &client,
        &run_namespace,
        &service_account,
        &ns,
        "get",
        Some(&name),
    )
    .await?
    {
        return Err(forbidden(
            &run_namespace,
            &service_account,
            format!("get PersistentVolumeClaim {ns}/{name}"),
        ));
    }
    Api::<PersistentVolumeClaim>::namespaced(client, &ns)
        .get_opt(&name)
        .await
        .map_err(PvcReadError::Api)?
        .ok_or(refused(PvcError::NotFound {
            namespace: ns,
            pvc: name,
        }))
}

/// The volume a bound claim names.
async fn read_volume(
    client: kube::Client,
    ns: String,
    claim: PersistentVolumeClaim,
    pv: String,
) -> Result<(PersistentVolumeClaim, PersistentVolume), PvcReadError> {
    match Api::<PersistentVolume>::all(client)
        .get_opt(&pv)
        .await
        .map_err(PvcReadError::Api)?
    {
        Some(v) => Ok((claim, v)),
        None => Err(refused(PvcError::PvNotFound {
            namespace: ns,
            pvc: claim.metadata.name.clone().unwrap_or_default(),
            pv,
        })),
    }
}

async fn read_csi_config(
    client: &kube::Client,
    r: &CsiConfigRef,
) -> Result<BTreeMap<String, String>, PvcReadError> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &r.namespace)
        .get_opt(&r.name)
        .await
        .map_err(PvcReadError::Api)?;
    let fail = |m: String| {
        PvcReadError::Refused(Failure::new(
            Reason::InvalidPvc,
            format!(
                "ceph-csi config ConfigMap {}/{} (--ceph-csi-config): {m}",
                r.namespace, r.name
            ),
        ))
    };
    let cm = cm.ok_or_else(|| fail("does not exist".into()))?;
    let data = cm.data.unwrap_or_default();
    let json = CSI_CONFIG_KEYS
        .iter()
        .find_map(|k| data.get(*k))
        .ok_or_else(|| fail(format!("has none of the keys {CSI_CONFIG_KEYS:?}")))?;
    csi_rados_namespaces(json).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csi_config_is_named_by_namespace_and_configmap() {
        let r: CsiConfigRef = "rook-ceph/rook-ceph-csi-config".parse().unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("rook-ceph", "rook-ceph-csi-config")
        );
        for bad in ["rook-ceph-csi-config", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<CsiConfigRef>().is_err(), "{bad}");
        }
    }
}

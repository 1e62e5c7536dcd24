//! Reads a run's Ceph connection. Either a labelled connection Secret in the
//! run's namespace, or (`cluster: <namespace>/<secret>`) Rook's own CSI
//! provisioner Secret and monitor ConfigMap in a namespace the controller's
//! admin opted in (`--ceph-namespaces`: Rook's Secrets carry no label). Both
//! only if the run's ServiceAccount may read those objects (a
//! SubjectAccessReview), and both read fresh at every step, so a key Rook
//! rotates is used by the next step.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;

use super::access::Asker;
use crate::ceph::connection::CONNECTION_LABEL;
use crate::ceph::rook::{self, MON_ENDPOINTS, RookSecret};
use crate::step::{Failure, Reason};

fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    let data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    // From here on the keys may surface in Ceph's output (rbd echoes a key
    // it cannot parse): everything written out is redacted against them.
    crate::redact::remember_connection_secret(data.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    data
}

fn review_failed(what: &str, e: kube::Error) -> Failure {
    Failure::new(
        Reason::CephError,
        format!("could not check access to {what}: {e}"),
    )
}

fn forbidden(asker: Asker, what: &str, role: &str) -> Failure {
    Failure::new(
        Reason::Forbidden,
        format!(
            "ServiceAccount {}/{} (the run's) may not get {what}: grant it a Role with {role} (see the README's Secret section)",
            asker.namespace, asker.service_account
        ),
    )
}

/// The connection named by `cluster`, as the data `connection::materialize` takes.
pub async fn read_connection(
    client: &kube::Client,
    asker: Asker<'_>,
    cluster: &str,
    ceph_namespaces: &[String],
) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
    match RookSecret::parse(cluster) {
        Some(rook) => read_rook(client, asker, &rook, ceph_namespaces).await,
        None => read_labelled(client, asker, cluster).await,
    }
}

async fn read_labelled(
    client: &kube::Client,
    asker: Asker<'_>,
    secret: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
    let namespace = asker.namespace;
    // Both requests at once: the Secret read is the controller's own right,
    // and its content is dropped unread unless the review allows it.
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let (allowed, found) = tokio::join!(
        asker.may(client, namespace, "get", "secrets", Some(secret)),
        secrets.get_opt(secret)
    );
    let what = format!("Secret {namespace}/{secret}");
    if !allowed.map_err(|e| review_failed(&what, e))? {
        // The run's own namespace goes without saying.
        let name = format!("Secret {secret}");
        return Err(forbidden(asker, &name, &format!("get on secrets/{secret}")));
    }
    let s = found
        .map_err(|e| Failure::new(Reason::CephError, format!("could not read {what}: {e}")))?
        .ok_or_else(|| {
            Failure::new(
                Reason::SecretNotFound,
                format!("{what} does not exist: create the Ceph connection Secret for this site in the run's namespace"),
            )
        })?;
    let labelled = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONNECTION_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled {
        return Err(Failure::new(
            Reason::Forbidden,
            format!(
                "{what} is not labelled {CONNECTION_LABEL}: \"true\"; only labelled Secrets are used as Ceph connections"
            ),
        ));
    }
    Ok(secret_data(s))
}

async fn read_rook(
    client: &kube::Client,
    asker: Asker<'_>,
    rook: &RookSecret,
    ceph_namespaces: &[String],
) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
    let ns = rook.namespace.as_str();
    if !ceph_namespaces.iter().any(|n| n == ns) {
        return Err(Failure::new(
            Reason::Forbidden,
            format!(
                "cluster {ns}/{}: namespace {ns} is not one of the controller's --ceph-namespaces ({}); \
                 an admin opts a Rook namespace in, since Rook's Secrets carry no label",
                rook.secret,
                if ceph_namespaces.is_empty() {
                    "none".to_string()
                } else {
                    ceph_namespaces.join(", ")
                }
            ),
        ));
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let (may_secret, may_map, secret, map) = tokio::join!(
        asker.may(client, ns, "get", "secrets", Some(&rook.secret)),
        asker.may(client, ns, "get", "configmaps", Some(MON_ENDPOINTS)),
        secrets.get_opt(&rook.secret),
        maps.get_opt(MON_ENDPOINTS),
    );
    let secret_what = format!("Secret {ns}/{}", rook.secret);
    let map_what = format!("ConfigMap {ns}/{MON_ENDPOINTS}");
    if !may_secret.map_err(|e| review_failed(&secret_what, e))? {
        return Err(forbidden(
            asker,
            &secret_what,
            &format!("get on secrets/{} in {ns}", rook.secret),
        ));
    }
    if !may_map.map_err(|e| review_failed(&map_what, e))? {
        return Err(forbidden(
            asker,
            &map_what,
            &format!("get on configmaps/{MON_ENDPOINTS} in {ns}"),
        ));
    }
    let secret = secret
        .map_err(|e| Failure::new(Reason::CephError, format!("could not read {secret_what}: {e}")))?
        .ok_or_else(|| {
            Failure::new(
                Reason::SecretNotFound,
                format!(
                    "{secret_what} does not exist: Rook creates it unless the CephCluster's CSI user creation is skipped (skipUserCreation); \
                     create that user's Secret (userID, userKey) there, or name a labelled connection Secret of the run's namespace"
                ),
            )
        })?;
    let map = map
        .map_err(|e| Failure::new(Reason::CephError, format!("could not read {map_what}: {e}")))?
        .ok_or_else(|| {
            Failure::new(
                Reason::SecretNotFound,
                format!("{map_what} does not exist: is {ns} the namespace of a Rook CephCluster?"),
            )
        })?;
    let invalid = |e: rook::RookError| Failure::new(Reason::InvalidSecret, e.to_string());
    let mon_host = rook::mon_host(
        ns,
        map.data
            .as_ref()
            .and_then(|d| d.get("data"))
            .map(String::as_str),
    )
    .map_err(invalid)?;
    rook::connection_data(rook, &secret_data(secret), mon_host).map_err(invalid)
}

//! Reads a Ceph connection Secret for a run: only from the run's namespace,
//! only if the run's ServiceAccount may read it (a SubjectAccessReview: the
//! controller's own wider rights are not lent to pipelines), and only if the
//! Secret is labelled as a Ceph connection.

use std::collections::BTreeMap;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use crate::ceph::connection::CONNECTION_LABEL;
use crate::step::{Failure, Reason};

pub async fn read_connection(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    secret: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{namespace}:{service_account}"
            )),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some("get".into()),
                resource: Some("secrets".into()),
                name: Some(secret.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    // Both requests at once: the Secret read is the controller's own right,
    // and its content is dropped unread unless the review allows it.
    let sars = Api::<SubjectAccessReview>::all(client.clone());
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let pp = PostParams::default();
    let (review, found) = tokio::join!(sars.create(&pp, &sar), secrets.get_opt(secret));
    let review = review.map_err(|e| {
        Failure::new(
            Reason::CephError,
            format!("could not check access to Secret {namespace}/{secret}: {e}"),
        )
    })?;
    if !review.status.is_some_and(|s| s.allowed) {
        return Err(Failure::new(
            Reason::Forbidden,
            format!(
                "ServiceAccount {namespace}/{service_account} (the run's) may not get Secret {secret}: \
                 grant it a Role with get on secrets/{secret} (see the README's Secret section)"
            ),
        ));
    }
    let s = found
        .map_err(|e| Failure::new(Reason::CephError, format!("could not read Secret {namespace}/{secret}: {e}")))?
        .ok_or_else(|| {
            Failure::new(
                Reason::SecretNotFound,
                format!("Secret {namespace}/{secret} does not exist: create the Ceph connection Secret for this site in the run's namespace"),
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
                "Secret {namespace}/{secret} is not labelled {CONNECTION_LABEL}: \"true\"; only labelled Secrets are used as Ceph connections"
            ),
        ));
    }
    let data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    // From here on the keys may surface in Ceph's output (rbd echoes a key
    // it cannot parse): everything written out is redacted against them.
    crate::redact::remember_connection_secret(data.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    Ok(data)
}

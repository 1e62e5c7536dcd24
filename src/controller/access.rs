//! "May the run's ServiceAccount do this?": a SubjectAccessReview for every
//! object the controller reads on a run's behalf (connection Secrets, Rook's
//! objects, PVCs). The controller's own wider rights are never lent to a
//! pipeline.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// Who asks: the ServiceAccount a run executes as.
#[derive(Clone, Copy, Debug)]
pub struct Asker<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl Asker<'_> {
    /// The review of `verb` on `resource` (core group) `name` (or all) in `namespace`.
    pub fn review(
        &self,
        namespace: &str,
        verb: &str,
        resource: &str,
        name: Option<&str>,
    ) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!(
                    "system:serviceaccount:{}:{}",
                    self.namespace, self.service_account
                )),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{}", self.namespace),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.into()),
                    verb: Some(verb.into()),
                    resource: Some(resource.into()),
                    name: name.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub async fn may(
        &self,
        client: &kube::Client,
        namespace: &str,
        verb: &str,
        resource: &str,
        name: Option<&str>,
    ) -> Result<bool, kube::Error> {
        let review = Api::<SubjectAccessReview>::all(client.clone())
            .create(
                &PostParams::default(),
                &self.review(namespace, verb, resource, name),
            )
            .await?;
        Ok(review.status.is_some_and(|s| s.allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_review_names_the_service_account_and_its_groups() {
        let a = Asker {
            namespace: "apps",
            service_account: "failover",
        };
        let r = a.review(
            "rook-ceph",
            "get",
            "configmaps",
            Some("rook-ceph-mon-endpoints"),
        );
        assert_eq!(
            r.spec.user.as_deref(),
            Some("system:serviceaccount:apps:failover")
        );
        assert!(
            r.spec
                .groups
                .unwrap()
                .contains(&"system:serviceaccounts:apps".to_string())
        );
        let ra = r.spec.resource_attributes.unwrap();
        assert_eq!(ra.namespace.as_deref(), Some("rook-ceph"));
        assert_eq!(ra.resource.as_deref(), Some("configmaps"));
        assert_eq!(ra.name.as_deref(), Some("rook-ceph-mon-endpoints"));
    }
}

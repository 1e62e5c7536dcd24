//! A site's connection through the objects Rook already keeps: the CSI
//! provisioner's Secret (`userID`, `userKey`: a least-privilege user that Rook
//! rotates, renaming it `csi-rbd-provisioner.<n>`) and the monitors of the
//! `rook-ceph-mon-endpoints` ConfigMap. Not `rook-ceph-mon`: its user is
//! client.admin.

use std::collections::BTreeMap;

/// The ConfigMap in which Rook keeps the monitors of its cluster.
pub const MON_ENDPOINTS: &str = "rook-ceph-mon-endpoints";

/// `<namespace>/<secret>` as `cluster` names a Rook cluster's Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RookSecret {
    pub namespace: String,
    pub secret: String,
}

impl RookSecret {
    /// `Some` when `cluster` has the `<namespace>/<secret>` form (validated
    /// as names by the step's params).
    pub fn parse(cluster: &str) -> Option<RookSecret> {
        let (namespace, secret) = cluster.split_once('/')?;
        Some(RookSecret {
            namespace: namespace.into(),
            secret: secret.into(),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RookError {
    #[error(
        "ConfigMap {namespace}/{MON_ENDPOINTS} has no key `data` (Rook writes the monitors there as a=host:port,...)"
    )]
    NoMonitors { namespace: String },
    #[error("ConfigMap {namespace}/{MON_ENDPOINTS}: monitor entry {entry:?} is not name=host:port")]
    BadMonitor { namespace: String, entry: String },
    #[error(
        "Secret {namespace}/{secret} has no `{key}`: is it Rook's CSI provisioner Secret (rook-csi-rbd-provisioner)?"
    )]
    MissingKey {
        namespace: String,
        secret: String,
        key: &'static str,
    },
}

/// The monitors of Rook's `data: a=10.0.0.1:6789,b=10.0.0.2:6789` as a
/// `mon host` value. Rook writes v1 (6789) or v2 (3300) ports without a
/// protocol prefix; Ceph tells them apart by port.
pub fn mon_host(namespace: &str, data: Option<&str>) -> Result<String, RookError> {
    let data = data
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| RookError::NoMonitors {
            namespace: namespace.into(),
        })?;
    let mut addrs = vec![];
    for entry in data.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || RookError::BadMonitor {
            namespace: namespace.into(),
            entry: entry.chars().take(80).collect(),
        };
        let (_, addr) = entry.split_once('=').ok_or_else(bad)?;
        let ok = !addr.is_empty()
            && addr.len() <= 100
            && addr.contains(':')
            && addr
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c));
        if !ok {
            return Err(bad());
        }
        addrs.push(addr.to_string());
    }
    if addrs.is_empty() {
        return Err(RookError::NoMonitors {
            namespace: namespace.into(),
        });
    }
    Ok(addrs.join(","))
}

/// The Secret's user and key beside the monitors, in the ceph-csi form that
/// `connection::materialize` takes. The values are never put in an error.
pub fn connection_data(
    rook: &RookSecret,
    secret: &BTreeMap<String, Vec<u8>>,
    mon_host: String,
) -> Result<BTreeMap<String, Vec<u8>>, RookError> {
    let mut out = BTreeMap::new();
    for key in ["userID", "userKey"] {
        let v = secret
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RookError::MissingKey {
                namespace: rook.namespace.clone(),
                secret: rook.secret.clone(),
                key,
            })?;
        out.insert(key.to_string(), v.clone());
    }
    out.insert("monHost".into(), mon_host.into_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespaced_cluster_names_a_rook_secret() {
        assert_eq!(
            RookSecret::parse("rook-ceph/rook-csi-rbd-provisioner"),
            Some(RookSecret {
                namespace: "rook-ceph".into(),
                secret: "rook-csi-rbd-provisioner".into()
            })
        );
        assert_eq!(RookSecret::parse("site-a"), None);
    }

    #[test]
    fn rooks_mon_endpoints_become_a_mon_host() {
        assert_eq!(
            mon_host(
                "rook-ceph",
                Some("a=10.0.0.1:6789,b=10.0.0.2:3300, c=[fd00::1]:6789")
            ),
            Ok("10.0.0.1:6789,10.0.0.2:3300,[fd00::1]:6789".into())
        );
    }

    #[test]
    fn bad_mon_endpoints_are_refused_by_entry() {
        for (data, want) in [
            (None, "has no key `data`"),
            (Some(""), "has no key `data`"),
            (Some(",,"), "has no key `data`"),
            (
                Some("10.0.0.1:6789"),
                "\"10.0.0.1:6789\" is not name=host:port",
            ),
            (Some("a=10.0.0.1"), "\"a=10.0.0.1\""),
            (
                Some("a=10.0.0.1:6789\nmon host = x:1"),
                "is not name=host:port",
            ),
            (Some("a=1.2.3.4:1 ;rm"), "is not name=host:port"),
        ] {
            let e = mon_host("rook-ceph", data).unwrap_err().to_string();
            assert!(e.contains(want), "{data:?}: {e}");
            assert!(e.contains("rook-ceph/rook-ceph-mon-endpoints"), "{e}");
        }
    }

    #[test]
    fn the_secret_needs_user_and_key_and_never_shows_them() {
        let rook = RookSecret::parse("rook-ceph/rook-csi-rbd-provisioner").unwrap();
        let mut s = BTreeMap::new();
        s.insert("userID".to_string(), b"csi-rbd-provisioner".to_vec());
        let e = connection_data(&rook, &s, "10.0.0.1:6789".into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Secret rook-ceph/rook-csi-rbd-provisioner has no `userKey`: is it Rook's CSI provisioner Secret (rook-csi-rbd-provisioner)?"
        );
        s.insert("userKey".to_string(), b"AQDsecretsecret==".to_vec());
        let d = connection_data(&rook, &s, "10.0.0.1:6789".into()).unwrap();
        assert_eq!(d["monHost"], b"10.0.0.1:6789");
        assert_eq!(d["userID"], b"csi-rbd-provisioner");
        assert_eq!(d["userKey"], b"AQDsecretsecret==");
    }
}

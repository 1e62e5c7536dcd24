//! PersistentVolumes shaped as ceph-csi (through Rook) provisions them, and
//! claims the lab's kube-controller-manager binds to them.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::wait_for;

/// Rook's name of ceph-csi's RBD driver (`<operator namespace>.rbd.csi.ceph.com`).
pub const RBD_DRIVER: &str = "rook-ceph.rbd.csi.ceph.com";
/// A class no provisioner serves in the lab: claims of it bind only to the
/// volumes the tests create for them.
pub const CLASS: &str = "lab-ceph-rbd";

/// Lets the namespace's `default` ServiceAccount (the runs') get and list
/// PersistentVolumeClaims in `pvc_ns`.
pub async fn allow_pvcs(client: &Client, run_ns: &str, pvc_ns: &str) {
    super::runs::grant(
        client,
        pvc_ns,
        &format!("read-pvcs-{run_ns}"),
        json!([{"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list"]}]),
        run_ns,
    )
    .await;
}

/// A claim of CLASS, as an application's StatefulSet would make it.
pub async fn claim(client: &Client, ns: &str, name: &str, labels: Value) -> PersistentVolumeClaim {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": {
            "volume.beta.kubernetes.io/storage-provisioner": RBD_DRIVER,
            "volume.kubernetes.io/storage-provisioner": RBD_DRIVER,
        }},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "16Mi"}},
            "storageClassName": CLASS,
            "volumeMode": "Filesystem",
        },
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create PVC")
}

/// The volumeAttributes ceph-csi writes for a volume it provisioned in
/// `pool` (the StorageClass parameters without the csi.storage.k8s.io/
/// ones, plus pool, journalPool and imageName).
pub fn provisioned_attributes(pool: &str, image: &str) -> Value {
    json!({
        "clusterID": "rook-ceph",
        "imageFeatures": "layering,exclusive-lock,object-map,fast-diff",
        "imageFormat": "2",
        "imageName": image,
        "journalPool": pool,
        "pool": pool,
        "storage.kubernetes.io/csiProvisionerIdentity": "1764500000000-8081-rook-ceph.rbd.csi.ceph.com",
    })
}

/// The PersistentVolume that ceph-csi's external-provisioner creates for
/// `pvc`: pre-bound to it by claimRef (with its UID), driver, volumeHandle
/// (`0001-<len>-<clusterID>-<pool id>-<uuid>`) and `attributes`.
pub async fn volume_for(
    client: &Client,
    pvc: &PersistentVolumeClaim,
    pv_name: &str,
    driver: &str,
    volume_handle: &str,
    attributes: Value,
) {
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "16Mi"},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace, "name": pvc.metadata.name,
                "uid": pvc.metadata.uid, "resourceVersion": pvc.metadata.resource_version,
            },
            "csi": {
                "driver": driver,
                "fsType": "ext4",
                "volumeHandle": volume_handle,
                "volumeAttributes": attributes,
                "controllerExpandSecretRef": {"name": "rook-csi-rbd-provisioner", "namespace": "rook-ceph"},
                "nodeStageSecretRef": {"name": "rook-csi-rbd-node", "namespace": "rook-ceph"},
            },
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": CLASS,
            "volumeMode": "Filesystem",
        },
    }))
    .unwrap();
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("create PV");
}

/// A volume handle as ceph-csi composes it for `uuid` in pool id 2.
pub fn volume_handle(uuid: &str) -> String {
    format!("0001-0009-rook-ceph-0000000000000002-{uuid}")
}

/// Waits until kube-controller-manager's binder has bound the claim.
pub async fn wait_bound(client: &Client, ns: &str, name: &str) {
    let api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    wait_for(60, &format!("PVC {ns}/{name} to be Bound"), || async {
        let c = api.get(name).await.ok()?;
        (c.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await
}

/// A claim of `labels` bound (by the binder) to a volume provisioned for
/// image `pool/image`.
pub async fn provisioned_claim(
    client: &Client,
    ns: &str,
    name: &str,
    labels: Value,
    pool: &str,
    image: &str,
) {
    let c = claim(client, ns, name, labels).await;
    let pv = format!("pvc-{}", c.metadata.uid.as_deref().unwrap());
    volume_for(
        client,
        &c,
        &pv,
        RBD_DRIVER,
        &volume_handle(c.metadata.uid.as_deref().unwrap()),
        provisioned_attributes(pool, image),
    )
    .await;
    wait_bound(client, ns, name).await;
}

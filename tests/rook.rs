//! Connecting through Rook's own objects, against the lab: each site gets a
//! namespace shaped like a Rook cluster's (the `rook-csi-rbd-provisioner`
//! Secret of a cephx user with the caps Rook gives the CSI provisioner, and
//! the `rook-ceph-mon-endpoints` ConfigMap), and runs name
//! `<namespace>/rook-csi-rbd-provisioner` as their cluster.

mod common;

use common::runs::*;
use common::{Site, client, lab, mirrored_image, namespace, unique};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const SECRET: &str = "rook-csi-rbd-provisioner";

/// A cephx user with exactly the caps Rook gives `client.csi-rbd-provisioner`.
fn csi_user(site: &Site, user: &str) -> String {
    site.ceph_ok(&[
        "auth",
        "get-or-create-key",
        &format!("client.{user}"),
        "mon",
        "profile rbd, allow command 'osd blocklist'",
        "mgr",
        "allow rw",
        "osd",
        "profile rbd",
    ])
}

/// The objects Rook keeps in its namespace for one cluster.
async fn rook_namespace(client: &Client, site: &Site, mon: &str, user: &str) -> String {
    let ns = namespace(client, &format!("rook-{}", site.name)).await;
    let key = csi_user(site, user);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": SECRET},
        "stringData": {"userID": user, "userKey": key},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "rook-ceph-mon-endpoints"},
        "data": {"data": mon, "mapping": "{\"node\":{}}", "maxMonId": "0", "outOfQuorum": ""},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    ns
}

/// Lets the runs of `run_ns` read Rook's Secret and ConfigMap in `rook_ns`.
async fn allow_rook(client: &Client, rook_ns: &str, run_ns: &str) {
    grant(
        client,
        rook_ns,
        "read-rook-connection",
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["rook-ceph-mon-endpoints"], "verbs": ["get"]},
        ]),
        run_ns,
    )
    .await;
}

#[tokio::test]
async fn a_failover_connects_through_rook_objects_and_follows_a_rotated_key() {
    let (client, lab) = (client().await, lab());
    let first_user = "csi-rbd-provisioner";
    let ns_a = rook_namespace(&client, &lab.a, &format!("a={}:6789", lab.ip), first_user).await;
    let ns_b = rook_namespace(&client, &lab.b, &format!("b={}:6790", lab.ip), first_user).await;
    // A namespace with Rook's objects that the admin did not opt in.
    let ns_other = rook_namespace(&client, &lab.a, &format!("a={}:6789", lab.ip), first_user).await;
    let selector = unique("rook");
    let _ctl = start_controller(
        &selector,
        &[("RBDSTEP_CEPH_NAMESPACES", format!("{ns_a},{ns_b}").as_str())],
    );
    let runs = run_namespace(&client, "rook-runs").await;
    let img = unique("rook");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    let key = format!("{}/{img}", lab.pool);
    let on = |action: &str, cluster: &str| {
        RunBuilder::new(&selector)
            .param("action", action)
            .param("cluster", cluster)
            .param("pool", lab.pool.as_str())
            .param("images", json!([img]))
    };
    let (rook_a, rook_b) = (format!("{ns_a}/{SECRET}"), format!("{ns_b}/{SECRET}"));

    // Refusals, each naming what to fix.
    on("status", &format!("{ns_other}/{SECRET}"))
        .create(&client, &runs, "not-opted-in")
        .await;
    let done = wait_done(&client, &runs, "not-opted-in", 30).await;
    assert_condition(&done, "False", "Forbidden");
    assert!(condition(&done).unwrap().2.contains("--ceph-namespaces"));
    on("status", &rook_a)
        .create(&client, &runs, "no-rbac")
        .await;
    let done = wait_done(&client, &runs, "no-rbac", 30).await;
    assert_condition(&done, "False", "Forbidden");
    let m = condition(&done).unwrap().2;
    assert!(m.contains(&format!("Secret {rook_a}")), "{m}");
    allow_rook(&client, &ns_a, &runs).await;
    allow_rook(&client, &ns_b, &runs).await;
    // A planned failover a -> b through Rook's objects only.
    on("demote", &rook_a)
        .create(&client, &runs, "demote-a")
        .await;
    assert_condition(
        &wait_done(&client, &runs, "demote-a", 90).await,
        "True",
        "Succeeded",
    );
    on("promote", &rook_b)
        .param("peerCluster", rook_a.as_str())
        .create(&client, &runs, "promote-b")
        .await;
    let done = wait_done(&client, &runs, "promote-b", 120).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(result(&done, "outcomes").unwrap()[&key], "promoted");
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
    // As the planned-failover pipeline does: site-a must have taken up
    // replaying from site-b before site-b may be demoted again (demoted
    // before a synced b's promotion, both sides end non-primary, each
    // seeing "remote image is not primary", and only a force promotes).
    on("status", &rook_a)
        .param("waitFor", "replaying")
        .create(&client, &runs, "replaying-a")
        .await;
    assert_condition(
        &wait_done(&client, &runs, "replaying-a", 120).await,
        "True",
        "Succeeded",
    );

    // Rook rotates site-b's key under a new user name and removes the old
    // user: the next step uses the Secret's new user and key, no other change.
    let rotated = format!("csi-rbd-provisioner.{}", unique("r"));
    let new_key = csi_user(&lab.b, &rotated);
    Api::<Secret>::namespaced(client.clone(), &ns_b)
        .patch(
            SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"userID": rotated, "userKey": new_key}})),
        )
        .await
        .unwrap();
    lab.b
        .ceph_ok(&["auth", "del", &format!("client.{first_user}")]);

    // Failback b -> a, then a resync of b: every action with the CSI caps.
    on("demote", &rook_b)
        .create(&client, &runs, "demote-b")
        .await;
    assert_condition(
        &wait_done(&client, &runs, "demote-b", 90).await,
        "True",
        "Succeeded",
    );
    on("promote", &rook_a)
        .param("peerCluster", rook_b.as_str())
        .create(&client, &runs, "promote-a")
        .await;
    assert_condition(
        &wait_done(&client, &runs, "promote-a", 120).await,
        "True",
        "Succeeded",
    );
    on("resync", &rook_b)
        .create(&client, &runs, "resync-b")
        .await;
    assert_condition(
        &wait_done(&client, &runs, "resync-b", 180).await,
        "True",
        "Succeeded",
    );
    on("status", &rook_b)
        .param("waitFor", "replaying")
        .create(&client, &runs, "replaying-b")
        .await;
    assert_condition(
        &wait_done(&client, &runs, "replaying-b", 120).await,
        "True",
        "Succeeded",
    );
    assert_eq!(lab.a.is_primary(&lab.pool, &img), Some(true));

    // The old user is gone on site-b: the rotated Secret was what worked.
    // Put it back for the next run of this test on the same lab.
    csi_user(&lab.b, first_user);
    lab.b
        .ceph_ok(&["auth", "del", &format!("client.{rotated}")]);
}

#[tokio::test]
async fn a_missing_rook_secret_says_user_creation_was_skipped() {
    let (client, lab) = (client().await, lab());
    let ns = rook_namespace(
        &client,
        &lab.a,
        &format!("a={}:6789", lab.ip),
        "csi-rbd-provisioner",
    )
    .await;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete(SECRET, &Default::default())
        .await
        .unwrap();
    let selector = unique("rook-missing");
    let _ctl = start_controller(&selector, &[("RBDSTEP_CEPH_NAMESPACES", ns.as_str())]);
    let runs = run_namespace(&client, "rook-missing").await;
    allow_rook(&client, &ns, &runs).await;
    RunBuilder::new(&selector)
        .param("action", "status")
        .param("cluster", format!("{ns}/{SECRET}").as_str())
        .param("pool", lab.pool.as_str())
        .param("images", json!(["x"]))
        .create(&client, &runs, "missing")
        .await;
    let done = wait_done(&client, &runs, "missing", 30).await;
    assert_condition(&done, "False", "SecretNotFound");
    let m = condition(&done).unwrap().2;
    assert!(m.contains("skipUserCreation"), "{m}");
}

//! Images selected by PersistentVolumeClaim, against the lab: volumes shaped
//! as ceph-csi provisions them for the lab's images, claims bound to them by
//! the lab's kube-controller-manager, and runs that name the claims.

mod common;

use common::pvcs::*;
use common::runs::*;
use common::{client, lab, mirrored_image, unique};
use serde_json::json;

const SEL: &str = "pvc";

fn run() -> RunBuilder {
    RunBuilder::new(shared_controller(SEL).as_str())
}

#[tokio::test]
async fn a_failover_selected_by_pvc_selector_moves_the_right_images_and_names_the_pvcs() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "pvc-sel").await;
    allow_pvcs(&client, &ns, &ns).await;
    let app = unique("app");
    let (db, logs, other) = (
        format!("csi-vol-{}", unique("db")),
        unique("static-logs"),
        format!("csi-vol-{}", unique("other")),
    );
    for i in [&db, &logs, &other] {
        mirrored_image(&lab.a, &lab.b, &lab.pool, i).await;
    }
    // Two claims of the application: one provisioned by ceph-csi, one a
    // static volume (the image named by volumeHandle); and a claim of
    // another application on the same pool, which must stay untouched.
    provisioned_claim(
        &client,
        &ns,
        "data-db-0",
        json!({"app": app}),
        &lab.pool,
        &db,
    )
    .await;
    let c = claim(&client, &ns, "logs", json!({"app": app})).await;
    // A static volume as ceph-csi's documentation writes it by hand.
    let attrs = json!({"clusterID": "rook-ceph", "pool": lab.pool, "staticVolume": "true", "imageFeatures": "layering"});
    volume_for(
        &client,
        &c,
        &format!("static-{logs}"),
        RBD_DRIVER,
        &logs,
        attrs,
    )
    .await;
    wait_bound(&client, &ns, "logs").await;
    provisioned_claim(
        &client,
        &ns,
        "data-other-0",
        json!({"app": "other"}),
        &lab.pool,
        &other,
    )
    .await;

    let selector = format!("app={app}");
    run()
        .param("action", "demote")
        .param("cluster", "site-a")
        .param("pvcSelector", selector.as_str())
        .create(&client, &ns, "demote")
        .await;
    let done = wait_done(&client, &ns, "demote", 90).await;
    assert_condition(&done, "True", "Succeeded");
    let (img_db, img_logs) = (format!("{}/{db}", lab.pool), format!("{}/{logs}", lab.pool));
    assert_eq!(
        result(&done, "pvcs").unwrap(),
        json!({"data-db-0": img_db, "logs": img_logs})
    );
    assert_eq!(
        result(&done, "pvcOutcomes").unwrap(),
        json!({"data-db-0": "demoted", "logs": "demoted"})
    );
    let mut images: Vec<String> = serde_json::from_value(result(&done, "images").unwrap()).unwrap();
    images.sort();
    let mut want = vec![img_db.clone(), img_logs.clone()];
    want.sort();
    assert_eq!(
        images, want,
        "the images of the selected claims, and only those"
    );

    // The next step takes the first step's `images` result, as a pipeline
    // does: the selector is never evaluated again.
    run()
        .param("action", "promote")
        .param("cluster", "site-b")
        .param("peerCluster", "site-a")
        .param("images", serde_json::to_string(&images).unwrap())
        .create(&client, &ns, "promote")
        .await;
    let done = wait_done(&client, &ns, "promote", 120).await;
    assert_condition(&done, "True", "Succeeded");
    for i in [&db, &logs] {
        assert_eq!(lab.b.is_primary(&lab.pool, i), Some(true), "{i} on site-b");
        assert_eq!(lab.a.is_primary(&lab.pool, i), Some(false), "{i} on site-a");
    }
    assert_eq!(
        lab.a.is_primary(&lab.pool, &other),
        Some(true),
        "another application's image was moved"
    );
    assert_eq!(lab.b.is_primary(&lab.pool, &other), Some(false));
}

#[tokio::test]
async fn a_selector_matching_nothing_fails_with_a_reason_naming_it() {
    let client = client().await;
    let ns = run_namespace(&client, "pvc-none").await;
    allow_pvcs(&client, &ns, &ns).await;
    run()
        .param("action", "status")
        .param("cluster", "site-a")
        .param("pvcSelector", "app=nothing-has-this")
        .create(&client, &ns, "r")
        .await;
    let done = wait_done(&client, &ns, "r", 30).await;
    assert_condition(&done, "False", "InvalidPvc");
    let (_, _, message) = condition(&done).unwrap();
    assert!(
        message.contains(&format!(
            "no PVC in namespace {ns} matches pvcSelector \"app=nothing-has-this\""
        )),
        "{message}"
    );
}

/// Every way a selection by PVC can be wrong ends the run at once, with a
/// reason and a message naming the claim; no Ceph call is needed for any.
#[tokio::test]
async fn bad_pvc_selections_fail_with_a_reason_naming_the_pvc() {
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "pvc-bad").await;
    allow_pvcs(&client, &ns, &ns).await;
    // Pending: no volume was made for it.
    claim(&client, &ns, "pending", json!({"case": "pending"})).await;
    // A CephFS volume of the same Rook cluster.
    let c = claim(&client, &ns, "shared-fs", json!({"case": "cephfs"})).await;
    volume_for(
        &client,
        &c,
        &format!("pvc-{}", c.metadata.uid.as_deref().unwrap()),
        "rook-ceph.cephfs.csi.ceph.com",
        &volume_handle(c.metadata.uid.as_deref().unwrap()),
        json!({"clusterID": "rook-ceph", "fsName": "myfs", "pool": "myfs-replicated", "subvolumeName": "csi-vol-1"}),
    )
    .await;
    wait_bound(&client, &ns, "shared-fs").await;
    // An RBD volume in another pool than the step's.
    provisioned_claim(
        &client,
        &ns,
        "elsewhere",
        json!({"case": "pool"}),
        "otherpool",
        "csi-vol-x",
    )
    .await;
    // A namespace whose runs may not read the claims of `ns`.
    let outsider = run_namespace(&client, "pvc-outsider").await;

    let step = || run().param("action", "status").param("cluster", "site-a");
    let cases: Vec<(RunBuilder, &str, &str, String)> = vec![
        (
            step().param("pvcs", json!(["pending"])),
            &ns,
            "InvalidPvc",
            format!("PVC {ns}/pending is Pending, not Bound"),
        ),
        (
            step().param("pvcs", json!(["missing"])),
            &ns,
            "InvalidPvc",
            format!("PVC {ns}/missing does not exist"),
        ),
        (
            step().param("pvcSelector", "case=cephfs"),
            &ns,
            "InvalidPvc",
            format!("PVC {ns}/shared-fs is not a ceph-csi RBD volume"),
        ),
        (
            step()
                .param("pvcs", json!(["elsewhere"]))
                .param("pool", lab.pool.as_str()),
            &ns,
            "InvalidPvc",
            format!(
                "PVC {ns}/elsewhere is a volume in pool otherpool, not in pool {}",
                lab.pool
            ),
        ),
        (
            step()
                .param("pvcs", json!(["pending"]))
                .param("images", json!(["x"])),
            &ns,
            "InvalidParams",
            "not both".into(),
        ),
        (
            step().param("pvcSelector", "app in (db"),
            &ns,
            "InvalidParams",
            "is not a label selector".into(),
        ),
        (
            step().param("pvcSelector", ""),
            &ns,
            "InvalidParams",
            "empty selector would select every PVC".into(),
        ),
        (
            step()
                .param("pvcs", json!(["pending"]))
                .param("pvcNamespace", ns.as_str()),
            &outsider,
            "Forbidden",
            format!("may not get PersistentVolumeClaim {ns}/pending"),
        ),
        (
            step()
                .param("pvcSelector", "case=pool")
                .param("pvcNamespace", ns.as_str()),
            &outsider,
            "Forbidden",
            format!("may not list PersistentVolumeClaims in namespace {ns}"),
        ),
    ];
    for (i, (b, run_ns, _, _)) in cases.iter().enumerate() {
        b.create(&client, run_ns, &format!("case-{i}")).await;
    }
    for (i, (b, run_ns, reason, text)) in cases.iter().enumerate() {
        let done = wait_done(&client, run_ns, &format!("case-{i}"), 30).await;
        let (status, got_reason, message) = condition(&done).unwrap();
        assert_eq!(
            (status.as_str(), got_reason.as_str()),
            ("False", *reason),
            "case {i} ({:?}): {message}",
            b.params
        );
        assert!(
            message.contains(text.as_str()),
            "case {i}: {message:?} should say {text:?}"
        );
    }
}

/// The issue's "done when": the shipped `planned-failover` pipeline through
/// a real PipelineRun (Tekton creates the CustomRuns), selecting by
/// `pvc-selector`: check-from resolves the claims once and every later step
/// takes its `images` result; the pipeline's `pvcs` result names the claims.
#[tokio::test]
async fn a_pipelinerun_fails_over_the_claims_a_selector_names() {
    use common::pipelines::{install_pipelines, pr_result, start_pipeline, wait_pipeline};
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "pvc-pr").await;
    allow_pvcs(&client, &ns, &ns).await;
    install_pipelines(&client, &ns).await;
    let app = unique("shop");
    let imgs: Vec<String> = (0..2)
        .map(|_| format!("csi-vol-{}", unique("pr")))
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        mirrored_image(&lab.a, &lab.b, &lab.pool, img).await;
        provisioned_claim(
            &client,
            &ns,
            &format!("data-shop-{i}"),
            json!({"app": app}),
            &lab.pool,
            img,
        )
        .await;
    }
    // Another claim of the same pool, not of the application: untouched.
    let other = format!("csi-vol-{}", unique("pr-other"));
    mirrored_image(&lab.a, &lab.b, &lab.pool, &other).await;
    provisioned_claim(
        &client,
        &ns,
        "data-other",
        json!({"app": "other"}),
        &lab.pool,
        &other,
    )
    .await;
    start_pipeline(
        SEL,
        &client,
        &ns,
        "planned-failover",
        "failover",
        json!([
            {"name": "pool", "value": lab.pool},
            {"name": "pvc-selector", "value": format!("app={app}")},
            {"name": "from-cluster", "value": "site-a"},
            {"name": "to-cluster", "value": "site-b"},
        ]),
        json!({}),
    )
    .await;
    let done = wait_pipeline(&client, &ns, "failover", 240).await;
    let (status, reason, message) = condition(&done).unwrap();
    assert_eq!(status, "True", "{reason}: {message}");
    let want: serde_json::Map<String, serde_json::Value> = imgs
        .iter()
        .enumerate()
        .map(|(i, img)| {
            (
                format!("data-shop-{i}"),
                json!(format!("{}/{img}", lab.pool)),
            )
        })
        .collect();
    assert_eq!(
        pr_result(&done, "pvcs").unwrap(),
        serde_json::Value::Object(want)
    );
    let moved = pr_result(&done, "images").unwrap();
    assert_eq!(moved.as_array().unwrap().len(), 2, "{moved}");
    for img in &imgs {
        assert_eq!(lab.b.is_primary(&lab.pool, img), Some(true), "{img}");
        assert_eq!(
            pr_result(&done, "from-states").unwrap()[format!("{}/{img}", lab.pool)]["state"],
            "up+replaying"
        );
    }
    assert_eq!(lab.a.is_primary(&lab.pool, &other), Some(true), "untouched");
}

/// A volume without `radosNamespace` (older ceph-csi) takes its cluster's
/// entry of the ceph-csi config the controller was pointed at
/// (`--ceph-csi-config`, here Rook's ConfigMap and key); a volume of a
/// cluster the config does not know is refused, naming the claim.
#[tokio::test]
async fn older_volumes_take_their_namespace_from_the_ceph_csi_config() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "pvc-csicfg").await;
    allow_pvcs(&client, &ns, &ns).await;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "rook-ceph-csi-config"},
        "data": {"csi-cluster-config-json": serde_json::to_string(&json!([
            {"clusterID": "rook-ceph", "monitors": ["127.0.0.1:6789"], "rbd": {"radosNamespace": ""}}
        ])).unwrap()},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let selector = unique("csicfg");
    let _ctl = start_controller(
        &selector,
        &[(
            "RBDSTEP_CEPH_CSI_CONFIG",
            format!("{ns}/rook-ceph-csi-config").as_str(),
        )],
    );
    let img = format!("csi-vol-{}", unique("cfg"));
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    provisioned_claim(
        &client,
        &ns,
        "known",
        json!({"case": "known"}),
        &lab.pool,
        &img,
    )
    .await;
    let c = claim(&client, &ns, "unknown", json!({"case": "unknown"})).await;
    let mut attrs = provisioned_attributes(&lab.pool, &img);
    attrs["clusterID"] = json!("another-ceph");
    let uid = c.metadata.uid.clone().unwrap();
    volume_for(
        &client,
        &c,
        &format!("pvc-{uid}"),
        RBD_DRIVER,
        &volume_handle(&uid),
        attrs,
    )
    .await;
    wait_bound(&client, &ns, "unknown").await;
    let step = |pvc: &str| {
        RunBuilder::new(&selector)
            .param("action", "status")
            .param("cluster", "site-a")
            .param("pvcs", json!([pvc]))
    };
    step("known").create(&client, &ns, "known").await;
    step("unknown").create(&client, &ns, "unknown").await;
    let done = wait_done(&client, &ns, "known", 60).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(
        result(&done, "pvcs").unwrap(),
        json!({"known": format!("{}/{img}", lab.pool)})
    );
    let done = wait_done(&client, &ns, "unknown", 60).await;
    assert_condition(&done, "False", "InvalidPvc");
    let (_, _, message) = condition(&done).unwrap();
    assert!(
        message.contains(&format!("PVC {ns}/unknown"))
            && message.contains("\"another-ceph\", which the ceph-csi config has no entry for"),
        "{message}"
    );
}

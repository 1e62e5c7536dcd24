//! Faults of the keys: a Secret deleted and its key revoked under a
//! waiting step (D7), keyrings left behind by a killed controller (E2).

use super::*;
use k8s_openapi::api::core::v1::Secret;

/// The caps of the lab's least-privilege client (tests/lab/lib/ceph.sh).
fn step_user(site: &common::Site, user: &str) -> String {
    let pool = format!("profile rbd pool={}", lab().pool);
    site.ceph_ok(&[
        "auth",
        "get-or-create-key",
        &format!("client.{user}"),
        "mon",
        "profile rbd",
        "osd",
        &pool,
        "mgr",
        &pool,
    ])
}

/// faults.md D7: while the promote waits, its cephx key is revoked and its
/// Secret deleted. The run ends False with a reason naming the Secret,
/// after at most 3 attempts, and the key appears nowhere in its status.
#[tokio::test]
async fn a_revoked_key_and_deleted_secret_end_the_run_naming_the_secret() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-d7").await;
    let ctl = logged_controller("d7");
    let user = unique("d7");
    let key = step_user(&lab.b, &user);
    let secret = "site-b-d7";
    connection_secret_user(&client, &ns, secret, &lab.b, &user, &key).await;
    let img = waiting_promote(&client, &ns, &ctl.selector, "promote", secret, 2).await;

    // The Secret goes first, as when a site's client is retired: the next
    // attempt, which starts only once the revoked key fails this one,
    // finds no Secret. (Revoked first, a retry could start between the two
    // and read the old Secret: a fresh client refused from its first call
    // is Forbidden, as for wrong caps; seen in a CI run.)
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete(secret, &Default::default())
        .await
        .unwrap();
    lab.b.ceph_ok(&["auth", "del", &format!("client.{user}")]);
    let t = Instant::now();
    let done = wait_done(&client, &ns, "promote", 120).await;
    let (status, reason, message) = condition(&done).unwrap();
    eprintln!("D7 after {:?}: {status} {reason}: {message}", t.elapsed());
    // The attempt that held the revoked key ends KeyRejected (retried);
    // the next finds the Secret gone, which no retry can change.
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(
        message.contains(secret),
        "the message names the Secret: {message}"
    );
    let retries = attempt_reasons(&done);
    assert_eq!(retries, ["KeyRejected"], "{} attempts", retries.len() + 1);
    let text = serde_json::to_string(&done.data["status"]).unwrap();
    assert!(!text.contains(&key), "the key is in the run's status");
    assert!(
        !std::fs::read_to_string(&ctl.proc.log)
            .unwrap()
            .contains(&key),
        "the key is in the controller's log"
    );
    assert_eq!(ctl.count(&img, "mirror image promote"), 0);
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(false));
}

/// faults.md D7, a rotation done in the order that loses nothing: a new
/// user (Rook's rotation under a new name) is written into the Secret
/// while the promote waits, then the old key is revoked. The attempt that
/// held the old key ends KeyRejected; the next reads the Secret again and
/// finishes the failover.
#[tokio::test]
async fn a_key_rotated_under_a_waiting_promote_is_picked_up_by_the_next_attempt() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-d7r").await;
    let ctl = logged_controller("d7r");
    let (user, rotated) = (unique("d7r"), unique("d7r-next"));
    let old = step_user(&lab.b, &user);
    let secret = "site-b-rotated";
    connection_secret_user(&client, &ns, secret, &lab.b, &user, &old).await;
    let img = waiting_promote(&client, &ns, &ctl.selector, "promote", secret, 2).await;

    let new = step_user(&lab.b, &rotated);
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    secrets.delete(secret, &Default::default()).await.unwrap();
    connection_secret_user(&client, &ns, secret, &lab.b, &rotated, &new).await;
    lab.b.ceph_ok(&["auth", "del", &format!("client.{user}")]);
    let runs = customruns(&client, &ns);
    wait_for(60, "the attempt with the old key to end", || async {
        let r = runs.get("promote").await.ok()?;
        (!attempt_reasons(&r).is_empty()).then_some(())
    })
    .await;
    lab.a
        .rbd_ok(&["mirror", "image", "demote", &format!("{}/{img}", lab.pool)]);
    let done = wait_done(&client, &ns, "promote", 180).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(attempt_reasons(&done), ["KeyRejected"]);
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
    let text = serde_json::to_string(&done.data["status"]).unwrap();
    assert!(!text.contains(&old) && !text.contains(&new));
    lab.b
        .ceph_ok(&["auth", "del", &format!("client.{rotated}")]);
}

/// The condition reason of each attempt archived in retriesStatus.
fn attempt_reasons(run: &kube::api::DynamicObject) -> Vec<String> {
    run.data["status"]["retriesStatus"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["conditions"][0]["reason"].as_str().map(str::to_string))
        .collect()
}

/// The connection directories under a controller's tmp dir, each with the
/// owner directory it is in.
fn connection_dirs(tmp: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for owner in std::fs::read_dir(tmp).unwrap().flatten() {
        if let Ok(inner) = std::fs::read_dir(owner.path()) {
            out.extend(
                inner
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("keyring").exists()),
            );
        }
    }
    out
}

/// faults.md E2: a SIGKILLed controller leaves its keyrings on disk; the
/// next controller's start removes them, and only them: another live
/// controller's keyrings in the same tmp dir are kept and its run finishes.
#[tokio::test]
async fn a_killed_controllers_keyrings_are_swept_and_a_live_ones_kept() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-e2").await;
    let tmp = lab.dir.join("controller-tmp").join(unique("e2-shared"));
    std::fs::create_dir_all(&tmp).unwrap();
    let env = [("RBDSTEP_TMP_DIR", tmp.to_str().unwrap())];
    let (killed_sel, live_sel) = (unique("e2-killed"), unique("e2-live"));

    // Two controllers share the tmp dir, each with a step waiting (its
    // keyrings on disk); one is SIGKILLed.
    let mut killed = start_controller(&killed_sel, &env);
    let _live = start_controller(&live_sel, &env);
    let img_k = waiting_promote(&client, &ns, &killed_sel, "killed", "site-b", 0).await;
    let mut killed_dirs = connection_dirs(&tmp);
    killed_dirs.sort();
    assert!(
        !killed_dirs.is_empty(),
        "the waiting step has its keyrings on disk"
    );
    let img_l = waiting_promote(&client, &ns, &live_sel, "live", "site-b", 0).await;
    let live_dirs: Vec<_> = connection_dirs(&tmp)
        .into_iter()
        .filter(|d| !killed_dirs.contains(d))
        .collect();
    assert!(!live_dirs.is_empty());
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let mut left = connection_dirs(&tmp);
    left.retain(|d| killed_dirs.contains(d));
    left.sort();
    assert_eq!(left, killed_dirs, "SIGKILL leaves them");

    // The next controller of the killed one's runs starts and sweeps.
    let next = start_controller(&killed_sel, &env);
    wait_for(30, "the new controller to sweep", || async {
        killed_dirs.iter().all(|d| !d.exists()).then_some(())
    })
    .await;
    for d in &live_dirs {
        assert!(
            d.join("keyring").exists(),
            "a live controller's keyring was removed: {d:?}"
        );
    }
    let said = std::fs::read_to_string(&next.log).unwrap();
    assert!(
        said.contains("removed stale connection directories"),
        "the new controller's log does not say it swept: {}",
        next.log.display()
    );
    for img in [&img_k, &img_l] {
        lab.a
            .rbd_ok(&["mirror", "image", "demote", &format!("{}/{img}", lab.pool)]);
    }
    for run in ["killed", "live"] {
        assert_condition(
            &wait_done(&client, &ns, run, 120).await,
            "True",
            "Succeeded",
        );
    }
    // Done steps leave no keyring, the live controller's included.
    wait_for(30, "no keyring left", || async {
        connection_dirs(&tmp).is_empty().then_some(())
    })
    .await;
}

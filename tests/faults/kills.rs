//! The controller SIGKILLed: as a promote starts (A2), and in a crash loop
//! through a planned failover (A7).

use super::*;
use common::pipelines::{
    create_pipeline_run, install_pipelines, planned_failover_params, pr_condition,
};

/// The children of process `parent` whose command line contains `needle`.
fn children(parent: u32, needle: &str) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ...": comm may hold spaces, so split after it.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// faults.md A2: the controller is SIGKILLed just as the promote it
/// decided on starts (rbd-timing holds the call 6 s before it execs rbd).
/// The child dies with the controller (I7: the parent-death signal), so
/// the promote never reaches Ceph. The next controller reads the role again
/// and promotes once.
#[tokio::test]
async fn a_controller_killed_as_its_promote_starts_takes_the_child_with_it() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-a2").await;
    let selector = unique("a2");
    let calls = lab
        .dir
        .join("logs")
        .join(format!("rbd-calls-{selector}.log"));
    let mut slow = Logged::env(&calls).to_vec();
    slow.extend([
        ("RBD_SLEEP_MATCH", "mirror image promote "),
        ("RBD_SLEEP_SECS", "6"),
    ]);
    let mut first = start_controller(&selector, &slow);
    let img = waiting_promote(&client, &ns, &selector, "promote", "site-b", 0).await;
    lab.a
        .rbd_ok(&["mirror", "image", "demote", &format!("{}/{img}", lab.pool)]);
    let parent = first.child.id();
    let child = wait_for(60, "the promote's rbd child to start", || async {
        children(parent, "promote").first().copied()
    })
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    wait_for(5, "the rbd child to die with the controller", || async {
        gone(child).then_some(())
    })
    .await;
    // Past the wrapper's hold, the promote has still not reached Ceph.
    let hold_end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < hold_end {
        assert_eq!(
            lab.b.is_primary(&lab.pool, &img),
            Some(false),
            "the killed controller's promote reached Ceph"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = rbd_calls(&calls);
    assert!(
        !log.iter()
            .any(|(_, _, a)| a.starts_with("mirror image promote")),
        "a promote was logged: {log:?}"
    );

    let restarted = now_ns();
    let _second = start_controller(&selector, &Logged::env(&calls));
    let done = wait_done(&client, &ns, "promote", 120).await;
    assert_condition(&done, "True", "Succeeded");
    assert_eq!(lab.b.is_primary(&lab.pool, &img), Some(true));
    let log = call_log(&calls);
    let promotes: Vec<_> = log
        .iter()
        .filter(|c| c.args.starts_with("mirror image promote") && c.args.contains(&img))
        .collect();
    // Every promote came from the next controller; one took effect (one
    // before it may have been refused and retried: EROFS while the
    // demotion snapshot still syncs).
    assert!(
        promotes
            .iter()
            .all(|c| c.start > restarted && c.end.is_some()),
        "{promotes:?}"
    );
    let ok: Vec<_> = promotes.iter().filter(|c| c.exit == Some(0)).collect();
    assert_eq!(ok.len(), 1, "one promote took effect: {promotes:?}");
    let first = promotes[0].start;
    assert!(
        log.iter().any(|c| c.start > restarted
            && c.start < first
            && c.args.starts_with("info")
            && c.args.contains(&img)),
        "the next controller read the role again before promoting: {log:?}"
    );
}

/// faults.md A7: a 3-image planned-failover PipelineRun while the
/// controller crash-loops: SIGKILLed and started again at once, as a
/// crash-looping Pod would be, 4 times. On the lab a planned failover takes
/// about 25 s, less than the row's 20–60 s between kills, so the kills are
/// timed to the work instead of a clock: each strikes when a demote or
/// promote has just been decided (rbd-timing holds it 6 s before its exec),
/// after a seeded random 0–8 s (printed; FAULT_A7_SEED replays it), so that
/// some land before the call reaches Ceph and some after. The pipeline
/// ends Succeeded; the images end primary on site-b only; sampled every
/// second, no image was ever primary on both sites (I3); no resync was
/// issued (I2); no demote or promote of an image succeeded twice.
#[tokio::test]
#[ignore = "minutes long: the fault matrix runs it (tests/lab/lab faults A7)"]
async fn a_crash_looping_controller_still_fails_over_three_images() {
    let _serial = SERIAL.lock().await;
    let (client, lab) = (client().await, lab());
    let ns = run_namespace(&client, "fault-a7").await;
    install_pipelines(&client, &ns).await;
    let selector = unique("a7");
    let calls = lab
        .dir
        .join("logs")
        .join(format!("rbd-calls-{selector}.log"));
    let mut env = Logged::env(&calls).to_vec();
    env.extend([
        ("RBD_SLEEP_MATCH", "mirror image (promote|demote) "),
        ("RBD_SLEEP_SECS", "6"),
    ]);
    let imgs: Vec<String> = (0..3).map(|i| unique(&format!("a7-{i}"))).collect();
    for img in &imgs {
        mirrored_image(&lab.a, &lab.b, &lab.pool, img).await;
    }
    let seed: u64 = std::env::var("FAULT_A7_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ns() as u64 | 1);
    eprintln!("A7 seed {seed} (FAULT_A7_SEED={seed} replays this schedule)");
    let mut rng = seed;
    let mut next_delay = move || {
        // xorshift64*: reproducible from the printed seed.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        Duration::from_millis(rng.wrapping_mul(0x2545F4914F6CDD1D) % 8000)
    };
    const KILLS: usize = 4;
    let mut ctl = start_controller(&selector, &env);
    create_pipeline_run(
        &selector,
        &client,
        &ns,
        "planned-failover",
        "move",
        planned_failover_params(&imgs),
        json!({}),
    )
    .await;
    let prs = common::pipelines::api(&client, &ns, "PipelineRun", "pipelineruns");
    let started = Instant::now();
    let mut kills = vec![];
    let mut both_primary = vec![];
    let mut sampled = Instant::now();
    let mut strike: Option<Instant> = None;
    let done = loop {
        if sampled.elapsed() >= Duration::from_secs(1) {
            sampled = Instant::now();
            for img in &imgs {
                if lab.a.is_primary(&lab.pool, img) == Some(true)
                    && lab.b.is_primary(&lab.pool, img) == Some(true)
                {
                    both_primary.push((started.elapsed(), img.clone()));
                }
            }
            if let Ok(pr) = prs.get("move").await
                && pr_condition(&pr).is_some_and(|(s, _, _)| s != "Unknown")
            {
                break pr;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the pipeline did not end within 10 min ({} kills)",
            kills.len()
        );
        if kills.len() < KILLS {
            match strike {
                // A child of the controller running (holding) a demote or
                // promote: its argv words are NUL-separated in /proc.
                None if ["promote", "demote"]
                    .iter()
                    .any(|m| !children(ctl.child.id(), m).is_empty()) =>
                {
                    strike = Some(Instant::now() + next_delay());
                }
                Some(at) if Instant::now() >= at => {
                    ctl.child.kill().unwrap();
                    ctl.child.wait().unwrap();
                    kills.push(started.elapsed());
                    strike = None;
                    ctl = start_controller(&selector, &env);
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "A7: {} kills at {kills:?}; pipeline ended after {:?}",
        kills.len(),
        started.elapsed()
    );
    assert_condition(&done, "True", "Succeeded");
    assert!(
        both_primary.is_empty(),
        "both sites primary: {both_primary:?}"
    );
    let log = call_log(&calls);
    for img in &imgs {
        assert_eq!(lab.b.is_primary(&lab.pool, img), Some(true), "{img}");
        assert_eq!(lab.a.is_primary(&lab.pool, img), Some(false), "{img}");
        let calls = |cmd: &str| -> Vec<&Call> {
            log.iter()
                .filter(|c| c.args.contains(img.as_str()) && c.args.starts_with(cmd))
                .collect()
        };
        let ok = |v: &[&Call]| v.iter().filter(|c| c.exit == Some(0)).count();
        let (demotes, promotes) = (calls("mirror image demote"), calls("mirror image promote"));
        eprintln!(
            "{img}: demotes {:?}, promotes {:?} (exit status; None: killed with its controller)",
            demotes.iter().map(|c| c.exit).collect::<Vec<_>>(),
            promotes.iter().map(|c| c.exit).collect::<Vec<_>>()
        );
        // A call that took effect is never sent again once its controller
        // saw it succeed; one killed with its controller may be, after the
        // role is read again.
        assert!(ok(&demotes) <= 1, "{img}: demoted twice: {demotes:?}");
        assert!(ok(&promotes) <= 1, "{img}: promoted twice: {promotes:?}");
        assert!(calls("mirror image resync").is_empty(), "{img}: resynced");
    }
    drop(ctl);
}

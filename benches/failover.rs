//! `tests/lab/lab bench`: how close to Ceph's own limit a failover runs, and
//! how it compares with the Job-based way, side by side on the lab.
//! Prints a table and writes `$LAB_DIR/bench.json`. Figures, not asserts:
//! the behaviour is checked by the tests.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/plot.rs"]
mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::runs::*;
use common::{Site, client, lab, mirrored_image, unique, wait_for};
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

struct Calls(PathBuf);

impl Calls {
    /// (start ns, end ns, args) of each rbd call the controller made.
    fn all(&self) -> Vec<(u128, Option<u128>, String)> {
        rbd_calls(&self.0)
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Wall time covered by at least one of the intervals: time inside `rbd`
/// counted once when calls overlap.
fn covered(mut spans: Vec<(u128, u128)>) -> u128 {
    spans.sort();
    let (mut total, mut reach) = (0, 0);
    for (s, e) in spans {
        let s = s.max(reach);
        if e > s {
            total += e - s;
            reach = e;
        }
    }
    total
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn metric(port: u16, name: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-fsS", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// A watch on one run, opened (its initial list done) before the action it
/// times: the instant it shows the run finished is not a poll's, and the
/// action's request does not wait behind the watch's connection set-up.
struct DoneWatch {
    events: futures::stream::BoxStream<
        'static,
        Result<kube::runtime::watcher::Event<DynamicObject>, kube::runtime::watcher::Error>,
    >,
    name: String,
}

impl DoneWatch {
    async fn open(api: &Api<DynamicObject>, name: &str) -> DoneWatch {
        use futures::StreamExt;
        use kube::runtime::watcher::{self, Event};
        let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api.clone(), wc).boxed();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(e) = events.next().await {
                if let Ok(Event::InitDone) = e {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(ready == Ok(true), "the watch on {name} did not start");
        DoneWatch {
            events,
            name: name.to_string(),
        }
    }

    async fn finished(mut self, secs: u64) -> (Instant, DynamicObject) {
        use futures::StreamExt;
        use kube::runtime::watcher::Event;
        let found = tokio::time::timeout(Duration::from_secs(secs), async {
            while let Some(e) = self.events.next().await {
                if let Ok(Event::Apply(o) | Event::InitApply(o)) = e
                    && condition(&o).is_some_and(|(s, _, _)| s != "Unknown")
                {
                    return Some((Instant::now(), o));
                }
            }
            None
        })
        .await;
        let name = &self.name;
        found
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{name} did not finish within {secs}s"))
    }
}

async fn wait_cond(api: &Api<DynamicObject>, name: &str, secs: u64) -> (Instant, DynamicObject) {
    let o = wait_for(secs, &format!("{name} to finish"), || async {
        let o = api.get(name).await.ok()?;
        condition(&o).filter(|(s, _, _)| s != "Unknown").map(|_| o)
    })
    .await;
    (Instant::now(), o)
}

fn rbd_promote(site: &Site, pool: &str, img: &str) -> bool {
    site.rbd_admin(&["mirror", "image", "promote", &format!("{pool}/{img}")])
        .status
        .success()
}

/// Makes `from` primary and `to` replaying for every image, then demotes
/// them all on `from`: the state just before a promote on `to`.
async fn prepare(from: &Site, to: &Site, pool: &str, imgs: &[String]) {
    for i in imgs {
        wait_for(180, &format!("{i} replaying on {}", to.name), || async {
            (from.is_primary(pool, i) == Some(true)
                && to.is_primary(pool, i) == Some(false)
                && to.mirror_state(pool, i).as_deref() == Some("up+replaying"))
            .then_some(())
        })
        .await;
    }
    let handles: Vec<_> = imgs
        .iter()
        .map(|i| {
            let (conf, spec) = (from.admin_conf.clone(), format!("{pool}/{i}"));
            std::thread::spawn(move || {
                Command::new("rbd")
                    .arg("-c")
                    .arg(conf)
                    .args(["mirror", "image", "demote", &spec])
                    .output()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
}

/// The physical limit: every image at once, `promote` retried every 0.1 s.
fn limit(to: &Site, pool: &str, imgs: &[String]) -> Duration {
    let t0 = Instant::now();
    let hs: Vec<_> = imgs
        .iter()
        .map(|i| {
            let (conf, spec) = (to.admin_conf.clone(), format!("{pool}/{i}"));
            std::thread::spawn(move || {
                loop {
                    let ok = Command::new("rbd")
                        .arg("-c")
                        .arg(&conf)
                        .args(["mirror", "image", "promote", &spec])
                        .output()
                        .unwrap();
                    if ok.status.success()
                        || String::from_utf8_lossy(&ok.stderr).contains("already primary")
                    {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    t0.elapsed()
}

/// The Jobs people use today: a serial loop, retrying every 3 s.
fn seed(to: &Site, pool: &str, imgs: &[String]) -> Duration {
    let t0 = Instant::now();
    for i in imgs {
        while !rbd_promote(to, pool, i) {
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    t0.elapsed()
}

struct Bench {
    client: kube::Client,
    ns: String,
    selector: String,
    calls: Calls,
    proc: ControllerProcess,
    port: u16,
    out: BTreeMap<String, Value>,
}

impl Bench {
    fn runs(&self) -> Api<DynamicObject> {
        customruns(&self.client, &self.ns)
    }

    /// Creates the run and times it to the moment a watch sees it finished.
    async fn step(&self, name: &str, b: RunBuilder) -> (Duration, DynamicObject) {
        let watch = DoneWatch::open(&self.runs(), name).await;
        let t0 = Instant::now();
        b.create(&self.client, &self.ns, name).await;
        let (t1, o) = watch.finished(600).await;
        (t1 - t0, o)
    }

    async fn overhead(&mut self, img: &str) {
        let lab = lab();
        let mut totals = vec![];
        let mut overheads = vec![];
        let mut writes = vec![];
        for k in 0..50 {
            let name = format!("ovh-{k}");
            let w0 = metric(self.port, "rbdstep_status_writes_total");
            let start = now_ns();
            let (d, o) = self
                .step(
                    &name,
                    RunBuilder::new(&self.selector)
                        .param("action", "status")
                        .param("cluster", "site-a")
                        .param("pool", lab.pool.as_str())
                        .param("images", json!([img])),
                )
                .await;
            let end = now_ns();
            assert_condition(&o, "True", "Succeeded");
            let spans: Vec<(u128, u128)> = self
                .calls
                .all()
                .iter()
                .filter(|(s, _, _)| *s >= start && *s <= end)
                // Every call of a Succeeded step has ended in its controller's log.
                .map(|(s, e, _)| (*s, e.expect("the call's end in the controller log")))
                .collect();
            let in_rbd = covered(spans);
            totals.push(d.as_secs_f64() * 1e3);
            overheads.push(d.as_secs_f64() * 1e3 - in_rbd as f64 / 1e6);
            writes.push((metric(self.port, "rbdstep_status_writes_total") - w0) as f64);
        }
        let r = json!({
            "runs": 50,
            "total_ms_p50": pct(&mut totals.clone(), 0.5), "total_ms_p95": pct(&mut totals, 0.95),
            "overhead_ms_p50": pct(&mut overheads.clone(), 0.5), "overhead_ms_p95": pct(&mut overheads, 0.95),
            "status_writes_per_step_p50": pct(&mut writes, 0.5),
        });
        println!("step overhead (status, 1 image, {} runs): {r}", 50);
        self.out.insert("step_overhead".into(), r);
    }

    async fn cancel_latency(&mut self, img: &str) {
        let lab = lab();
        let mut lat = vec![];
        let mut late_calls = 0;
        for k in 0..10 {
            let name = format!("cxl-{k}");
            RunBuilder::new(&self.selector)
                .param("action", "promote")
                .param("cluster", "site-b")
                .param("peerCluster", "site-a")
                .param("pool", lab.pool.as_str())
                .param("images", json!([img]))
                .create(&self.client, &self.ns, &name)
                .await;
            wait_message(&self.client, &self.ns, &name, "still primary", 60).await;
            let watch = DoneWatch::open(&self.runs(), &name).await;
            let t0 = Instant::now();
            let patched = now_ns();
            cancel(&self.client, &self.ns, &name).await;
            let (t1, o) = watch.finished(30).await;
            assert_condition(&o, "False", "CustomRunCancelled");
            lat.push((t1 - t0).as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_secs(3)).await;
            late_calls += self
                .calls
                .all()
                .iter()
                .filter(|(s, _, a)| *s > patched + (t1 - t0).as_nanos() && a.contains(img))
                .count();
        }
        let r = json!({"runs": 10, "cancel_ms_p50": pct(&mut lat.clone(), 0.5), "cancel_ms_max": pct(&mut lat, 1.0), "rbd_calls_started_after_cancel_written": late_calls});
        println!("cancel latency: {r}");
        self.out.insert("cancel".into(), r);
    }

    async fn bulk(&mut self, n: usize) {
        let lab = lab();
        let pool = lab.pool.clone();
        let imgs: Vec<String> = (0..n).map(|_| unique(&format!("bulk{n}"))).collect();
        many_images(&imgs).await;
        let mut res = BTreeMap::new();
        // Alternate direction: each trial demotes on the primary and promotes on the other.
        let mut dir = (&lab.a, &lab.b, "site-a", "site-b");
        let flip =
            |d: (&'static Site, &'static Site, &'static str, &'static str)| (d.1, d.0, d.3, d.2);
        // BENCH_VARIANTS=limit,controller-c16 (say) for a quick experiment.
        let chosen = std::env::var("BENCH_VARIANTS").unwrap_or_default();
        for variant in [
            "limit",
            "seed",
            "controller-c1",
            "controller-c4",
            "controller-c16",
            "controller-cmax",
        ]
        .into_iter()
        .filter(|v| chosen.is_empty() || chosen.split(',').any(|c| c == *v))
        {
            prepare(dir.0, dir.1, &pool, &imgs).await;
            let calls_before = self.calls.all().len();
            let w0 = metric(self.port, "rbdstep_status_writes_total");
            let d = match variant {
                "limit" => limit(dir.1, &pool, &imgs),
                "seed" => seed(dir.1, &pool, &imgs),
                v => {
                    // cmax: as many at once as the limit has (up to the
                    // controller's maximum, 64): its own cost at equal width.
                    let c = match v.trim_start_matches("controller-c") {
                        "max" => n.min(64).to_string(),
                        c => c.to_string(),
                    };
                    let name = format!("bulk{n}-{v}-{}", unique("r"));
                    let (d, o) = self
                        .step(
                            &name,
                            RunBuilder::new(&self.selector)
                                .param("action", "promote")
                                .param("cluster", dir.3)
                                .param("peerCluster", dir.2)
                                .param("pool", pool.as_str())
                                .param("images", json!(imgs))
                                .param("concurrency", c.as_str()),
                        )
                        .await;
                    assert_condition(&o, "True", "Succeeded");
                    d
                }
            };
            let mut r = json!({"seconds": d.as_secs_f64()});
            if variant.starts_with("controller") {
                let calls = self.calls.all().len() - calls_before;
                r["rbd_calls_per_image"] = json!(calls as f64 / n as f64);
                r["status_writes"] = json!(metric(self.port, "rbdstep_status_writes_total") - w0);
            }
            println!("bulk promote N={n} {variant}: {r}");
            res.insert(variant.to_string(), r);
            dir = flip(dir);
        }
        let secs = |v: &str| {
            res.get(v)
                .and_then(|r| r["seconds"].as_f64())
                .unwrap_or(f64::NAN)
        };
        let (lim, c16, sd, cmax) = (
            secs("limit"),
            secs("controller-c16"),
            secs("seed"),
            secs("controller-cmax"),
        );
        let summary = json!({
            "controller_c16_over_limit": c16 / lim,
            "controller_cmax_over_limit": cmax / lim,
            "cmax": n.min(64),
            "seed_over_controller_c16": sd / c16,
        });
        println!("bulk promote N={n}: {summary}");
        res.insert("ratios".into(), summary);
        self.out.insert(format!("bulk_promote_n{n}"), json!(res));
    }

    async fn footprint(&mut self) {
        let idle = rss_kib(self.proc.child.id());
        // 1,000 runs that finish at once (refused params: no Ceph work).
        for k in 0..1000 {
            let b = RunBuilder::new(&self.selector)
                .param("action", "status")
                .param("cluster", "site-a")
                .param("pool", "replicapool");
            let obj: DynamicObject = serde_json::from_value(b.body(&format!("many-{k}"))).unwrap();
            self.runs()
                .create(&PostParams::default(), &obj)
                .await
                .unwrap();
        }
        wait_cond(&self.runs(), "many-999", 300).await;
        wait_for(300, "all 1000 finished", || async {
            let l = self.runs().list(&Default::default()).await.ok()?;
            l.items
                .iter()
                .all(|o| condition(o).is_some_and(|(s, _, _)| s != "Unknown"))
                .then_some(())
        })
        .await;
        let loaded = rss_kib(self.proc.child.id());
        let r = json!({"rss_idle_mib": idle as f64 / 1024.0, "rss_with_1000_runs_mib": loaded as f64 / 1024.0});
        println!("footprint: {r}");
        self.out.insert("footprint".into(), r);
    }

    async fn planned_pipeline(&mut self, n: usize) {
        let lab = lab();
        let pool = lab.pool.clone();
        let imgs: Vec<String> = (0..n).map(|_| unique(&format!("pp{n}"))).collect();
        many_images(&imgs).await;
        // Through Tekton: site-a -> site-b.
        let prs: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &kube::api::ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"),
                "pipelineruns",
            ),
        );
        let name = unique("pp");
        let pr: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": name, "labels": {"rbdmirror.dev/test": self.selector}},
            "spec": {"pipelineRef": {"name": "planned-failover"}, "params": [
                {"name": "pool", "value": pool}, {"name": "images", "value": imgs},
                {"name": "from-cluster", "value": "site-a"}, {"name": "to-cluster", "value": "site-b"},
                // Every image at once, as the by-hand sequence does.
                {"name": "concurrency", "value": n.to_string()}]}
        }))
        .unwrap();
        let t0 = Instant::now();
        prs.create(&PostParams::default(), &pr).await.unwrap();
        let (t1, o) = wait_cond(&prs, &name, 900).await;
        assert_eq!(condition(&o).unwrap().0, "True", "{:?}", condition(&o));
        let pipeline = (t1 - t0).as_secs_f64();
        // Time inside the steps, to find Tekton's hand-off cost.
        let steps = self
            .runs()
            .list(
                &kube::api::ListParams::default().labels(&format!("tekton.dev/pipelineRun={name}")),
            )
            .await
            .unwrap();
        let step_secs: Vec<(String, f64)> = steps
            .items
            .iter()
            .map(|s| {
                let d = result(s, "duration")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                (
                    s.metadata.labels.as_ref().unwrap()["tekton.dev/pipelineTask"].clone(),
                    d.trim_end_matches('s').parse().unwrap_or(0.0),
                )
            })
            .collect();
        // The critical path: max(check-from, check-to) + demote + promote + wait-replaying (+ report, in finally).
        let get = |t: &str| step_secs.iter().find(|(n, _)| n == t).map_or(0.0, |x| x.1);
        let critical = get("check-from").max(get("check-to"))
            + get("demote")
            + get("promote")
            + get("wait-replaying")
            + get("report");
        // By hand, the other way back (b -> a), same end state.
        let t0 = Instant::now();
        prepare(&lab.b, &lab.a, &pool, &imgs).await;
        let prep = t0.elapsed();
        let t0 = Instant::now();
        limit(&lab.a, &pool, &imgs);
        wait_for(300, "site-b replaying", || async {
            imgs.iter()
                .all(|i| lab.b.mirror_state(&pool, i).as_deref() == Some("up+replaying"))
                .then_some(())
        })
        .await;
        let by_hand = t0.elapsed().as_secs_f64() + prep.as_secs_f64();
        let r = json!({"images": n, "pipeline_seconds": pipeline, "by_hand_seconds": by_hand, "pipeline_over_hand": pipeline / by_hand,
            "time_in_steps_critical_path_seconds": critical, "tekton_handoff_seconds_per_task": (pipeline - critical) / 5.0});
        println!("planned failover pipeline: {r}");
        self.out.insert(format!("planned_failover_n{n}"), r);
    }
}

/// Snapshot-mirrored images on site-a, created together, replaying on site-b.
/// Seconds against N for each bulk variant, in the key's order (BENCHMARKS.md).
fn bulk_series(out: &BTreeMap<String, Value>, sizes: &[usize]) -> Vec<plot::Series> {
    let variants: [(&str, plot::Rgb); 6] = [
        ("seed", [214, 39, 40]),
        ("controller-c1", [255, 127, 14]),
        ("controller-c4", [31, 119, 180]),
        ("controller-c16", [44, 160, 44]),
        ("controller-cmax", [148, 103, 189]),
        ("limit", [0, 0, 0]),
    ];
    variants
        .iter()
        .map(|&(v, color)| plot::Series {
            color,
            points: sizes
                .iter()
                .filter_map(|n| {
                    let secs = out.get(&format!("bulk_promote_n{n}"))?[v]["seconds"].as_f64()?;
                    Some((*n as f64, secs))
                })
                .collect(),
        })
        .collect()
}

async fn many_images(imgs: &[String]) {
    let lab = lab();
    for i in imgs {
        let spec = format!("{}/{i}", lab.pool);
        lab.a.rbd_ok(&["create", "--size", "16M", &spec]);
        lab.a
            .rbd_ok(&["mirror", "image", "enable", &spec, "snapshot"]);
    }
    for i in imgs {
        wait_for(300, &format!("{i} replaying on site-b"), || async {
            (lab.b.mirror_state(&lab.pool, i).as_deref() == Some("up+replaying")).then_some(())
        })
        .await;
    }
}

async fn install_pipelines(client: &kube::Client, ns: &str) {
    for f in ["planned-failover.yaml"] {
        let text =
            std::fs::read_to_string(format!("{}/tekton/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let obj: DynamicObject =
            serde_json::from_value(serde_saphyr::from_str::<Value>(&text).unwrap()).unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            ns,
            &kube::api::ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk("tekton.dev", "v1", "Pipeline"),
                "pipelines",
            ),
        );
        api.create(&PostParams::default(), &obj).await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let lab = lab();
    let client = client().await;
    let ns = run_namespace(&client, "bench").await;
    install_pipelines(&client, &ns).await;
    let selector = unique("bench");
    let calls = lab
        .dir
        .join("logs")
        .join(format!("rbd-timing-{selector}.log"));
    let port = 18091;
    // Quiet by default: logging is not what is measured. BENCH_RUST_LOG=debug
    // gives the controller's timeline of each step in its log.
    // The per-call debug line is where the call log's ends come from (one
    // line per rbd process, next to nothing beside the process itself).
    let log_level = format!(
        "{},rbd_mirror_step::ceph::cli=debug",
        std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into())
    );
    // BENCH_CALLGRIND=<file>: the controller runs under callgrind (tens of
    // times slower: only the profile, not the times, means anything then).
    let callgrind = std::env::var("BENCH_CALLGRIND").ok();
    let out_file = callgrind
        .as_ref()
        .map(|f| format!("--callgrind-out-file={f}"));
    let prefix: Vec<&str> = match &out_file {
        Some(f) => vec!["valgrind", "--tool=callgrind", f.as_str()],
        None => vec![],
    };
    let proc = start_controller_under(
        &prefix,
        &selector,
        &[
            ("RBD_BINARY", RBD_TIMING),
            ("RBD_CALL_LOG", calls.to_str().unwrap()),
            ("RBDSTEP_HEALTH_ADDR", &format!("127.0.0.1:{port}")),
            ("RUST_LOG", &log_level),
        ],
    );
    wait_for(120, "controller metrics", || async {
        Command::new("curl")
            .args(["-fsS", &format!("http://127.0.0.1:{port}/readyz")])
            .output()
            .ok()?
            .status
            .success()
            .then_some(())
    })
    .await;
    let mut b = Bench {
        client,
        ns,
        selector,
        calls: Calls(calls),
        proc,
        port,
        out: BTreeMap::new(),
    };
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |k: &str| only.is_empty() || only.split(',').any(|x| x == k);
    let img = unique("ovh");
    mirrored_image(&lab.a, &lab.b, &lab.pool, &img).await;
    if want("overhead") {
        b.overhead(&img).await;
    }
    if want("cancel") {
        b.cancel_latency(&img).await;
    }
    let sizes: Vec<usize> = std::env::var("BENCH_N")
        .unwrap_or_else(|_| "20,50,100".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    if want("bulk") {
        for &n in &sizes {
            b.bulk(n).await;
        }
        let png = Path::new(&lab.dir).join("bench-bulk.png");
        match plot::draw(&png, &bulk_series(&b.out, &sizes)) {
            Ok(()) => println!("bulk promote time against N drawn in {}", png.display()),
            Err(e) => println!("no plot: {e}"),
        }
    }
    if want("pipeline") {
        for n in [1, 20] {
            b.planned_pipeline(n).await;
        }
    }
    if want("footprint") {
        b.footprint().await;
    }
    let path = Path::new(&lab.dir).join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&b.out).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
    if let Some(f) = callgrind {
        // A graceful exit (stdin closed), or callgrind writes no profile.
        let mut proc = b.proc;
        drop(proc.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(120);
        let exited = loop {
            if let Some(st) = proc.child.try_wait().expect("controller status") {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the profiled controller did not exit"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("controller exited ({exited}); profile in {f}");
    }
}

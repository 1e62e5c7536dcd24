//! Process-wide counters, served at `/metrics` in the Prometheus text format
//! (three counters do not need a metrics library).

use std::sync::atomic::{AtomicU64, Ordering};

pub static STATUS_WRITES: AtomicU64 = AtomicU64::new(0);
pub static RBD_CALLS: AtomicU64 = AtomicU64::new(0);
pub static RUNS_FINISHED: AtomicU64 = AtomicU64::new(0);

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn render() -> String {
    let mut s = String::new();
    for (name, help, c) in [
        (
            "rbdstep_status_writes_total",
            "Status writes to CustomRuns and Runs.",
            &STATUS_WRITES,
        ),
        (
            "rbdstep_rbd_calls_total",
            "rbd commands started.",
            &RBD_CALLS,
        ),
        (
            "rbdstep_runs_finished_total",
            "Runs given a final status.",
            &RUNS_FINISHED,
        ),
    ] {
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            c.load(Ordering::Relaxed)
        ));
    }
    s
}

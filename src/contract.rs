//! The Tekton custom-task contract as pure functions over a run's status:
//! start, progress, succeed, fail, cancel, time out and retry. No I/O; the
//! clock is an argument. Rules and their sources: ../shared/tekton-contract.md
//! (CustomRun types and helpers in tektoncd/pipeline pkg/apis/pipeline/v1beta1).

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use crate::api::{Condition, Flavor, RunResult, RunStatus, TektonRun};

pub const SUCCEEDED: &str = "Succeeded";
pub const REASON_RUNNING: &str = "Running";
pub const REASON_RETRYING: &str = "Retrying";
pub const REASON_SUCCEEDED: &str = "Succeeded";

/// Tekton's `GetTimeout()` default when `spec.timeout` is absent (60 minutes,
/// the constant, not the config-defaults ConfigMap).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// The only cancel reason Tekton's PipelineRun logic counts as "cancelled".
pub fn reason_cancelled(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::CustomRun => "CustomRunCancelled",
        Flavor::Run => "RunCancelled",
    }
}

pub fn reason_timed_out(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::CustomRun => "CustomRunTimedOut",
        Flavor::Run => "RunTimedOut",
    }
}

/// RFC 3339 with second precision, as metav1.Time serialises.
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

pub fn succeeded_condition(status: &RunStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == SUCCEEDED)
}

/// `IsDone()`: the Succeeded condition exists and is not Unknown.
pub fn is_done(status: &RunStatus) -> bool {
    succeeded_condition(status).is_some_and(|c| c.status != "Unknown")
}

pub fn is_started(status: &RunStatus) -> bool {
    status.start_time.is_some()
}

/// Sets the Succeeded condition; `lastTransitionTime` moves only when the
/// condition's status changes (knative semantics).
fn set_succeeded(status: &mut RunStatus, value: &str, reason: &str, message: &str, now: Timestamp) {
    let ltt = match succeeded_condition(status) {
        Some(c) if c.status == value && c.last_transition_time.is_some() => {
            c.last_transition_time.clone()
        }
        _ => Some(format_time(now)),
    };
    let cond = Condition {
        type_: SUCCEEDED.to_string(),
        status: value.to_string(),
        reason: Some(reason.to_string()),
        message: (!message.is_empty()).then(|| message.to_string()),
        last_transition_time: ltt,
        severity: None,
    };
    status.conditions.retain(|c| c.type_ != SUCCEEDED);
    status.conditions.push(cond);
}

/// `InitializeConditions` + `MarkRunning`: the attempt starts now.
pub fn start(status: &mut RunStatus, now: Timestamp, message: &str) {
    if status.start_time.is_none() {
        status.start_time = Some(format_time(now));
    }
    status.completion_time = None;
    set_succeeded(status, "Unknown", REASON_RUNNING, message, now);
}

/// Progress of a running attempt, in the condition's message.
pub fn progress(status: &mut RunStatus, now: Timestamp, message: &str) {
    let reason = succeeded_condition(status)
        .and_then(|c| c.reason.clone())
        .unwrap_or_else(|| REASON_RUNNING.to_string());
    set_succeeded(status, "Unknown", &reason, message, now);
}

fn finish(
    status: &mut RunStatus,
    value: &str,
    reason: &str,
    message: &str,
    results: Vec<RunResult>,
    now: Timestamp,
) {
    if status.start_time.is_none() {
        status.start_time = Some(format_time(now));
    }
    set_succeeded(status, value, reason, message, now);
    // MarkCustomRunSucceeded/Failed: completionTime is the transition time.
    status.completion_time = Some(format_time(now));
    status.results = results;
}

pub fn succeed(status: &mut RunStatus, now: Timestamp, message: &str, results: Vec<RunResult>) {
    finish(status, "True", REASON_SUCCEEDED, message, results, now);
}

pub fn fail(
    status: &mut RunStatus,
    now: Timestamp,
    reason: &str,
    message: &str,
    results: Vec<RunResult>,
) {
    finish(status, "False", reason, message, results, now);
}

pub fn cancel(
    status: &mut RunStatus,
    flavor: Flavor,
    now: Timestamp,
    message: &str,
    results: Vec<RunResult>,
) {
    finish(
        status,
        "False",
        reason_cancelled(flavor),
        message,
        results,
        now,
    );
}

pub fn time_out(
    status: &mut RunStatus,
    flavor: Flavor,
    now: Timestamp,
    message: &str,
    results: Vec<RunResult>,
) {
    finish(
        status,
        "False",
        reason_timed_out(flavor),
        message,
        results,
        now,
    );
}

/// Archives the failed attempt into `retriesStatus` (a copy of the status
/// without its own `retriesStatus`, marked failed) and starts the next one
/// with the live condition back at Unknown, as Tekton's retry rule asks:
/// Succeeded=False is only written once retries are used up.
pub fn retry(
    status: &mut RunStatus,
    now: Timestamp,
    reason: &str,
    message: &str,
    results: Vec<RunResult>,
) {
    let mut attempt = status.clone();
    attempt.retries_status.clear();
    attempt.extra_fields = None;
    attempt.annotations = None;
    fail(&mut attempt, now, reason, message, results);
    status
        .retries_status
        .push(serde_json::to_value(&attempt).unwrap_or(Value::Null));
    status.start_time = Some(format_time(now));
    status.completion_time = None;
    status.results.clear();
    let next = status.retries_status.len() + 1;
    set_succeeded(
        status,
        "Unknown",
        REASON_RETRYING,
        &format!("attempt {next} after: {message}"),
        now,
    );
}

/// How an attempt ended, as the controller saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttemptEnd<'a> {
    Succeeded,
    Failed {
        reason: &'a str,
        /// Whether another attempt could change anything.
        retryable: bool,
    },
    TimedOut,
    Cancelled,
}

/// Tekton's rule for the end of an attempt, in one place: a retryable
/// failure, or a CustomRun attempt that timed out, starts the next attempt
/// while retries are left (a legacy Run's timeout spans all its retries,
/// so its timeout ends it); anything else ends the run. Returns whether
/// the run was retried.
pub fn end_attempt(
    status: &mut RunStatus,
    run: &TektonRun,
    now: Timestamp,
    end: AttemptEnd,
    message: &str,
    results: Vec<RunResult>,
) -> bool {
    let flavor = run.flavor;
    match end {
        AttemptEnd::Succeeded => succeed(status, now, message, results),
        AttemptEnd::Failed { reason, retryable } if retryable && retries_left(run) => {
            retry(status, now, reason, message, results);
            return true;
        }
        AttemptEnd::Failed { reason, .. } => fail(status, now, reason, message, results),
        AttemptEnd::TimedOut if retries_on_timeout(run) => {
            retry(status, now, reason_timed_out(flavor), message, results);
            return true;
        }
        AttemptEnd::TimedOut => time_out(status, flavor, now, message, results),
        AttemptEnd::Cancelled => cancel(status, flavor, now, message, results),
    }
    false
}

/// Whether a timed-out attempt of this run is retried.
pub fn retries_on_timeout(run: &TektonRun) -> bool {
    run.flavor == Flavor::CustomRun && retries_left(run)
}

/// Attempts made so far, this one included.
pub fn attempt(status: &RunStatus) -> usize {
    status.retries_status.len() + 1
}

pub fn retries_left(run: &TektonRun) -> bool {
    (run.status.retries_status.len() as u32) < run.spec.retries
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("spec.timeout {value:?} is not a Go duration such as \"90s\" or \"1h0m0s\"")]
pub struct BadTimeout {
    pub value: String,
}

/// The attempt's timeout: `None` means no timeout (`0`), absent means 60 minutes.
pub fn timeout(run: &TektonRun) -> Result<Option<Duration>, BadTimeout> {
    match run.spec.timeout.as_deref() {
        None => Ok(Some(DEFAULT_TIMEOUT)),
        Some(s) => match parse_go_duration(s) {
            Some(d) if d.is_zero() => Ok(None),
            Some(d) => Ok(Some(d)),
            None => Err(BadTimeout {
                value: s.to_string(),
            }),
        },
    }
}

/// When the current attempt (CustomRun) or the whole run (legacy Run, whose
/// timeout spans all retries) times out.
pub fn deadline(run: &TektonRun, timeout: Option<Duration>) -> Option<Timestamp> {
    let timeout = timeout?;
    let start = match run.flavor {
        Flavor::CustomRun => run.status.start_time.as_deref(),
        Flavor::Run => run
            .status
            .retries_status
            .first()
            .and_then(|a| a.get("startTime"))
            .and_then(Value::as_str)
            .or(run.status.start_time.as_deref()),
    }?;
    let start = parse_time(start)?;
    let span = jiff::SignedDuration::try_from(timeout).ok()?;
    start.checked_add(span).ok()
}

/// What reconcile must do with a run, decided from its spec and status alone.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Finished: never move it back, whatever is patched onto it later.
    Done,
    /// `spec.status: RunCancelled` on an unfinished run.
    Cancel,
    /// Not started: validate and start the first attempt.
    Start,
    /// The attempt's deadline passed: retry when retries are left (CustomRun only).
    TimedOut { retry: bool },
    /// Running: keep (or resume) the attempt, look again at the deadline.
    Running { deadline: Option<Timestamp> },
}

pub fn decide(run: &TektonRun, now: Timestamp, timeout: Option<Duration>) -> Decision {
    if is_done(&run.status) {
        return Decision::Done;
    }
    if run.is_cancelled() {
        return Decision::Cancel;
    }
    if !is_started(&run.status) {
        return Decision::Start;
    }
    let deadline = deadline(run, timeout);
    match deadline {
        // HasTimedOut: now - startTime > timeout.
        Some(d) if now > d => Decision::TimedOut {
            retry: retries_on_timeout(run),
        },
        _ => Decision::Running { deadline },
    }
}

/// Parses a Go `time.Duration` string ("1h0m0s", "90s", "1.5h", "300ms", "0").
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * scale;
    }
    if !total.is_finite() || total > 1e10 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::run::RunSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn run(flavor: Flavor) -> TektonRun {
        TektonRun {
            flavor,
            metadata: ObjectMeta::default(),
            spec: RunSpec::default(),
            status: RunStatus::default(),
        }
    }

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "10", "5x", "-1s", "h", "1..2s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn absent_timeout_means_sixty_minutes_and_zero_means_none() {
        let mut r = run(Flavor::CustomRun);
        assert_eq!(timeout(&r), Ok(Some(DEFAULT_TIMEOUT)));
        r.spec.timeout = Some("0s".into());
        assert_eq!(timeout(&r), Ok(None));
        r.spec.timeout = Some("soon".into());
        assert!(timeout(&r).is_err());
    }

    #[test]
    fn new_run_starts_then_runs_until_its_deadline() {
        let mut r = run(Flavor::CustomRun);
        let now = t("2026-11-27T12:00:00Z");
        let to = Some(Duration::from_secs(60));
        assert_eq!(decide(&r, now, to), Decision::Start);
        start(&mut r.status, now, "starting");
        let c = succeeded_condition(&r.status).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("Unknown", Some("Running"))
        );
        assert_eq!(r.status.start_time.as_deref(), Some("2026-11-27T12:00:00Z"));
        assert_eq!(
            decide(&r, t("2026-11-27T12:01:00Z"), to),
            Decision::Running {
                deadline: Some(t("2026-11-27T12:01:00Z"))
            }
        );
        assert_eq!(
            decide(&r, t("2026-11-27T12:01:01Z"), to),
            Decision::TimedOut { retry: false }
        );
    }

    #[test]
    fn timed_out_attempt_is_retried_while_retries_are_left() {
        let mut r = run(Flavor::CustomRun);
        r.spec.retries = 1;
        start(&mut r.status, t("2026-11-27T12:00:00Z"), "");
        let late = t("2026-11-27T12:02:00Z");
        let to = Some(Duration::from_secs(60));
        assert_eq!(decide(&r, late, to), Decision::TimedOut { retry: true });
        retry(
            &mut r.status,
            late,
            "CustomRunTimedOut",
            "attempt timed out",
            vec![],
        );
        assert_eq!(r.status.retries_status.len(), 1);
        assert_eq!(
            r.status.retries_status[0]["conditions"][0]["status"],
            "False"
        );
        assert_eq!(
            r.status.retries_status[0]["conditions"][0]["reason"],
            "CustomRunTimedOut"
        );
        assert!(r.status.retries_status[0].get("retriesStatus").is_none());
        assert!(
            !is_done(&r.status),
            "the live condition stays Unknown while retrying"
        );
        assert_eq!(r.status.start_time.as_deref(), Some("2026-11-27T12:02:00Z"));
        assert_eq!(
            decide(&r, t("2026-11-27T12:03:01Z"), to),
            Decision::TimedOut { retry: false }
        );
    }

    #[test]
    fn legacy_run_timeout_spans_all_retries() {
        let mut r = run(Flavor::Run);
        r.spec.retries = 3;
        start(&mut r.status, t("2026-11-27T12:00:00Z"), "");
        retry(
            &mut r.status,
            t("2026-11-27T12:00:30Z"),
            "Failed",
            "x",
            vec![],
        );
        let to = Some(Duration::from_secs(60));
        assert_eq!(deadline(&r, to), Some(t("2026-11-27T12:01:00Z")));
        assert_eq!(
            decide(&r, t("2026-11-27T12:01:01Z"), to),
            Decision::TimedOut { retry: false }
        );
        time_out(
            &mut r.status,
            Flavor::Run,
            t("2026-11-27T12:01:01Z"),
            "",
            vec![],
        );
        assert_eq!(
            succeeded_condition(&r.status).unwrap().reason.as_deref(),
            Some("RunTimedOut")
        );
    }

    #[test]
    fn cancel_uses_the_reason_tekton_counts_as_cancelled() {
        let mut r = run(Flavor::CustomRun);
        start(&mut r.status, t("2026-11-27T12:00:00Z"), "");
        r.spec.status = Some("RunCancelled".into());
        assert_eq!(
            decide(&r, t("2026-11-27T12:00:01Z"), None),
            Decision::Cancel
        );
        cancel(
            &mut r.status,
            r.flavor,
            t("2026-11-27T12:00:01Z"),
            "cancelled",
            vec![],
        );
        let c = succeeded_condition(&r.status).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("CustomRunCancelled"))
        );
        assert_eq!(
            r.status.completion_time.as_deref(),
            Some("2026-11-27T12:00:01Z")
        );
        assert_eq!(reason_cancelled(Flavor::Run), "RunCancelled");
    }

    #[test]
    fn finished_run_is_never_moved_back() {
        let mut r = run(Flavor::CustomRun);
        start(&mut r.status, t("2026-11-27T12:00:00Z"), "");
        succeed(&mut r.status, t("2026-11-27T12:00:05Z"), "done", vec![]);
        r.spec.status = Some("RunCancelled".into());
        assert_eq!(
            decide(&r, t("2026-11-27T13:00:00Z"), Some(Duration::from_secs(1))),
            Decision::Done
        );
    }

    #[test]
    fn success_sets_completion_time_results_and_true() {
        let mut s = RunStatus::default();
        start(&mut s, t("2026-11-27T12:00:00Z"), "");
        let res = vec![RunResult {
            name: "images".into(),
            value: "[]".into(),
        }];
        succeed(&mut s, t("2026-11-27T12:00:02Z"), "ok", res.clone());
        let c = succeeded_condition(&s).unwrap();
        assert_eq!(c.status, "True");
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some("2026-11-27T12:00:02Z")
        );
        assert_eq!(s.completion_time.as_deref(), Some("2026-11-27T12:00:02Z"));
        assert_eq!(s.results, res);
    }

    #[test]
    fn progress_keeps_the_transition_time() {
        let mut s = RunStatus::default();
        start(&mut s, t("2026-11-27T12:00:00Z"), "");
        progress(&mut s, t("2026-11-27T12:00:09Z"), "promoted 1/2");
        let c = succeeded_condition(&s).unwrap();
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some("2026-11-27T12:00:00Z")
        );
        assert_eq!(c.message.as_deref(), Some("promoted 1/2"));
    }

    #[test]
    fn an_attempt_end_retries_or_ends_by_tektons_rule() {
        let now = t("2026-11-27T12:01:00Z");
        let failed = |retryable| AttemptEnd::Failed {
            reason: "CephUnavailable",
            retryable,
        };
        let cases = [
            (Flavor::CustomRun, 1, failed(true), true, "Unknown"),
            (Flavor::CustomRun, 0, failed(true), false, "False"),
            (Flavor::CustomRun, 1, failed(false), false, "False"),
            (Flavor::CustomRun, 1, AttemptEnd::TimedOut, true, "Unknown"),
            (Flavor::CustomRun, 0, AttemptEnd::TimedOut, false, "False"),
            // A legacy Run's timeout spans every attempt.
            (Flavor::Run, 1, AttemptEnd::TimedOut, false, "False"),
            (Flavor::Run, 1, failed(true), true, "Unknown"),
            (Flavor::CustomRun, 1, AttemptEnd::Cancelled, false, "False"),
            (Flavor::CustomRun, 1, AttemptEnd::Succeeded, false, "True"),
        ];
        for (flavor, retries, end, retried, status) in cases {
            let mut r = run(flavor);
            r.spec.retries = retries;
            start(&mut r.status, t("2026-11-27T12:00:00Z"), "");
            let mut s = r.status.clone();
            let got = end_attempt(&mut s, &r, now, end, "m", vec![]);
            let c = succeeded_condition(&s).unwrap();
            assert_eq!(
                (got, c.status.as_str()),
                (retried, status),
                "{flavor:?} retries={retries} {end:?}"
            );
            assert_eq!(s.retries_status.len(), usize::from(retried));
        }
    }
}

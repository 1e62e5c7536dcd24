//! What a step reports: per-image outcomes and states, the failure reason,
//! and the results written to the run (strings, small, stable names).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::RunResult;

/// Why a step failed: the run's condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    InvalidParams,
    /// A selected PersistentVolumeClaim names no RBD image this step can
    /// act on (missing, unbound, not ceph-csi RBD, another pool...).
    InvalidPvc,
    SecretNotFound,
    InvalidSecret,
    Forbidden,
    /// The cluster refused a key it had accepted earlier in the attempt
    /// (revoked or rotated): the next attempt reads the Secret again.
    KeyRejected,
    ImageNotFound,
    MirroringDisabled,
    ImageInUse,
    PromoteRefused,
    PeerRequired,
    PeerUnavailable,
    SplitBrain,
    ResyncOnPrimary,
    CephUnavailable,
    CephError,
    /// A fault of this controller (a panic, an unreadable resume record):
    /// the run ends instead of hanging; retrying would hit the same fault.
    InternalError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidParams => "InvalidParams",
            Reason::InvalidPvc => "InvalidPvc",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::InvalidSecret => "InvalidSecret",
            Reason::Forbidden => "Forbidden",
            Reason::KeyRejected => "KeyRejected",
            Reason::ImageNotFound => "ImageNotFound",
            Reason::MirroringDisabled => "MirroringDisabled",
            Reason::ImageInUse => "ImageInUse",
            Reason::PromoteRefused => "PromoteRefused",
            Reason::PeerRequired => "PeerRequired",
            Reason::PeerUnavailable => "PeerUnavailable",
            Reason::SplitBrain => "SplitBrain",
            Reason::ResyncOnPrimary => "ResyncOnPrimary",
            Reason::CephUnavailable => "CephUnavailable",
            Reason::CephError => "CephError",
            Reason::InternalError => "InternalError",
        }
    }

    /// Whether another attempt could change anything. Bad input, a missing
    /// Secret or image, or a refusal that needs a human decision are not retried.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Reason::CephUnavailable
                | Reason::CephError
                | Reason::PromoteRefused
                | Reason::KeyRejected
        )
    }
}

/// A failure of the step, with a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }
}

/// The final state of one image after the step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageState {
    /// `primary`, `non-primary` or `unknown`.
    pub role: String,
    /// The local rbd-mirror state, e.g. `up+replaying`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Time of the last completed sync from the primary, when Ceph reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
}

/// What the step did to one image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageOutcome {
    /// `promoted`, `already-primary`, `force-promoted`, `demoted`,
    /// `already-non-primary`, `resynced`, `checked`, or `failed`.
    pub outcome: String,
    pub state: ImageState,
}

/// Progress of a run, persisted in `extraFields` so a restarted controller
/// resumes without repeating what must not be repeated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Images finished, by `pool/image`.
    #[serde(default)]
    pub done: BTreeMap<String, ImageOutcome>,
    /// Write-ahead records of resyncs: image → id before the resync. Present
    /// means "the resync may have been issued: never issue it again".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resync_issued: BTreeMap<String, String>,
    /// Forced promotions: image → last sync time (the data-loss window).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forced: BTreeMap<String, String>,
    /// The images of an `allImages` step, fixed once listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// Images that failed in this attempt, with why. Cleared for the images
    /// a new attempt takes up again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, Failure>,
    /// Mutations started and not yet returned: image → what and since when
    /// (RFC 3339). Written with the claim that precedes each one, so that a
    /// controller taking the run over knows a call may still be running.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub in_flight: BTreeMap<String, InFlight>,
    /// Images another actor changed between this step's check and its
    /// command (the command found the work done): image → what was found.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acted_by_another: BTreeMap<String, String>,
    /// What the step is waiting for, if anything (shown in the message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// A mutation that may still be running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub action: String,
    pub since: String,
}

pub fn format_duration(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Results for the run: the same on success and failure, so `finally`
/// tasks can report a partial outcome.
pub fn results(images: &[String], progress: &Progress, elapsed: Duration) -> Vec<RunResult> {
    // Every selected image is accounted for: done, failed (with why) or
    // not attempted, so an operator sees what a partial failover did.
    let outcomes: BTreeMap<&str, String> = images
        .iter()
        .map(|i| (i.as_str(), outcome_of(i, progress)))
        .chain(
            progress
                .done
                .iter()
                .map(|(k, v)| (k.as_str(), v.outcome.clone())),
        )
        .collect();
    let states: BTreeMap<&str, &ImageState> = progress
        .done
        .iter()
        .map(|(k, v)| (k.as_str(), &v.state))
        .collect();
    let mut r = vec![
        RunResult {
            name: "images".into(),
            value: json(&images),
        },
        RunResult {
            name: "outcomes".into(),
            value: json(&outcomes),
        },
        RunResult {
            name: "states".into(),
            value: json(&states),
        },
        RunResult {
            name: "duration".into(),
            value: format_duration(elapsed),
        },
    ];
    if !progress.forced.is_empty() {
        r.push(RunResult {
            name: "forced".into(),
            value: json(&progress.forced),
        });
    }
    r
}

/// One image's outcome word for the results.
pub fn outcome_of(image: &str, progress: &Progress) -> String {
    if let Some(o) = progress.done.get(image) {
        o.outcome.clone()
    } else if let Some(f) = progress.failed.get(image) {
        format!("failed: {}", f.reason.as_str())
    } else {
        "not-attempted".into()
    }
}

/// The step's failure when some images failed: the reason a person must
/// act on first (one that a retry cannot fix, else the first), and which
/// images failed with what.
pub fn failures_summary(total: usize, failed: &BTreeMap<String, Failure>) -> Option<Failure> {
    let reason = failed
        .values()
        .find(|f| !f.reason.retryable())
        .or_else(|| failed.values().next())?
        .reason;
    let detail: Vec<String> = failed
        .iter()
        .map(|(i, f)| format!("{i} {}: {}", f.reason.as_str(), f.message))
        .collect();
    let message = if failed.len() == 1 {
        detail.join("")
    } else {
        format!(
            "{} of {total} images failed: {}",
            failed.len(),
            detail.join("; ")
        )
    };
    Some(Failure::new(reason, message))
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// One line for the condition message: what happened to how many images.
pub fn summary(verb: &str, total: usize, progress: &Progress) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in progress.done.values() {
        *counts.entry(o.outcome.as_str()).or_default() += 1;
    }
    let detail: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let mut s = format!("{verb} {}/{total}", progress.done.len());
    if !detail.is_empty() {
        s.push_str(&format!(" ({})", detail.join(", ")));
    }
    if let Some(w) = &progress.waiting {
        s.push_str(&format!("; {w}"));
    }
    s
}

/// What the step reports of an image it read.
pub fn image_state(
    info: &crate::ceph::model::ImageInfo,
    status: Option<&crate::ceph::model::MirrorImageStatus>,
) -> ImageState {
    ImageState {
        role: match info.is_primary() {
            Some(true) => "primary".into(),
            Some(false) => "non-primary".into(),
            None => "unknown".into(),
        },
        state: status.map(|s| s.state.clone()).unwrap_or_default(),
        last_sync: status.and_then(last_sync),
    }
}

/// The last completed sync from the primary, as far as Ceph reports it.
pub fn last_sync(s: &crate::ceph::model::MirrorImageStatus) -> Option<String> {
    let own = s.replay().and_then(|r| r.local_snapshot_timestamp);
    let peer = || {
        s.peer_sites
            .iter()
            .filter_map(|p| crate::ceph::model::parse_replay(&p.description))
            .find_map(|r| r.local_snapshot_timestamp)
    };
    own.or_else(peer)
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
        .map(crate::contract::format_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_json_strings_with_stable_names() {
        let mut p = Progress::default();
        p.done.insert(
            "replicapool/a".into(),
            ImageOutcome {
                outcome: "promoted".into(),
                state: ImageState {
                    role: "primary".into(),
                    state: "up+stopped".into(),
                    last_sync: None,
                },
            },
        );
        let r = results(
            &["replicapool/a".into(), "replicapool/b".into()],
            &p,
            Duration::from_millis(1500),
        );
        let get = |n: &str| r.iter().find(|x| x.name == n).unwrap().value.clone();
        assert_eq!(get("images"), r#"["replicapool/a","replicapool/b"]"#);
        assert_eq!(
            get("outcomes"),
            r#"{"replicapool/a":"promoted","replicapool/b":"not-attempted"}"#
        );
        assert_eq!(
            get("states"),
            r#"{"replicapool/a":{"role":"primary","state":"up+stopped"}}"#
        );
        assert_eq!(get("duration"), "1.5s");
        assert!(r.iter().all(|x| x.name != "forced"));
        assert_eq!(summary("promoted", 2, &p), "promoted 1/2 (1 promoted)");
    }

    /// The results of the largest selection `validate` accepts: MAX_IMAGES
    /// images whose names fill MAX_NAME_BYTES, each with the longest outcome,
    /// a state and a sync time, all force-promoted. Measured: 208,545 bytes
    /// (images 34,001, outcomes 45,001, states 80,501, duration 7, forced
    /// 49,001). Without the name budget, MAX_IMAGES names of the longest
    /// valid length made 1,090,545 bytes.
    #[test]
    fn results_of_the_largest_selection_are_measured() {
        use crate::step::resolve::{MAX_IMAGES, MAX_NAME_BYTES, check_name_budget};
        let per = MAX_NAME_BYTES / MAX_IMAGES;
        let images: Vec<String> = (0..MAX_IMAGES)
            .map(|i| format!("replicapool/{i:0>w$}", w = per - "replicapool/".len()))
            .collect();
        assert!(check_name_budget(images.iter().map(String::as_str)).is_ok());
        let mut p = Progress::default();
        for i in &images {
            p.done.insert(
                i.clone(),
                ImageOutcome {
                    outcome: "already-non-primary".into(),
                    state: ImageState {
                        role: "non-primary".into(),
                        state: "up+starting_replay".into(),
                        last_sync: Some("2026-11-27T12:00:00.000000Z".into()),
                    },
                },
            );
            p.forced
                .insert(i.clone(), "2026-11-27T12:00:00.000000Z".into());
        }
        let r = results(&images, &p, Duration::from_secs(3600));
        let size: usize = r.iter().map(|x| x.name.len() + x.value.len()).sum();
        let by_name: Vec<(String, usize)> =
            r.iter().map(|x| (x.name.clone(), x.value.len())).collect();
        eprintln!("results of the largest selection: {size} bytes {by_name:?}");
        assert!(size <= 256 * 1024, "{size} bytes: {by_name:?}");
    }

    #[test]
    fn every_image_is_accounted_for_and_failures_are_summarised() {
        let mut p = Progress::default();
        p.failed.insert(
            "rp/b".into(),
            Failure::new(Reason::CephUnavailable, "site-a is not answering"),
        );
        p.failed.insert(
            "rp/c".into(),
            Failure::new(Reason::ImageInUse, "rp/c is in use"),
        );
        let images = ["rp/a".to_string(), "rp/b".into(), "rp/c".into()];
        let r = results(&images, &p, Duration::ZERO);
        let outcomes = &r.iter().find(|x| x.name == "outcomes").unwrap().value;
        assert_eq!(
            outcomes,
            r#"{"rp/a":"not-attempted","rp/b":"failed: CephUnavailable","rp/c":"failed: ImageInUse"}"#
        );
        let f = failures_summary(3, &p.failed).unwrap();
        // A retry cannot fix the image in use: that is the step's reason.
        assert_eq!(f.reason, Reason::ImageInUse);
        assert!(
            f.message
                .starts_with("2 of 3 images failed: rp/b CephUnavailable")
        );
        assert!(failures_summary(3, &BTreeMap::new()).is_none());
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(Reason::CephUnavailable.retryable());
        assert!(!Reason::InvalidParams.retryable());
        assert!(!Reason::SplitBrain.retryable());
        assert!(!Reason::ImageNotFound.retryable());
        assert!(!Reason::InternalError.retryable());
    }
}

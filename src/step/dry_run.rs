//! `dryRun`: the step reads everything it would and changes nothing. The
//! planner runs as usual; where it would record, mutate, or (promote) wait,
//! the image ends with what the real step would do there. Refusals stay
//! failures, so a dry step succeeds only where the real one could.

use super::outcome::{ImageOutcome, ImageState, image_state};
use super::plan::{Command, Next, Observed, Record};
use crate::api::Action;

/// The dry outcome of `next`, or `None` when the planner may go on (reads,
/// checks, verdicts).
pub fn would(action: &Action, next: &Next, obs: &Observed) -> Option<ImageOutcome> {
    let outcome = match next {
        Next::Mutate(Command::JournalMarker | Command::Demote) => "would-demote".to_string(),
        Next::Mutate(Command::Promote) => "would-promote".to_string(),
        Next::Mutate(Command::ForcePromote) => "would-force".to_string(),
        Next::Mutate(Command::Resync) | Next::Record(Record::ResyncIssued { .. }) => {
            "would-resync".to_string()
        }
        Next::Record(Record::Forced { window }) => format!("would-force: {}", loss(window)),
        // A promote (or a status with waitFor) waits for what a dry run
        // does not do, such as the peer's demotion: say what it would wait
        // for instead of waiting. A demote's look at a lock goes on: the
        // real step refuses after it, and so does the dry one.
        Next::Wait(why) if matches!(action, Action::Promote | Action::Status) => {
            format!(
                "would-wait: {}",
                why.strip_prefix("waiting ").unwrap_or(why)
            )
        }
        _ => return None,
    };
    Some(ImageOutcome {
        outcome,
        state: state(obs),
    })
}

/// The image as last read, as far as this round read it.
fn state(obs: &Observed) -> ImageState {
    let status = obs.status.as_ref().and_then(|s| s.as_ref().ok());
    match obs.info.as_ref().and_then(|i| i.as_ref().ok()) {
        Some(info) => image_state(info, status),
        None => ImageState {
            role: "unknown".into(),
            ..Default::default()
        },
    }
}

/// A forced promote's data-loss window: the time since the last sync.
fn loss(window: &str) -> String {
    match crate::contract::parse_time(window) {
        Some(t) => {
            let secs = jiff::Timestamp::now().duration_since(t).as_secs().max(0);
            format!("data-loss window {secs} s (last sync {window})")
        }
        None => "data-loss window unknown (no sync reported)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_and_records_become_what_the_step_would_do() {
        let obs = Observed::default();
        let w = |a, n: Next| would(&a, &n, &obs).map(|o| o.outcome);
        assert_eq!(
            w(Action::Demote, Next::Mutate(Command::JournalMarker)).as_deref(),
            Some("would-demote")
        );
        assert_eq!(
            w(Action::Promote, Next::Mutate(Command::Promote)).as_deref(),
            Some("would-promote")
        );
        assert_eq!(
            w(
                Action::Resync,
                Next::Record(Record::ResyncIssued { id: "1".into() })
            )
            .as_deref(),
            Some("would-resync")
        );
        let forced = w(
            Action::Promote,
            Next::Record(Record::Forced {
                window: "unknown".into(),
            }),
        )
        .unwrap();
        assert!(
            forced.starts_with("would-force: data-loss window unknown"),
            "{forced}"
        );
        assert_eq!(
            w(
                Action::Promote,
                Next::Wait("waiting to promote rp/a on site-b: site-a is still primary".into())
            )
            .as_deref(),
            Some("would-wait: to promote rp/a on site-b: site-a is still primary")
        );
    }

    #[test]
    fn reads_checks_and_verdicts_go_on_as_in_a_real_step() {
        let obs = Observed::default();
        for n in [
            Next::Read(vec![]),
            Next::Checked,
            Next::Wait("a demote looks again at a lock".into()),
        ] {
            assert_eq!(would(&Action::Demote, &n, &obs), None, "{n:?}");
        }
    }
}

//! Which controller process owns a run. One process at a time may act on a
//! run, whatever the leader-election flags: the owner is recorded in the
//! run's status (`extraFields.owner`) and renewed by its status writes, and
//! every write of a task (the claim before each mutation included) first
//! checks, on the run as the API server has it (a write carries the
//! resourceVersion it was based on; a 409 re-reads), that it is still the
//! owner. A second instance, a deposed leader that resumes, or a task that
//! lost track finds another owner and stops without writing or acting.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::step::Progress;

/// How long an owner's last write keeps the run its own. Its task renews it
/// at least every third of this; a process that is gone (or paused) for
/// longer loses the run to the next controller that reconciles it.
pub const OWNER_TTL: Duration = Duration::from_secs(15);

/// How long after its start a mutation recorded in flight by a silent owner
/// is given to end before the run is acted on again. A paused controller's
/// `rbd` child is not paused: it ends in its own time, seconds for a demote
/// or promote on the lab (BENCHMARKS.md). A SIGKILLed controller's child
/// died with it (parent-death signal). Waiting the whole 300 s call
/// deadline instead stalled every run a crash left in that window for five
/// minutes. A longer mutation (a forced snapshot promote of a large image)
/// is still met by a new owner that reads the image before acting.
pub const IN_FLIGHT_CAP: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The process: its Pod (or host) name, pid and start nonce.
    pub id: String,
    /// RFC 3339 time of the owner's last write.
    pub renewed: String,
}

impl Owner {
    pub fn now(id: &str) -> Owner {
        Owner {
            id: id.into(),
            renewed: crate::contract::format_time(Timestamp::now()),
        }
    }

    /// True when its last write is older than the TTL (or unreadable).
    pub fn stale(&self, now: Timestamp) -> bool {
        let Ok(renewed) = self.renewed.parse::<Timestamp>() else {
            return true;
        };
        Duration::try_from(now.duration_since(renewed)).is_ok_and(|d| d > OWNER_TTL)
    }
}

/// Whether `me` may write the run: no owner yet (a run started by an older
/// release), or its owner.
pub fn holds(owner: Option<&Owner>, me: &str) -> bool {
    owner.is_none_or(|o| o.id == me)
}

/// Whether `me` may take the run over now.
pub fn may_adopt(owner: Option<&Owner>, me: &str, now: Timestamp) -> bool {
    owner.is_none_or(|o| o.id == me || o.stale(now))
}

/// How long to wait before acting on a run taken over from another
/// process: a mutation it recorded in flight may still be running (a paused
/// process resumes; only SIGKILL ends its `rbd` child), for up to `cap`
/// after it started.
pub fn in_flight_wait(progress: &Progress, now: Timestamp, cap: Duration) -> Duration {
    progress
        .in_flight
        .values()
        .filter_map(|f| f.since.parse::<Timestamp>().ok())
        .filter_map(|since| {
            let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
            cap.checked_sub(elapsed)
        })
        .max()
        .unwrap_or(Duration::ZERO)
}

/// This process's identity: unique across restarts and replicas.
pub fn instance_id(name: Option<&str>) -> String {
    let host = name
        .map(String::from)
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "controller".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}-{}-{nonce:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::outcome::InFlight;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_fresh_owner_keeps_the_run_and_a_stale_one_loses_it() {
        let o = Owner {
            id: "a".into(),
            renewed: "2026-11-30T12:00:00Z".into(),
        };
        assert!(holds(Some(&o), "a"));
        assert!(!holds(Some(&o), "b"));
        assert!(
            holds(None, "b"),
            "a run without owner (older release) is claimable"
        );
        assert!(!may_adopt(Some(&o), "b", at("2026-11-30T12:00:10Z")));
        assert!(may_adopt(Some(&o), "b", at("2026-11-30T12:00:16Z")));
        assert!(may_adopt(Some(&o), "a", at("2026-11-30T12:00:01Z")));
        let garbled = Owner {
            id: "a".into(),
            renewed: "yesterday".into(),
        };
        assert!(may_adopt(Some(&garbled), "b", at("2026-11-30T12:00:00Z")));
    }

    #[test]
    fn a_taken_over_run_waits_for_mutations_in_flight_up_to_the_cap() {
        let mut p = Progress::default();
        let cap = Duration::from_secs(300);
        assert_eq!(
            in_flight_wait(&p, at("2026-11-30T12:00:00Z"), cap),
            Duration::ZERO
        );
        p.in_flight.insert(
            "rp/a".into(),
            InFlight {
                action: "demote".into(),
                since: "2026-11-30T12:00:00Z".into(),
            },
        );
        assert_eq!(
            in_flight_wait(&p, at("2026-11-30T12:01:40Z"), cap),
            Duration::from_secs(200)
        );
        assert_eq!(
            in_flight_wait(&p, at("2026-11-30T12:06:00Z"), cap),
            Duration::ZERO
        );
    }

    #[test]
    fn instance_ids_differ_between_processes_of_one_pod() {
        let a = instance_id(Some("pod-1"));
        assert!(a.starts_with("pod-1-"));
        assert!(a.contains(&std::process::id().to_string()));
    }
}

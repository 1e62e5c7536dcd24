//! Writes a run's status through the `/status` subresource, as a merge
//! patch carrying the resourceVersion it was computed from: the API server
//! refuses it (409) if anyone wrote in between, so a deposed leader or a
//! stale task can never overwrite a newer status. Spec, labels and owner
//! references are never written.
//!
//! Because of that precondition a write may start from the run as this
//! writer last saw it (the informer's copy, or the object its own last patch
//! returned) instead of reading it first: when the guess is stale the API
//! server answers 409 and the write is redone from a fresh read. For a short
//! step that saves a round trip per write.
//!
//! A writer is bound to one object, by UID, not to a name: a run deleted and
//! created again under its name is another run. Every read compares the UID
//! and the patch carries it too, so a write meant for a deleted run never
//! lands on its successor; the writer reports `Gone` instead.
//!
//! Everything written is sanitized first (`sanitize`): cephx keys redacted,
//! condition messages bounded, because messages carry Ceph's and users' text.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use crate::api::{Flavor, RunStatus, TektonRun};
use crate::contract;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {kind} {namespace}/{name}: {source}")]
    Write {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {namespace}/{name} (uid {uid}) is gone: {why}")]
    Gone {
        kind: &'static str,
        namespace: String,
        name: String,
        uid: String,
        why: &'static str,
    },
    #[error("{kind} {namespace}/{name} has no resourceVersion: refusing an unconditional write")]
    NoVersion {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{0}")]
    Parse(#[from] crate::api::run::RunParseError),
}

impl StatusError {
    /// The run this writer owns no longer exists: nothing more may be written.
    pub fn is_gone(&self) -> bool {
        matches!(self, StatusError::Gone { .. })
    }
}

/// The status as it may leave the process: every string redacted (results
/// and extraFields included), every condition message bounded (the archived
/// attempts' too).
pub fn sanitize(status: RunStatus) -> RunStatus {
    let mut v = match serde_json::to_value(&status) {
        Ok(v) => v,
        Err(_) => return status,
    };
    crate::redact::value(&mut v);
    let bound_conditions = |v: &mut Value| {
        if let Some(conds) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conds {
                if let Some(Value::String(m)) = c.get_mut("message")
                    && let std::borrow::Cow::Owned(b) =
                        crate::redact::bound(m, crate::redact::MAX_MESSAGE)
                {
                    *m = b;
                }
            }
        }
    };
    bound_conditions(&mut v);
    if let Some(attempts) = v.get_mut("retriesStatus").and_then(Value::as_array_mut) {
        attempts.iter_mut().for_each(bound_conditions);
    }
    serde_json::from_value(v).unwrap_or(status)
}

/// The body of the patch: the whole status, with `null` for each known field
/// the new status no longer has (a merge patch only removes what it nulls),
/// and the preconditions: the resourceVersion the status was computed from
/// and the UID of the object it is meant for.
/// Nulls, at every depth, the object keys `old` has and `new` dropped: a
/// merge patch merges objects recursively, so a key dropped inside
/// `extraFields` (a mutation no longer in flight, a failure cleared by a
/// new attempt) would otherwise stay in the stored status forever.
fn null_removed(new: &mut Value, old: &Value) {
    if let (Some(n), Some(o)) = (new.as_object_mut(), old.as_object()) {
        for (k, ov) in o {
            match n.get_mut(k) {
                None => {
                    n.insert(k.clone(), Value::Null);
                }
                Some(nv) => null_removed(nv, ov),
            }
        }
    }
}

pub fn status_patch(
    old: &RunStatus,
    new: &RunStatus,
    resource_version: &str,
    uid: Option<&str>,
) -> Value {
    let mut body = serde_json::to_value(new).unwrap_or_else(|_| json!({}));
    let old_v = serde_json::to_value(old).unwrap_or_else(|_| json!({}));
    null_removed(&mut body, &old_v);
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(uid) = uid {
        metadata["uid"] = json!(uid);
    }
    json!({"metadata": metadata, "status": body})
}

pub struct StatusWriter {
    api: Api<DynamicObject>,
    flavor: Flavor,
    namespace: String,
    name: String,
    /// The object this writer is for: set from the seed, or the first read.
    uid: std::sync::Mutex<Option<String>>,
    /// The run as last seen here: the first guess of the next write, taken
    /// (not copied) so that a guess is only ever tried once.
    known: std::sync::Mutex<Option<Known>>,
}

struct Known {
    run: TektonRun,
    /// Returned by this writer's own patch, as opposed to handed in.
    written: bool,
}

/// What an update function decided.
pub enum Update {
    /// Write this status.
    Write(RunStatus),
    /// Leave the run as it is (e.g. it is already done).
    Skip,
}

impl StatusWriter {
    pub fn new(client: kube::Client, flavor: Flavor, namespace: &str, name: &str) -> StatusWriter {
        StatusWriter {
            api: Api::namespaced_with(client, namespace, &flavor.api_resource()),
            flavor,
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: std::sync::Mutex::new(None),
            known: std::sync::Mutex::new(None),
        }
    }

    /// A writer whose first write starts from `run` (see the module doc).
    pub fn seeded(client: kube::Client, run: &TektonRun) -> StatusWriter {
        let w = StatusWriter::new(client, run.flavor, run.namespace(), run.name());
        *lock(&w.uid) = run.metadata.uid.clone();
        w.remember(run.clone(), false);
        w
    }

    pub fn key(&self) -> (Flavor, &str, &str) {
        (self.flavor, &self.namespace, &self.name)
    }

    /// The UID of the object this writer writes, once known.
    pub fn uid(&self) -> Option<String> {
        lock(&self.uid).clone()
    }

    fn remember(&self, run: TektonRun, written: bool) {
        *lock(&self.known) = Some(Known { run, written });
    }

    fn gone(&self, why: &'static str) -> StatusError {
        StatusError::Gone {
            kind: self.flavor.kind(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid().unwrap_or_default(),
            why,
        }
    }

    /// Whether `found` is this writer's object; the first object seen binds it.
    fn owns(&self, found: Option<&str>) -> bool {
        let mut uid = lock(&self.uid);
        match (uid.as_deref(), found) {
            (Some(mine), Some(f)) => mine == f,
            (None, Some(f)) => {
                *uid = Some(f.to_string());
                true
            }
            // An object without a UID is not from an API server: only the
            // resourceVersion protects it.
            (_, None) => true,
        }
    }

    /// The run as this writer last wrote it, or else as the API server has it
    /// now. Only what this writer wrote itself is fresh enough to act on
    /// without a read: a seed from elsewhere is only good as a write's guess.
    pub async fn current(&self) -> Result<TektonRun, StatusError> {
        let written = match &*lock(&self.known) {
            Some(k) if k.written => Some(k.run.clone()),
            _ => None,
        };
        match written {
            Some(run) => Ok(run),
            None => self.get().await,
        }
    }

    /// Reads the run from the API server.
    pub async fn get(&self) -> Result<TektonRun, StatusError> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(obj)) if !self.owns(obj.metadata.uid.as_deref()) => {
                Err(self.gone("another object of the same name replaced it"))
            }
            Ok(Some(obj)) => Ok(TektonRun::from_dynamic(self.flavor, &obj)?),
            Ok(None) => Err(self.gone("deleted")),
            Err(source) => Err(StatusError::Read {
                kind: self.flavor.kind(),
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Applies `f` to the newest run and writes the result; on a conflict it
    /// reads again and reapplies (`f` is pure and idempotent over status).
    /// Returns the run as written (or as found, when skipped).
    pub async fn update(
        &self,
        mut f: impl FnMut(&TektonRun) -> Update,
    ) -> Result<TektonRun, StatusError> {
        let mut conflicts = 0;
        loop {
            let guess = lock(&self.known).take();
            let guessed = guess.is_some();
            let mut run = match guess {
                Some(k) => k.run,
                None => self.get().await?,
            };
            // Only a write is checked by the API server: a decision not to
            // write is only taken on a fresh read.
            let new = match f(&run) {
                Update::Skip if guessed => continue,
                Update::Skip => return Ok(run),
                Update::Write(s) => s,
            };
            let mut new = sanitize(new);
            new.observed_generation = run.metadata.generation;
            if new == run.status {
                if guessed {
                    continue;
                }
                return Ok(run);
            }
            // Without a resourceVersion the patch would be unconditional.
            let Some(rv) = run
                .metadata
                .resource_version
                .clone()
                .filter(|v| !v.is_empty())
            else {
                if guessed {
                    continue;
                }
                return Err(StatusError::NoVersion {
                    kind: self.flavor.kind(),
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                });
            };
            let uid = self.uid();
            let patch = status_patch(&run.status, &new, &rv, uid.as_deref());
            match self
                .api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(obj) if !self.owns(obj.metadata.uid.as_deref()) => {
                    // Cannot happen while the preconditions hold; if it ever
                    // does, this writer must stop at once.
                    tracing::error!(
                        uid = obj.metadata.uid.as_deref().unwrap_or(""),
                        "a status patch landed on another object"
                    );
                    return Err(self.gone("a patch reached another object of the same name"));
                }
                Ok(obj) => {
                    crate::metrics::inc(&crate::metrics::STATUS_WRITES);
                    if contract::is_done(&new) {
                        crate::metrics::inc(&crate::metrics::RUNS_FINISHED);
                    }
                    run.metadata = obj.metadata;
                    run.status = new;
                    self.remember(run.clone(), true);
                    return Ok(run);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Err(self.gone("deleted")),
                // A conflict is a stale resourceVersion or another UID: the
                // next read tells which.
                Err(kube::Error::Api(s)) if s.code == 409 && conflicts < 10 => {
                    conflicts += 1;
                    continue;
                }
                Err(source) => {
                    return Err(StatusError::Write {
                        kind: self.flavor.kind(),
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        source,
                    });
                }
            }
        }
    }
}

impl StatusWriter {
    /// Fails the run for bad input: never retried.
    pub async fn fail_invalid(&self, message: &str) -> Result<TektonRun, StatusError> {
        self.fail(crate::step::Reason::InvalidParams, message).await
    }

    /// Ends the run `Succeeded=False` with `reason`, unless it is done.
    pub async fn fail(
        &self,
        reason: crate::step::Reason,
        message: &str,
    ) -> Result<TektonRun, StatusError> {
        self.update(|r| {
            unless_done(r, |s| {
                contract::fail(s, jiff::Timestamp::now(), reason.as_str(), message, vec![])
            })
        })
        .await
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under these locks is a single assignment: a panic
    // elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Update helper: only while the run is unfinished.
pub fn unless_done(run: &TektonRun, f: impl FnOnce(&mut RunStatus)) -> Update {
    if contract::is_done(&run.status) {
        return Update::Skip;
    }
    let mut s = run.status.clone();
    f(&mut s);
    Update::Write(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_nulls_keys_dropped_deep_inside_extra_fields() {
        let old = RunStatus {
            extra_fields: Some(
                json!({"progress": {"inFlight": {"rp/a": {"action": "demote"}}, "done": {}}}),
            ),
            ..Default::default()
        };
        let new = RunStatus {
            extra_fields: Some(json!({"progress": {"done": {"rp/a": {"outcome": "demoted"}}}})),
            ..Default::default()
        };
        let p = status_patch(&old, &new, "7", None);
        assert_eq!(
            p["status"]["extraFields"]["progress"]["inFlight"],
            Value::Null
        );
        assert!(
            p["status"]["extraFields"]["progress"]
                .as_object()
                .unwrap()
                .contains_key("inFlight")
        );
        assert_eq!(
            p["status"]["extraFields"]["progress"]["done"]["rp/a"]["outcome"],
            "demoted"
        );
    }

    #[test]
    fn patch_nulls_fields_the_new_status_dropped_and_carries_the_version() {
        let old = RunStatus {
            completion_time: Some("2026-11-27T12:00:00Z".into()),
            start_time: Some("2026-11-27T11:00:00Z".into()),
            ..Default::default()
        };
        let new = RunStatus {
            start_time: Some("2026-11-27T12:00:01Z".into()),
            ..Default::default()
        };
        let p = status_patch(&old, &new, "42", Some("u-1"));
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["metadata"]["uid"], "u-1");
        assert_eq!(p["status"]["completionTime"], Value::Null);
        assert_eq!(p["status"]["startTime"], "2026-11-27T12:00:01Z");
        assert!(p.get("spec").is_none(), "the spec is never written");
    }
}

#[cfg(test)]
mod sanitize_tests {
    use super::*;
    use crate::api::{Condition, RunResult};

    const KEY: &str = "AQBHk2VmAAAAABAAnXg1kE3Gm2r0bEq6Yf1gkw==";

    #[test]
    fn keys_are_redacted_and_messages_bounded_everywhere_in_a_status() {
        let huge = "x".repeat(1 << 20);
        let cond = |m: &str| Condition {
            type_: "Succeeded".into(),
            status: "False".into(),
            message: Some(m.into()),
            ..Default::default()
        };
        let attempt = RunStatus {
            conditions: vec![cond(&huge)],
            ..Default::default()
        };
        let s = RunStatus {
            conditions: vec![cond(&format!(
                "rbd: failed to decode key '{KEY}'\n[client.x]\n\tkey = {huge}"
            ))],
            results: vec![RunResult {
                name: "states".into(),
                value: format!("{{\"a\":\"{KEY}\"}}"),
            }],
            retries_status: vec![serde_json::to_value(&attempt).unwrap()],
            extra_fields: Some(json!({"progress": {"waiting": format!("key = {KEY}")}})),
            ..Default::default()
        };
        let out = sanitize(s);
        let text = serde_json::to_string(&out).unwrap();
        assert!(!text.contains("AQBHk2Vm"), "a key left the process");
        let m = out.conditions[0].message.as_deref().unwrap();
        assert!(m.len() <= crate::redact::MAX_MESSAGE);
        assert!(
            m.starts_with("rbd: failed to decode key '[redacted]'"),
            "{m}"
        );
        let archived = out.retries_status[0]["conditions"][0]["message"]
            .as_str()
            .unwrap();
        assert!(archived.len() <= crate::redact::MAX_MESSAGE);
        assert!(text.len() < 4 * 1024, "{} bytes", text.len());
    }
}

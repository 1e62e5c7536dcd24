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
    #[error("{kind} {namespace}/{name} is gone")]
    Gone {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{0}")]
    Parse(#[from] crate::api::run::RunParseError),
}

/// The body of the patch: the whole status, with `null` for each known field
/// the new status no longer has (a merge patch only removes what it nulls).
pub fn status_patch(old: &RunStatus, new: &RunStatus, resource_version: &str) -> Value {
    let mut body = serde_json::to_value(new).unwrap_or_else(|_| json!({}));
    let old_v = serde_json::to_value(old).unwrap_or_else(|_| json!({}));
    if let (Some(b), Some(o)) = (body.as_object_mut(), old_v.as_object()) {
        for k in o.keys() {
            if !b.contains_key(k) {
                b.insert(k.clone(), Value::Null);
            }
        }
    }
    json!({"metadata": {"resourceVersion": resource_version}, "status": body})
}

pub struct StatusWriter {
    api: Api<DynamicObject>,
    flavor: Flavor,
    namespace: String,
    name: String,
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
            known: std::sync::Mutex::new(None),
        }
    }

    /// A writer whose first write starts from `run` (see the module doc).
    pub fn seeded(client: kube::Client, run: &TektonRun) -> StatusWriter {
        let w = StatusWriter::new(client, run.flavor, run.namespace(), run.name());
        w.remember(run.clone(), false);
        w
    }

    pub fn key(&self) -> (Flavor, &str, &str) {
        (self.flavor, &self.namespace, &self.name)
    }

    fn remember(&self, run: TektonRun, written: bool) {
        *self.known.lock().expect("known") = Some(Known { run, written });
    }

    /// The run as this writer last wrote it, or else as the API server has it
    /// now. Only what this writer wrote itself is fresh enough to act on
    /// without a read: a seed from elsewhere is only good as a write's guess.
    pub async fn current(&self) -> Result<TektonRun, StatusError> {
        let written = match &*self.known.lock().expect("known") {
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
            Ok(Some(obj)) => Ok(TektonRun::from_dynamic(self.flavor, &obj)?),
            Ok(None) => Err(StatusError::Gone {
                kind: self.flavor.kind(),
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            }),
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
            let guess = self.known.lock().expect("known").take();
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
            let mut new = new;
            new.observed_generation = run.metadata.generation;
            if new == run.status {
                if guessed {
                    continue;
                }
                return Ok(run);
            }
            let rv = run.metadata.resource_version.clone().unwrap_or_default();
            let patch = status_patch(&run.status, &new, &rv);
            match self
                .api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
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
        self.update(|r| {
            unless_done(r, |s| {
                contract::fail(
                    s,
                    jiff::Timestamp::now(),
                    crate::step::Reason::InvalidParams.as_str(),
                    message,
                    vec![],
                )
            })
        })
        .await
    }
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
        let p = status_patch(&old, &new, "42");
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["status"]["completionTime"], Value::Null);
        assert_eq!(p["status"]["startTime"], "2026-11-27T12:00:01Z");
        assert!(p.get("spec").is_none(), "the spec is never written");
    }
}

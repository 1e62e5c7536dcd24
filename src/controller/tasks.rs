//! The table of running tasks, one per run object. A task is keyed by its
//! run's UID, not its name: a run deleted and created again under the same
//! name (a re-run PipelineRun) is another run, which gets its own task,
//! while the old one is told to stop. A task leaves the table however it
//! ends, a panic included, so its run can be started again.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::Flavor;

/// Why a task was told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    Cancelled,
    TimedOut,
    /// The run object it owns is gone (deleted, or replaced by another
    /// object of the same name): nothing may be written, nothing more done.
    Deleted,
    /// The controller is stopping (SIGTERM, or it lost the leader lease): no
    /// new mutation starts, progress is recorded, the run resumes later.
    Shutdown,
}

/// How a task is told to stop: the first cause given wins.
#[derive(Clone, Debug, Default)]
pub struct Stopper {
    pub token: CancellationToken,
    cause: Arc<Mutex<Option<StopCause>>>,
}

impl Stopper {
    pub fn stop(&self, cause: StopCause) {
        self.cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(cause);
        self.token.cancel();
    }

    /// A stopper for one attempt: stopping it records the cause for the task
    /// but cancels only the attempt; stopping the task cancels the attempt too.
    pub fn child(&self) -> Stopper {
        Stopper {
            token: self.token.child_token(),
            cause: self.cause.clone(),
        }
    }

    /// The cause, if the task was stopped; the next attempt starts clean.
    pub fn take_cause(&self) -> Option<StopCause> {
        self.cause.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn cause(&self) -> Option<StopCause> {
        *self.cause.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub flavor: Flavor,
    pub uid: String,
}

struct Entry {
    id: u64,
    namespace: String,
    name: String,
    stopper: Stopper,
    started: std::time::Instant,
}

#[derive(Default)]
pub struct TaskTable {
    entries: Mutex<HashMap<TaskKey, Entry>>,
    next_id: AtomicU64,
}

/// What a task body is handed.
pub struct Started {
    pub id: u64,
    pub stopper: Stopper,
}

/// The text of a panic's payload (a `&str` or `String` for `panic!`/`expect`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Runs `f`, turning a panic into `Err(message)` (the panic is not resumed).
pub async fn guarded<F: Future>(f: F) -> Result<F::Output, String> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|p| panic_message(p.as_ref()))
}

impl TaskTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Entry>> {
        // A panic is never raised while the table is held; if one ever is,
        // the table itself is still consistent (every change is one insert or remove).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, key: &TaskKey) -> bool {
        self.lock().contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spawns `body` for `key` unless a task runs for it; true when it did.
    /// When `body` panics, `on_panic(message)` runs before the task leaves
    /// the table, so that a new task cannot start before the run is failed.
    pub fn start<B, BF, P, PF>(
        self: &Arc<Self>,
        key: TaskKey,
        namespace: &str,
        name: &str,
        span: tracing::Span,
        body: B,
        on_panic: P,
    ) -> bool
    where
        B: FnOnce(Started) -> BF,
        BF: Future<Output = ()> + Send + 'static,
        P: FnOnce(String) -> PF + Send + 'static,
        PF: Future<Output = ()> + Send + 'static,
    {
        let mut entries = self.lock();
        if entries.contains_key(&key) {
            return false;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stopper = Stopper::default();
        entries.insert(
            key.clone(),
            Entry {
                id,
                namespace: namespace.into(),
                name: name.into(),
                stopper: stopper.clone(),
                started: std::time::Instant::now(),
            },
        );
        drop(entries);
        let fut = body(Started { id, stopper });
        let table = self.clone();
        tokio::spawn(
            async move {
                if let Err(message) = guarded(fut).await {
                    tracing::error!(panic = %crate::redact::message(&message), "task panicked");
                    // The handler must not take the table down with it either.
                    if let Err(again) = guarded(on_panic(message)).await {
                        tracing::error!(panic = %crate::redact::message(&again), "panic handler panicked");
                    }
                }
                table.forget(&key, id);
            }
            .instrument(span),
        );
        true
    }

    /// Tells every task to stop.
    pub fn stop_all(&self, cause: StopCause) {
        for e in self.lock().values() {
            e.stopper.stop(cause);
        }
    }

    /// Tells the task of `key` to stop; false when there is none.
    pub fn stop(&self, key: &TaskKey, cause: StopCause) -> bool {
        match self.lock().get(key) {
            Some(e) => {
                e.stopper.stop(cause);
                true
            }
            None => false,
        }
    }

    /// Stops the tasks of runs named `namespace/name` other than the one
    /// with `keep_uid` (None: all of them). Names are unique among live
    /// objects, so a task whose run has another UID owns a deleted run.
    pub fn stop_named(
        &self,
        flavor: Flavor,
        namespace: &str,
        name: &str,
        keep_uid: Option<&str>,
        cause: StopCause,
    ) -> usize {
        let entries = self.lock();
        let mut n = 0;
        for (k, e) in entries.iter() {
            if k.flavor == flavor
                && e.namespace == namespace
                && e.name == name
                && Some(k.uid.as_str()) != keep_uid
            {
                e.stopper.stop(cause);
                n += 1;
            }
        }
        n
    }

    /// (namespace, name, uid) of the tasks of `flavor` started before
    /// `listed_at` whose run is not among the `live` UIDs of that list: their
    /// deletion may have had no event. A younger task's run may be newer
    /// than the list.
    pub fn missing(
        &self,
        flavor: Flavor,
        live: &std::collections::HashSet<String>,
        listed_at: std::time::Instant,
    ) -> Vec<(String, String, String)> {
        self.lock()
            .iter()
            .filter(|(k, e)| k.flavor == flavor && e.started < listed_at && !live.contains(&k.uid))
            .map(|(k, e)| (e.namespace.clone(), e.name.clone(), k.uid.clone()))
            .collect()
    }

    /// Removes the entry of task `id` (not a newer task of the same key).
    fn forget(&self, key: &TaskKey, id: u64) {
        let mut entries = self.lock();
        if entries.get(key).is_some_and(|e| e.id == id) {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn key(uid: &str) -> TaskKey {
        TaskKey {
            flavor: Flavor::CustomRun,
            uid: uid.into(),
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A body that waits until it is stopped, then reports its cause.
    fn waiting(
        tx: tokio::sync::mpsc::UnboundedSender<(u64, Option<StopCause>)>,
    ) -> impl FnOnce(Started) -> futures::future::BoxFuture<'static, ()> {
        move |s: Started| {
            Box::pin(async move {
                s.stopper.token.cancelled().await;
                let _ = tx.send((s.id, s.stopper.cause()));
            })
        }
    }

    async fn no_panic(_: String) {}

    #[tokio::test]
    async fn a_new_run_of_the_same_name_gets_its_own_task_and_the_old_one_stops() {
        let table = Arc::new(TaskTable::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let span = tracing::Span::none();
        let before_any = Instant::now();
        assert!(table.start(
            key("old"),
            "ns",
            "r",
            span.clone(),
            waiting(tx.clone()),
            no_panic
        ));
        assert!(!table.start(
            key("old"),
            "ns",
            "r",
            span.clone(),
            waiting(tx.clone()),
            no_panic
        ));
        assert!(table.start(
            key("new"),
            "ns",
            "r",
            span.clone(),
            waiting(tx.clone()),
            no_panic
        ));
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.stop_named(
                Flavor::CustomRun,
                "ns",
                "r",
                Some("new"),
                StopCause::Deleted
            ),
            1
        );
        let (_, cause) = rx.recv().await.unwrap();
        assert_eq!(cause, Some(StopCause::Deleted));
        until("the old task to leave the table", || {
            !table.contains(&key("old"))
        })
        .await;
        assert!(table.contains(&key("new")));
        // After a relist without it, the new run's task is a candidate.
        let live = std::collections::HashSet::new();
        let listed = Instant::now();
        assert_eq!(
            table.missing(Flavor::CustomRun, &live, listed),
            vec![("ns".to_string(), "r".to_string(), "new".to_string())]
        );
        assert!(
            table
                .missing(Flavor::CustomRun, &live, before_any)
                .is_empty()
        );
        // The first cause wins: a later one does not overwrite it.
        table.stop(&key("new"), StopCause::Deleted);
        table.stop(&key("new"), StopCause::Cancelled);
        assert_eq!(rx.recv().await.unwrap().1, Some(StopCause::Deleted));
        until("the table to empty", || table.is_empty()).await;
    }

    #[tokio::test]
    async fn a_panicking_task_is_failed_then_removed_and_others_keep_running() {
        let table = Arc::new(TaskTable::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
        let span = tracing::Span::none();
        assert!(table.start(key("ok"), "ns", "a", span.clone(), waiting(tx), no_panic));
        let t2 = table.clone();
        assert!(table.start(
            key("boom"),
            "ns",
            "b",
            span,
            |_s: Started| async {
                panic!("a broken invariant");
            },
            move |msg| async move {
                // Still in the table while the run is failed: no second task races it.
                let _ = ptx.send((msg, t2.contains(&key("boom"))));
            },
        ));
        let (msg, in_table) = prx.recv().await.unwrap();
        assert_eq!(msg, "a broken invariant");
        assert!(in_table);
        until("the panicked task to leave the table", || {
            !table.contains(&key("boom"))
        })
        .await;
        assert!(table.contains(&key("ok")), "the other task is untouched");
        table.stop(&key("ok"), StopCause::Cancelled);
        assert_eq!(rx.recv().await.unwrap().1, Some(StopCause::Cancelled));
    }
}

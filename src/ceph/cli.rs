//! The `rbd` command line as the Ceph backend: one child process per call,
//! arguments as a vector (never a shell), JSON output, a deadline per
//! command, and the child killed if the controller drops the call (or dies:
//! `kill_on_drop`, plus the parent-death signal on Linux).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::process::Command;

use super::error::{Op, RbdError, RbdErrorKind, classify, reason_line};
use super::image::ImageSpec;
use super::model::{ImageInfo, JournalStatus, Locker, MirrorImageStatus, PoolStatus, SnapEntry};

/// Read-only `rbd` processes alive at once in this whole process, whatever
/// the number of runs and their `concurrency`: each costs ~7 MiB of its own
/// memory (plus shared library pages), and the controller's container has
/// one memory limit for itself and all its children. Mutations are not
/// counted (see `run`); there is at most one per image in flight.
static PROCESS_SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();

pub const DEFAULT_MAX_PROCESSES: usize = 32;

/// Mutating `rbd` processes running now, in this whole process: a
/// controller that stops waits for them (never cutting one half-way).
static MUTATIONS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn mutations_in_flight() -> usize {
    MUTATIONS_IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts one mutation while it lives.
struct InFlightGuard;

impl InFlightGuard {
    fn new() -> InFlightGuard {
        MUTATIONS_IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlightGuard
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        MUTATIONS_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The image-meta key of `journal_marker` (set and removed again at once).
pub const MARKER_KEY: &str = "rbd-mirror-step.demote-marker";

/// Sets the process-wide bound on concurrent `rbd` processes; only the first
/// call (before any `rbd` runs) has an effect.
pub fn limit_processes(n: usize) {
    let _ = PROCESS_SLOTS.set(tokio::sync::Semaphore::new(n.max(1)));
}

fn process_slots() -> &'static tokio::sync::Semaphore {
    PROCESS_SLOTS.get_or_init(|| tokio::sync::Semaphore::new(DEFAULT_MAX_PROCESSES))
}

/// How a call reaches one Ceph cluster.
#[derive(Clone, Debug)]
pub struct RbdCli {
    pub binary: PathBuf,
    pub conf: PathBuf,
    pub keyring: PathBuf,
    /// cephx id without the `client.` prefix.
    pub user: Option<String>,
    /// Deadline of read-only commands.
    pub read_timeout: Duration,
    /// Deadline of demote/promote/resync (a forced snapshot promote can take minutes).
    pub write_timeout: Duration,
    /// Whether the cluster accepted this client once (shared by clones):
    /// a refusal after that is a key revoked or rotated under the step.
    accepted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RbdCli {
    pub fn new(conf: PathBuf, keyring: PathBuf, user: Option<String>) -> RbdCli {
        RbdCli {
            binary: PathBuf::from(std::env::var_os("RBD_BINARY").unwrap_or_else(|| "rbd".into())),
            conf,
            keyring,
            user,
            read_timeout: Duration::from_secs(20),
            write_timeout: Duration::from_secs(300),
            accepted: Default::default(),
        }
    }

    fn base_args(&self, deadline: Duration, mutates: bool) -> Vec<String> {
        let secs = deadline.as_secs().max(1).to_string();
        let mut a = vec![
            "--conf".into(),
            self.conf.display().to_string(),
            "--keyring".into(),
            self.keyring.display().to_string(),
        ];
        if let Some(u) = &self.user {
            a.push("--id".into());
            a.push(u.clone());
        }
        // A lost monitor must fail the call within its deadline, not after
        // librados' 300 s default: this is how a dead site is told apart.
        a.extend(["--client_mount_timeout", &secs].map(String::from));
        // A mutation is never cut by a per-operation timeout: a demote
        // allocates a journal tag and then appends its event, and a timeout
        // between the two leaves a half-made role change. A site that
        // cannot be reached still fails at the mount, before anything changed.
        if !mutates {
            a.extend(
                [
                    "--rados_mon_op_timeout",
                    &secs,
                    "--rados_osd_op_timeout",
                    &secs,
                ]
                .map(String::from),
            );
        }
        a
    }

    async fn run(&self, op: Op, target: &str, args: &[&str]) -> Result<String, RbdError> {
        let deadline = if op.mutates() {
            self.write_timeout
        } else {
            self.read_timeout
        };
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.base_args(deadline, op.mutates()))
            .args(args)
            .env_remove("CEPH_ARGS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A read is abandoned (killed) when the step stops; a mutation
            // runs to its end even if its caller gave up waiting. The
            // parent-death signal below still ends both with the controller.
            .kill_on_drop(!op.mutates());
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to send
        // SIGKILL to the child when the controller process dies.
        unsafe {
            cmd.pre_exec(|| {
                libc_prctl_pdeathsig();
                Ok(())
            });
        }
        // Held until the child has exited (or is killed by being dropped).
        // Only reads wait for a slot: a demote, promote or resync is started
        // the moment the step decides on it and the cancel check passes, or
        // not at all; a wait here would let it start after a cancel.
        let _slot = if op.mutates() {
            None
        } else {
            Some(
                process_slots()
                    .acquire()
                    .await
                    .expect("the rbd process semaphore is never closed"),
            )
        };
        let _in_flight = op.mutates().then(InFlightGuard::new);
        crate::metrics::inc(&crate::metrics::RBD_CALLS);
        let err = |kind, exit, detail: String| RbdError {
            kind,
            op,
            target: target.to_string(),
            exit,
            detail,
        };
        let child = cmd.spawn().map_err(|e| {
            err(
                RbdErrorKind::NoBinary,
                None,
                format!("cannot start {}: {e}", self.binary.display()),
            )
        })?;
        // Each call's end, by process id: with a call log that records
        // each start (tests/lab/rbd-timing), the tests' oracle for how
        // many times a command ran and whether two overlapped.
        let pid = child.id();
        let started = std::time::Instant::now();
        let out =
            match tokio::time::timeout(deadline + Duration::from_secs(5), child.wait_with_output())
                .await
            {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => {
                    return Err(err(
                        RbdErrorKind::Other,
                        None,
                        format!("waiting for rbd: {e}"),
                    ));
                }
                Err(_) if op.mutates() => {
                    return Err(err(
                        RbdErrorKind::OutcomeUnknown,
                        None,
                        format!(
                            "still running after {}s: left to finish; its outcome is read again",
                            deadline.as_secs()
                        ),
                    ));
                }
                Err(_) => {
                    return Err(err(
                        RbdErrorKind::Unavailable,
                        None,
                        format!("no answer within {}s", deadline.as_secs()),
                    ));
                }
            };
        // A call not waited for (a mutation past its deadline keeps running,
        // never cut half-way) has no end line: its end is not known here.
        let (exit, ms) = (
            out.status.code().unwrap_or(-1),
            started.elapsed().as_millis() as u64,
        );
        tracing::debug!(pid, op = op.as_str(), target, exit, ms, "rbd call ended");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let accepted = &self.accepted;
        if out.status.success() {
            accepted.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let kind = match classify(op, exit, &stderr) {
            RbdErrorKind::PermissionDenied
                if accepted.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                RbdErrorKind::KeyRejected
            }
            kind => kind,
        };
        let detail = match kind {
            // Its stderr line holds the key: say what it means instead.
            RbdErrorKind::KeyUnreadable => {
                "this rbd cannot parse the key (\"Malformed input\")".into()
            }
            _ => reason_line(&stderr),
        };
        Err(err(kind, Some(exit), detail))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        op: Op,
        target: &str,
        args: &[&str],
    ) -> Result<T, RbdError> {
        let out = self.run(op, target, args).await?;
        serde_json::from_str(&out).map_err(|e| RbdError {
            kind: RbdErrorKind::BadOutput,
            op,
            target: target.to_string(),
            exit: Some(0),
            detail: format!("unexpected JSON: {e}"),
        })
    }
}

#[cfg(target_os = "linux")]
fn libc_prctl_pdeathsig() {
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGKILL: u64 = 9;
    unsafe extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    // SAFETY: plain syscall wrapper with integer arguments.
    unsafe {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    }
}

/// The operations a step needs from one Ceph cluster.
pub trait Ceph: Send + Sync {
    fn info(&self, img: &ImageSpec) -> impl Future<Output = Result<ImageInfo, RbdError>> + Send;
    fn mirror_status(
        &self,
        img: &ImageSpec,
    ) -> impl Future<Output = Result<MirrorImageStatus, RbdError>> + Send;
    fn snapshots(
        &self,
        img: &ImageSpec,
    ) -> impl Future<Output = Result<Vec<SnapEntry>, RbdError>> + Send;
    /// Holders of the image's locks (the exclusive lock of a client writing to it).
    fn lockers(
        &self,
        img: &ImageSpec,
    ) -> impl Future<Output = Result<Vec<Locker>, RbdError>> + Send;
    fn journal_status(
        &self,
        img: &ImageSpec,
    ) -> impl Future<Output = Result<JournalStatus, RbdError>> + Send;
    fn mirror_images(
        &self,
        pool: &str,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<Vec<String>, RbdError>> + Send;
    fn demote(&self, img: &ImageSpec) -> impl Future<Output = Result<(), RbdError>> + Send;
    fn promote(
        &self,
        img: &ImageSpec,
        force: bool,
    ) -> impl Future<Output = Result<(), RbdError>> + Send;
    fn resync(&self, img: &ImageSpec) -> impl Future<Output = Result<(), RbdError>> + Send;
    /// Makes the image's journal commit one entry without changing its data
    /// or leaving anything behind (an image-meta key set, then removed: both
    /// are journaled operations). Only for a journal-mode primary whose
    /// journal has never committed an entry (see `JournalStatus::master_committed`).
    fn journal_marker(&self, img: &ImageSpec) -> impl Future<Output = Result<(), RbdError>> + Send;
}

impl Ceph for RbdCli {
    async fn info(&self, img: &ImageSpec) -> Result<ImageInfo, RbdError> {
        let s = img.to_string();
        self.json(Op::Info, &s, &["info", &s, "--format", "json"])
            .await
    }

    async fn mirror_status(&self, img: &ImageSpec) -> Result<MirrorImageStatus, RbdError> {
        let s = img.to_string();
        self.json(
            Op::Status,
            &s,
            &["mirror", "image", "status", &s, "--format", "json"],
        )
        .await
    }

    async fn snapshots(&self, img: &ImageSpec) -> Result<Vec<SnapEntry>, RbdError> {
        let s = img.to_string();
        self.json(
            Op::Snapshots,
            &s,
            &["snap", "ls", "--all", &s, "--format", "json"],
        )
        .await
    }

    async fn lockers(&self, img: &ImageSpec) -> Result<Vec<Locker>, RbdError> {
        let s = img.to_string();
        self.json(Op::Lockers, &s, &["lock", "ls", &s, "--format", "json"])
            .await
    }

    async fn journal_status(&self, img: &ImageSpec) -> Result<JournalStatus, RbdError> {
        let s = img.to_string();
        self.json(
            Op::JournalStatus,
            &s,
            &["journal", "status", "--image", &s, "--format", "json"],
        )
        .await
    }

    async fn mirror_images(
        &self,
        pool: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<String>, RbdError> {
        let target = match namespace {
            Some(ns) => format!("{pool}/{ns}"),
            None => pool.to_string(),
        };
        let status: PoolStatus = self
            .json(
                Op::PoolStatus,
                &target,
                &[
                    "mirror",
                    "pool",
                    "status",
                    &target,
                    "--verbose",
                    "--format",
                    "json",
                ],
            )
            .await?;
        let mut names: Vec<String> = status.images.into_iter().map(|i| i.name).collect();
        names.sort();
        Ok(names)
    }

    async fn demote(&self, img: &ImageSpec) -> Result<(), RbdError> {
        let s = img.to_string();
        self.run(Op::Demote, &s, &["mirror", "image", "demote", &s])
            .await
            .map(drop)
    }

    async fn promote(&self, img: &ImageSpec, force: bool) -> Result<(), RbdError> {
        let s = img.to_string();
        let mut args = vec!["mirror", "image", "promote"];
        if force {
            args.push("--force");
        }
        args.push(&s);
        self.run(Op::Promote, &s, &args).await.map(drop)
    }

    async fn resync(&self, img: &ImageSpec) -> Result<(), RbdError> {
        let s = img.to_string();
        self.run(Op::Resync, &s, &["mirror", "image", "resync", &s])
            .await
            .map(drop)
    }

    async fn journal_marker(&self, img: &ImageSpec) -> Result<(), RbdError> {
        let s = img.to_string();
        self.run(
            Op::JournalMarker,
            &s,
            &["image-meta", "set", &s, MARKER_KEY, "demote"],
        )
        .await?;
        self.run(
            Op::JournalMarker,
            &s,
            &["image-meta", "remove", &s, MARKER_KEY],
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in `rbd` that records when each call starts and ends: the
    /// bound is on real child processes, so it is checked on real ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_rbd_processes_than_the_limit_run_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let script = dir.path().join("rbd");
        std::fs::write(
            &script,
            format!(
                "#!/bin/bash\necho \"+ ${{EPOCHREALTIME}}\" >>{log}\nsleep 0.2\necho \"- ${{EPOCHREALTIME}}\" >>{log}\necho '{{}}'\n",
                log = log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The first setting wins for the whole test process: no other unit
        // test starts an rbd process.
        limit_processes(2);
        let mut cli = RbdCli::new("c".into(), "k".into(), None);
        cli.binary = script;
        let img = ImageSpec::parse("img", "pool", None).unwrap();
        let calls = (0..6).map(|_| cli.info(&img));
        futures::future::join_all(calls).await;

        let text = std::fs::read_to_string(&log).unwrap();
        let mut events: Vec<(f64, i32)> = text
            .lines()
            .map(|l| {
                let (sign, t) = l.split_once(' ').unwrap();
                (
                    t.replace(',', ".").parse().unwrap(),
                    if sign == "+" { 1 } else { -1 },
                )
            })
            .collect();
        // Ends before starts at the same instant: a slot handed over is not overlap.
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut alive, mut most) = (0, 0);
        for (_, d) in &events {
            alive += d;
            most = most.max(alive);
        }
        assert_eq!(events.len(), 12, "every call ran: {text}");
        assert_eq!(
            most, 2,
            "at most (and, with 6 calls, exactly) 2 at once: {text}"
        );
    }
}

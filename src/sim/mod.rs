//! Test support: a model of RBD mirroring behind the [`Ceph`](crate::ceph::Ceph)
//! trait, a catalogue of failover scenarios written as data, and a harness
//! that runs a step against the model with crashes, faults and a second
//! executor. Always compiled (small, no extra dependency) so integration
//! tests can use it: `tests/model_faults.rs` on the model, `tests/conformance.rs`
//! on the lab's real Ceph sites and the model side by side.
//!
//! The model follows `../shared/rbd-facts.md` and `../shared/ceph-lab.md`
//! (cited as `facts §x` and `lab Pn`): it decides what Ceph decides, including
//! the answers that hurt (a non-forced promote of an orphan succeeds, so a
//! stale promote is possible). Its time is tokio's clock: run it under
//! `tokio::time::pause()` (or `start_paused`) and minutes of Ceph time take
//! milliseconds.

pub mod catalogue;
pub mod harness;
pub mod model;
pub mod rng;

pub use catalogue::{Expect, Scenario, SetupOp, catalogue};
pub use model::{Crash, CrashPlan, Fault, FaultError, Mode, Sim, SimConfig, SimSite, Site};

//! One step: resolve (PVCs → images) → validate → (lock) → plan and execute → report.

pub mod dry_run;
pub mod execute;
pub mod failures;
pub mod locks;
pub mod outcome;
pub mod plan;
pub mod promote_guard;
pub mod pvc;
pub mod resolve;
pub mod select;

pub use execute::{Checkpoint, Execution, Pace, Sites, StepEnd, execute};
pub use outcome::{Failure, ImageOutcome, ImageState, Progress, Reason};
pub use resolve::{InvalidParams, ResolvedStep, Selection};

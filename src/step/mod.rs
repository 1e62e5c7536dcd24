//! One step: resolve → validate → (lock) → execute → report.

pub mod execute;
pub mod locks;
pub mod outcome;
pub mod resolve;

pub use execute::{Checkpoint, Execution, Pace, Sites, StepEnd, execute};
pub use outcome::{Failure, ImageOutcome, ImageState, Progress, Reason};
pub use resolve::{InvalidParams, ResolvedStep, Selection};

//! Kubernetes types: the `RbdMirrorStep` CRD and views of Tekton's run objects.

pub mod run;
pub mod step;

pub use run::{Condition, Flavor, Param, RunResult, RunStatus, TektonRun};
pub use step::{Action, RbdMirrorStep, RbdMirrorStepSpec, WaitFor};

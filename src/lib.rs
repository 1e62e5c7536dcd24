//! RbdMirrorStep: Ceph RBD mirroring failover steps (resync, demote, promote)
//! as a Tekton custom task.

pub mod api;
pub mod ceph;
pub mod contract;
pub mod controller;
pub mod metrics;
pub mod redact;
pub mod sim;
pub mod step;

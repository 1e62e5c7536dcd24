//! The Ceph side: validated names, the `rbd` CLI backend, its JSON, its
//! errors, and connections read from Secrets.

pub mod cli;
pub mod connection;
pub mod error;
pub mod fsid;
pub mod image;
pub mod model;
pub mod rook;

pub use cli::{Ceph, RbdCli};
pub use error::{Op, RbdError, RbdErrorKind};
pub use image::ImageSpec;

#[cfg(test)]
mod captured;

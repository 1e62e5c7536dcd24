//! The cluster's fsid: what every connection to one cluster has in common,
//! whichever Secret, monitor subset or DNS name reached it, so that runs
//! through two Secrets of one cluster lock the same images. Read with
//! `ceph fsid` (ceph-common ships it beside `rbd`, and cephx `profile rbd`
//! allows it), once per monitor set: a cluster's fsid never changes.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::process::Command;

use super::connection::Connection;

#[derive(Debug, thiserror::Error)]
pub enum FsidError {
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("ceph fsid did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ceph fsid failed (exit {0:?})")]
    Failed(Option<i32>),
    #[error("ceph fsid printed no fsid")]
    BadOutput,
}

/// Fsids already read, by monitor set.
#[derive(Default)]
pub struct FsidCache {
    known: Mutex<HashMap<Vec<String>, String>>,
}

impl FsidCache {
    /// The fsid of the connection's cluster. Failures are not remembered:
    /// the next step asks again.
    pub async fn get(&self, conn: &Connection, timeout: Duration) -> Result<String, FsidError> {
        let cached = (!conn.monitors.is_empty())
            .then(|| {
                self.known
                    .lock()
                    .expect("fsid cache")
                    .get(&conn.monitors)
                    .cloned()
            })
            .flatten();
        if let Some(f) = cached {
            return Ok(f);
        }
        let fsid = read(conn, timeout).await?;
        if !conn.monitors.is_empty() {
            self.known
                .lock()
                .expect("fsid cache")
                .insert(conn.monitors.clone(), fsid.clone());
        }
        Ok(fsid)
    }
}

async fn read(conn: &Connection, timeout: Duration) -> Result<String, FsidError> {
    let binary = std::env::var("CEPH_BINARY").unwrap_or_else(|_| "ceph".into());
    let secs = timeout.as_secs().max(1).to_string();
    let mut cmd = Command::new(&binary);
    cmd.arg("--conf")
        .arg(&conn.conf)
        .arg("--keyring")
        .arg(&conn.keyring);
    if let Some(u) = &conn.user {
        cmd.args(["--id", u]);
    }
    cmd.args(["--connect-timeout", &secs, "fsid", "--format", "json"])
        .env_remove("CEPH_ARGS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| FsidError::Spawn {
        binary: binary.clone(),
        source,
    })?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| FsidError::Timeout(timeout))?
        .map_err(|source| FsidError::Spawn { binary, source })?;
    if !out.status.success() {
        return Err(FsidError::Failed(out.status.code()));
    }
    parse(&out.stdout).ok_or(FsidError::BadOutput)
}

/// `{"fsid":"<uuid>"}`, the uuid checked for its shape so that nothing
/// else ever becomes part of a lock key.
pub fn parse(stdout: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(stdout).ok()?;
    let f = v.get("fsid")?.as_str()?;
    let shape = f.len() == 36
        && f.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    shape.then(|| f.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsid_is_read_from_the_json_and_checked() {
        assert_eq!(
            parse(br#"{"fsid":"6eb433a3-0a68-449b-bae8-a5e29b516a61"}"#).as_deref(),
            Some("6eb433a3-0a68-449b-bae8-a5e29b516a61")
        );
        assert_eq!(parse(br#"{"fsid":"6eb433a3|x"}"#), None);
        assert_eq!(parse(b"6eb433a3-0a68-449b-bae8-a5e29b516a61"), None);
        assert_eq!(parse(br#"{"other":1}"#), None);
    }
}

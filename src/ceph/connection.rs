//! A Ceph connection read from a Kubernetes Secret, written for one `rbd`
//! session into a private temporary directory (0700, files 0600) that is
//! removed when the connection is dropped. Keyrings never leave that
//! directory: not in logs, results, events or error messages.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::cli::RbdCli;

/// The label a Secret must carry to be used as a Ceph connection.
pub const CONNECTION_LABEL: &str = "rbdmirror.dev/ceph-connection";
/// Prefix of the private per-connection directories.
pub const TMP_PREFIX: &str = "rbdstep-conn-";
/// Prefix of a controller process's own directory, which holds its
/// connection directories.
pub const OWNER_PREFIX: &str = "rbdstep-owner-";
const OWNER_LOCK: &str = "lock";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConnectionError {
    #[error(
        "Secret {0:?} has neither `ceph.conf` + `keyring` nor `monHost` + `userID` + `userKey`; see the README's Secret format"
    )]
    Incomplete(String),
    #[error("Secret {secret:?}: key {key:?} {problem}")]
    BadValue {
        secret: String,
        key: &'static str,
        problem: &'static str,
    },
    #[error("cannot write the connection of Secret {secret:?} to {dir}: {message}")]
    Io {
        secret: String,
        dir: String,
        message: String,
    },
}

/// The connection's files; dropping it removes them.
#[derive(Debug)]
pub struct Connection {
    dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub keyring: PathBuf,
    pub user: Option<String>,
    /// The cluster's monitor addresses as the Secret names them: what two
    /// Secrets of one cluster (a ceph.conf and a ceph-csi one, in two
    /// namespaces) have in common, so that both lock the same images.
    pub monitors: Vec<String>,
}

impl Connection {
    pub fn rbd(&self) -> RbdCli {
        RbdCli::new(self.conf.clone(), self.keyring.clone(), self.user.clone())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn text(
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    key: &'static str,
) -> Result<Option<String>, ConnectionError> {
    match data.get(key) {
        None => Ok(None),
        Some(v) => String::from_utf8(v.clone())
            .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
            .map_err(|_| ConnectionError::BadValue {
                secret: secret.into(),
                key,
                problem: "is not UTF-8 text",
            }),
    }
}

fn check_user(secret: &str, user: &str) -> Result<String, ConnectionError> {
    let user = user.strip_prefix("client.").unwrap_or(user);
    let ok = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(user.to_string())
    } else {
        Err(ConnectionError::BadValue {
            secret: secret.into(),
            key: "userID",
            problem: "is not a cephx user id",
        })
    }
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

/// Writes the Secret's connection into a new private directory under `base`.
pub fn materialize(
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    base: &Path,
) -> Result<Connection, ConnectionError> {
    let conf = text(secret, data, "ceph.conf")?;
    let keyring = text(secret, data, "keyring")?;
    let user = text(secret, data, "userID")?
        .map(|u| check_user(secret, &u))
        .transpose()?;
    let mon_host = text(secret, data, "monHost")?;
    let user_key = text(secret, data, "userKey")?;

    let (conf_text, keyring_text, user) = match (conf, keyring, mon_host, user_key) {
        (Some(c), Some(k), _, _) => (c + "\n", k + "\n", user),
        // ceph-csi's Secret: userID + userKey, with the monitors beside them.
        (_, _, Some(mon), Some(key)) => {
            let Some(user) = user else {
                return Err(ConnectionError::Incomplete(secret.into()));
            };
            if mon.contains(['\n', '\r']) {
                return Err(ConnectionError::BadValue {
                    secret: secret.into(),
                    key: "monHost",
                    problem: "must be one line",
                });
            }
            if key.contains(['\n', '\r', ' ']) {
                return Err(ConnectionError::BadValue {
                    secret: secret.into(),
                    key: "userKey",
                    problem: "must be one base64 key",
                });
            }
            (
                format!("[global]\nmon host = {mon}\n"),
                format!("[client.{user}]\n\tkey = {key}\n"),
                Some(user),
            )
        }
        _ => return Err(ConnectionError::Incomplete(secret.into())),
    };
    let io = |e: std::io::Error| ConnectionError::Io {
        secret: secret.into(),
        dir: base.display().to_string(),
        message: e.to_string(),
    };
    fs::create_dir_all(base).map_err(io)?;
    let dir = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(base)
        .map_err(io)?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).map_err(io)?;
    let conf = dir.path().join("ceph.conf");
    let keyring = dir.path().join("keyring");
    write_private(&conf, &conf_text).map_err(io)?;
    write_private(&keyring, &keyring_text).map_err(io)?;
    Ok(Connection {
        dir,
        conf,
        keyring,
        user,
        monitors: monitors(&conf_text),
    })
}

/// The `mon host` addresses of a ceph.conf, each as `ip:port` (the v1/v2
/// prefixes and nonces dropped, 6789 when no port is given), sorted.
pub fn monitors(conf: &str) -> Vec<String> {
    let mut out = vec![];
    for line in conf.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k: String = k
            .trim()
            .chars()
            .map(|c| if c == ' ' || c == '-' { '_' } else { c })
            .collect();
        if !k.eq_ignore_ascii_case("mon_host") {
            continue;
        }
        for a in v.split([',', ';', ' ', '\t', '[', ']']) {
            let a = a.trim();
            let a = a
                .strip_prefix("v2:")
                .or_else(|| a.strip_prefix("v1:"))
                .unwrap_or(a);
            let a = a.split('/').next().unwrap_or_default();
            if a.is_empty() {
                continue;
            }
            out.push(if a.contains(':') {
                a.to_string()
            } else {
                format!("{a}:6789")
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// One controller process's directory for its connections, with a lock
/// file held (flock) for as long as the process lives. The kernel drops the
/// lock when the process dies, however it dies, so another process sharing
/// the same tmp dir (two controllers on one host's /tmp, or the next
/// container on the same emptyDir) can tell a dead owner's keyrings from a
/// live one's.
#[derive(Debug)]
pub struct OwnerDir {
    dir: tempfile::TempDir,
    _lock: fs::File,
}

impl OwnerDir {
    pub fn create(base: &Path) -> std::io::Result<OwnerDir> {
        fs::create_dir_all(base)?;
        let dir = tempfile::Builder::new()
            .prefix(OWNER_PREFIX)
            .tempdir_in(base)?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
        let lock = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join(OWNER_LOCK))?;
        lock.try_lock().map_err(std::io::Error::from)?;
        Ok(OwnerDir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the directories of controller processes that died without
/// cleaning up (SIGKILL, OOM): an owner directory whose lock nobody holds.
/// A live process's directory is left alone, and so is one without its
/// lock file yet (a process between making it and locking it). Connection
/// directories directly under `base` come from versions before owner
/// directories and are removed as before.
pub fn sweep_stale(base: &Path) -> usize {
    let Ok(entries) = fs::read_dir(base) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let stale = if name.starts_with(OWNER_PREFIX) {
            fs::File::open(e.path().join(OWNER_LOCK)).is_ok_and(|lock| lock.try_lock().is_ok())
        } else {
            name.starts_with(TMP_PREFIX)
        };
        if stale && fs::remove_dir_all(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_secrets_of_one_cluster_share_a_monitor_address() {
        let conf = monitors(
            "[global]\nfsid = x\nmon host = [v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0] [v2:10.0.0.2:3300,v1:10.0.0.2:6789]\n",
        );
        assert_eq!(
            conf,
            vec![
                "10.0.0.1:3300",
                "10.0.0.1:6789",
                "10.0.0.2:3300",
                "10.0.0.2:6789"
            ]
        );
        let csi = monitors("[global]\nmon_host = 10.0.0.2:6789,10.0.0.3\n");
        assert_eq!(csi, vec!["10.0.0.2:6789", "10.0.0.3:6789"]);
        assert!(csi.iter().any(|m| conf.contains(m)));
        assert!(monitors("[global]\nkeyring = /x\n").is_empty());
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn conf_and_keyring_are_written_private_and_removed_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let c = materialize(
            "site-a",
            &data(&[
                ("ceph.conf", "[global]\nmon host = 1.2.3.4"),
                ("keyring", "[client.x]\nkey = SECRET"),
                ("userID", "x"),
            ]),
            base.path(),
        )
        .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(c.dir()), 0o700);
        assert_eq!(mode(&c.keyring), 0o600);
        assert_eq!(mode(&c.conf), 0o600);
        assert_eq!(c.user.as_deref(), Some("x"));
        let dir = c.dir().to_path_buf();
        drop(c);
        assert!(!dir.exists());
    }

    #[test]
    fn csi_style_secret_becomes_conf_and_keyring() {
        let base = tempfile::tempdir().unwrap();
        let c = materialize(
            "s",
            &data(&[
                ("monHost", "10.0.0.1:6789"),
                ("userID", "client.csi-rbd"),
                ("userKey", "QUJD"),
            ]),
            base.path(),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&c.conf).unwrap(),
            "[global]\nmon host = 10.0.0.1:6789\n"
        );
        assert_eq!(
            fs::read_to_string(&c.keyring).unwrap(),
            "[client.csi-rbd]\n\tkey = QUJD\n"
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_the_key() {
        let base = tempfile::tempdir().unwrap();
        assert_eq!(
            materialize("s", &data(&[("keyring", "k")]), base.path()).unwrap_err(),
            ConnectionError::Incomplete("s".into())
        );
        let e = materialize(
            "s",
            &data(&[
                ("monHost", "m"),
                ("userID", "--x"),
                ("userKey", "TOPSECRET"),
            ]),
            base.path(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("TOPSECRET"));
        let e = materialize(
            "s",
            &data(&[("monHost", "m\n[x]"), ("userID", "x"), ("userKey", "K")]),
            base.path(),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            ConnectionError::BadValue { key: "monHost", .. }
        ));
    }

    #[test]
    fn stale_directories_are_swept() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join(format!("{TMP_PREFIX}old"))).unwrap();
        fs::create_dir(base.path().join("keep")).unwrap();
        assert_eq!(sweep_stale(base.path()), 1);
        assert!(base.path().join("keep").exists());
    }

    #[test]
    fn only_owner_directories_nobody_holds_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let live = OwnerDir::create(base.path()).unwrap();
        let live_conn = materialize(
            "s",
            &data(&[("keyring", "k"), ("ceph.conf", "c")]),
            live.path(),
        )
        .unwrap();
        // A dead owner: its lock file exists and nobody holds a lock on it.
        let dead = base.path().join(format!("{OWNER_PREFIX}dead"));
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(OWNER_LOCK), "").unwrap();
        fs::create_dir(dead.join(format!("{TMP_PREFIX}x"))).unwrap();
        // Being made: no lock file yet.
        let young = base.path().join(format!("{OWNER_PREFIX}young"));
        fs::create_dir(&young).unwrap();

        assert_eq!(sweep_stale(base.path()), 1);
        assert!(!dead.exists());
        assert!(young.exists());
        assert!(live_conn.keyring.exists(), "a live owner's keyring is kept");
        drop(live_conn);
        let path = live.path().to_path_buf();
        drop(live);
        assert!(
            !path.exists(),
            "an owner removes its directory when dropped"
        );
    }
}

//! The shared test lab (started by `tests/lab/lab up`), as the tests see it.
//! A test that needs the lab fails with a clear message when it is not up:
//! it never skips.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod pipelines;
pub mod pvcs;
pub mod runs;

pub struct Site {
    pub name: &'static str,
    pub conf: PathBuf,
    pub keyring: PathBuf,
    pub user: String,
    pub admin_conf: PathBuf,
    /// The site's own `rbd` and `ceph` (its Ceph release's), for its admin.
    pub rbd: PathBuf,
    pub ceph: PathBuf,
}

pub struct Lab {
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    pub pool: String,
    /// The address the sites' monitors (and the API server) serve on.
    pub ip: String,
    /// A host name for `ip` (in /etc/hosts while the lab is up).
    pub hostname: String,
    pub a: Site,
    pub b: Site,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the lab. Run them with `tests/lab/lab test`, \
             or `tests/lab/lab up && eval \"$(tests/lab/lab env)\"` first."
        )
    })
}

fn site(name: &'static str, key: &str) -> Site {
    Site {
        name,
        conf: var(&format!("LAB_SITE_{key}_CONF")).into(),
        keyring: var(&format!("LAB_SITE_{key}_KEYRING")).into(),
        user: var(&format!("LAB_SITE_{key}_USER")),
        admin_conf: var(&format!("LAB_SITE_{key}_ADMIN_CONF")).into(),
        rbd: var(&format!("LAB_SITE_{key}_RBD")).into(),
        ceph: var(&format!("LAB_SITE_{key}_CEPH")).into(),
    }
}

pub fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let lab = Lab {
            kubeconfig: var("KUBECONFIG").into(),
            dir: var("LAB_DIR").into(),
            pool: var("LAB_POOL"),
            ip: var("LAB_IP"),
            hostname: var("LAB_HOSTNAME"),
            a: site("site-a", "A"),
            b: site("site-b", "B"),
        };
        assert!(
            lab.kubeconfig.exists(),
            "{} does not exist: the lab is not up (tests/lab/lab up)",
            lab.kubeconfig.display()
        );
        lab
    })
}

/// The `rbd` the lab's controllers run (`LAB_CLIENT`'s release).
pub fn client_rbd() -> PathBuf {
    var("LAB_RBD").into()
}

/// The `ceph` of the same release (the controller reads fsids with it).
pub fn client_ceph() -> PathBuf {
    var("CEPH_BINARY").into()
}

pub async fn client() -> Client {
    let lab = lab();
    let kc = Kubeconfig::read_from(&lab.kubeconfig).expect("lab kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("lab kubeconfig is usable");
    let client = Client::try_from(cfg).expect("kube client");
    client
        .apiserver_version()
        .await
        .expect("the lab's kube-apiserver does not answer: is the lab up? (tests/lab/lab status)");
    client
}

impl Site {
    /// Runs `rbd` as the site's admin (test set-up only; the controller uses
    /// the least-privilege client). Bounded, because a site a test froze or
    /// is still thawing would otherwise hang the call and with it the test's
    /// own deadline.
    pub fn rbd_admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.rbd)
            .arg("-c")
            .arg(&self.admin_conf)
            .args([
                "--client_mount_timeout",
                "15",
                "--rados_mon_op_timeout",
                "15",
                "--rados_osd_op_timeout",
                "15",
            ])
            .args(args)
            .output()
            .expect("rbd runs")
    }

    /// `ceph` as the site's admin (test set-up only).
    pub fn ceph_ok(&self, args: &[&str]) -> String {
        let out = Command::new(&self.ceph)
            .arg("-c")
            .arg(&self.admin_conf)
            .args(["--connect-timeout", "15"])
            .args(args)
            .output()
            .expect("ceph runs");
        assert!(
            out.status.success(),
            "ceph {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn rbd_ok(&self, args: &[&str]) -> String {
        let out = self.rbd_admin(args);
        assert!(
            out.status.success(),
            "rbd {args:?} on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let out = self.rbd_admin(&a);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn is_primary(&self, pool: &str, image: &str) -> Option<bool> {
        self.json(&["info", &format!("{pool}/{image}")])?["mirroring"]["primary"].as_bool()
    }

    pub fn mirror_state(&self, pool: &str, image: &str) -> Option<String> {
        self.json(&["mirror", "image", "status", &format!("{pool}/{image}")])?["state"]
            .as_str()
            .map(str::to_string)
    }
}

/// A name unique to this test run: tests share one lab.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000_000;
    format!("{prefix}-{t}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Polls `check` until it returns Some, or panics after `secs` naming `what`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a snapshot-mirrored image on `site` and waits until the other
/// site replays it.
pub async fn mirrored_image(primary: &Site, secondary: &Site, pool: &str, name: &str) {
    mirrored_image_mode(primary, secondary, pool, name, "snapshot").await
}

/// Like `mirrored_image`, in `snapshot` or `journal` mode.
pub async fn mirrored_image_mode(
    primary: &Site,
    secondary: &Site,
    pool: &str,
    name: &str,
    mode: &str,
) {
    let spec = format!("{pool}/{name}");
    if mode == "journal" {
        primary.rbd_ok(&[
            "create",
            "--size",
            "16M",
            "--image-feature",
            "layering,exclusive-lock,journaling",
            &spec,
        ]);
    } else {
        primary.rbd_ok(&["create", "--size", "16M", &spec]);
    }
    primary.rbd_ok(&["mirror", "image", "enable", &spec, mode]);
    wait_for(
        90,
        &format!("{spec} replaying on {}", secondary.name),
        || async {
            (secondary.is_primary(pool, name) == Some(false)
                && secondary.mirror_state(pool, name).as_deref() == Some("up+replaying"))
            .then_some(())
        },
    )
    .await;
}

pub async fn namespace(client: &Client, prefix: &str) -> String {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let name = unique(prefix);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

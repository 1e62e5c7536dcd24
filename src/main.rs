use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use rbd_mirror_step::api::{Param, RbdMirrorStep, RbdMirrorStepSpec};
use rbd_mirror_step::ceph::RbdCli;
use rbd_mirror_step::controller::{self, Config};
use rbd_mirror_step::step::outcome::results;
use rbd_mirror_step::step::resolve::{overlay, validate};
use rbd_mirror_step::step::{Sites, StepEnd};
use tokio_util::sync::CancellationToken;

/// Ceph RBD mirroring failover steps (resync, demote, promote) as a Tekton
/// custom task. Without a subcommand it runs the controller.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default): watch CustomRuns (and legacy Runs) of
    /// kind RbdMirrorStep and execute them. Kubeconfig: in-cluster, then $KUBECONFIG.
    Run,
    /// Print the RbdMirrorStep CustomResourceDefinition as YAML.
    Crd,
    /// Run one step directly against a Ceph cluster, without Kubernetes;
    /// prints the results as JSON.
    Step(StepArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct RunArgs {
    /// Directory for the private per-connection temp dirs (mode 0700, files 0600).
    #[arg(long, env = "RBDSTEP_TMP_DIR", default_value_os_t = std::env::temp_dir(), global = true)]
    tmp_dir: PathBuf,
    /// Minimum time between two progress writes of one run, in milliseconds.
    #[arg(
        long,
        env = "RBDSTEP_STATUS_INTERVAL_MS",
        default_value_t = 2000,
        global = true
    )]
    status_interval_ms: u64,
    /// Deadline of calls to the peer site, in seconds: how fast a lost peer is reported.
    #[arg(
        long,
        env = "RBDSTEP_PEER_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    peer_timeout_secs: u64,
    /// Read-only `rbd` processes alive at once across all runs (each needs
    /// ~7 MiB; a demote/promote/resync never waits for one): size the
    /// container's memory limit with it.
    #[arg(
        long,
        env = "RBDSTEP_MAX_RBD_PROCESSES",
        default_value_t = rbd_mirror_step::ceph::cli::DEFAULT_MAX_PROCESSES,
        global = true
    )]
    max_rbd_processes: usize,
    /// Runs reconciled at once.
    #[arg(long, env = "RBDSTEP_CONCURRENCY", default_value_t = 16, global = true)]
    concurrency: u16,
    /// Only runs with these labels (e.g. `team=storage`): to shard, or to try a
    /// new version beside the old one.
    #[arg(long, env = "RBDSTEP_LABEL_SELECTOR", global = true)]
    label_selector: Option<String>,
    /// Elect a leader through a Lease, so that replicas never both act.
    #[arg(long, env = "RBDSTEP_LEADER_ELECTION", global = true)]
    leader_election: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE", global = true)]
    lease_namespace: Option<String>,
    /// Identity in the Lease (default: $POD_NAME, else host and pid).
    #[arg(long, env = "POD_NAME", global = true)]
    identity: Option<String>,
    /// Address of /healthz and /readyz (e.g. 0.0.0.0:8081).
    #[arg(long, env = "RBDSTEP_HEALTH_ADDR", global = true)]
    health_addr: Option<std::net::SocketAddr>,
    /// ceph-csi's config ConfigMap as <namespace>/<name> (e.g.
    /// rook-ceph/rook-ceph-csi-config), read for PVC-selected volumes whose
    /// PersistentVolume does not carry its RADOS namespace (older ceph-csi).
    /// The controller then needs get on that one ConfigMap.
    #[arg(long, env = "RBDSTEP_CEPH_CSI_CONFIG", global = true)]
    ceph_csi_config: Option<controller::pvcs::CsiConfigRef>,
    /// Namespaces of Rook clusters (comma-separated) whose CSI provisioner
    /// Secret and rook-ceph-mon-endpoints ConfigMap a run may name as
    /// `cluster: <namespace>/<secret>`. The controller then needs get on
    /// that Secret and ConfigMap there.
    #[arg(
        long,
        env = "RBDSTEP_CEPH_NAMESPACES",
        value_delimiter = ',',
        global = true
    )]
    ceph_namespaces: Vec<String>,
    /// Exit when standard input closes (for tests that own the controller).
    #[arg(long, hide = true, global = true)]
    exit_on_stdin_eof: bool,
    /// Log format (filter with RUST_LOG, default info).
    #[arg(long, env = "RBDSTEP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Args)]
struct StepArgs {
    /// ceph.conf of the cluster to act on.
    #[arg(long)]
    conf: PathBuf,
    /// Keyring of the cephx user.
    #[arg(long)]
    keyring: PathBuf,
    /// cephx user id (without `client.`).
    #[arg(long)]
    id: Option<String>,
    /// ceph.conf, keyring and id of the peer site, for the safety checks of a promote.
    #[arg(long, requires = "peer_keyring")]
    peer_conf: Option<PathBuf>,
    #[arg(long)]
    peer_keyring: Option<PathBuf>,
    #[arg(long)]
    peer_id: Option<String>,
    /// Params as NAME=VALUE, exactly as in a pipeline (images as a JSON array).
    #[arg(long = "param", short = 'p', value_parser = parse_param)]
    params: Vec<(String, String)>,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!(
            "{}",
            serde_saphyr::to_string(&RbdMirrorStep::crd()).expect("the CRD serialises")
        );
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.run.log_format);
    // The default hook prints the payload as is; it may quote Ceph's output.
    std::panic::set_hook(Box::new(|info| {
        let payload = rbd_mirror_step::controller::tasks::panic_message(info.payload());
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        tracing::error!(panic = %rbd_mirror_step::redact::message(&payload), at, "panic");
    }));
    rbd_mirror_step::ceph::cli::limit_processes(cli.run.max_rbd_processes);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match cli.command {
        Some(Command::Step(args)) => rt.block_on(step(args)),
        _ => rt.block_on(run(cli.run)),
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes configuration (in-cluster or $KUBECONFIG)");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        tmp_dir: args.tmp_dir,
        status_interval: Duration::from_millis(args.status_interval_ms),
        peer_timeout: Duration::from_secs(args.peer_timeout_secs),
        concurrency: args.concurrency,
        label_selector: args.label_selector,
        health_addr: args.health_addr,
        ceph_csi_config: args.ceph_csi_config.clone(),
        ceph_namespaces: args.ceph_namespaces.clone(),
        leader_election: args.leader_election.then(|| controller::LeaderElection {
            namespace: args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            lease: "rbd-mirror-step".into(),
            identity: args.identity.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            }),
        }),
        ..Config::default()
    };
    if args.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    match controller::run(client, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "controller stopped");
            ExitCode::FAILURE
        }
    }
}

async fn step(args: StepArgs) -> ExitCode {
    let params: Vec<Param> = args
        .params
        .iter()
        .map(|(k, v)| Param {
            name: k.clone(),
            value: serde_json::Value::String(v.clone()),
        })
        .collect();
    let mut with_cluster = params.clone();
    if !with_cluster.iter().any(|p| p.name == "cluster") {
        with_cluster.push(Param {
            name: "cluster".into(),
            value: "local".into(),
        });
    }
    let resolved =
        match overlay(&RbdMirrorStepSpec::default(), &with_cluster).and_then(|s| validate(&s)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("InvalidParams: {}", e.0);
                return ExitCode::from(2);
            }
        };
    let peer = args.peer_conf.map(|c| {
        RbdCli::new(
            c,
            args.peer_keyring.expect("clap requires it"),
            args.peer_id,
        )
    });
    let sites = Sites {
        local: RbdCli::new(args.conf, args.keyring, args.id),
        local_name: resolved.cluster.clone(),
        peer_name: peer.as_ref().map(|_| {
            resolved
                .peer_cluster
                .clone()
                .unwrap_or_else(|| "peer".into())
        }),
        peer,
    };
    let token = CancellationToken::new();
    {
        let token = token.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
        });
    }
    let exec = controller::task::execute_direct(&resolved, &sites, token).await;
    let res = results(&exec.images, &exec.progress, exec.elapsed);
    let out: serde_json::Map<String, serde_json::Value> =
        res.into_iter().map(|r| (r.name, r.value.into())).collect();
    println!("{}", serde_json::Value::Object(out));
    match exec.end {
        StepEnd::Succeeded => ExitCode::SUCCESS,
        StepEnd::Failed(f) => {
            eprintln!("{}: {}", f.reason.as_str(), f.message);
            ExitCode::FAILURE
        }
        StepEnd::Stopped => {
            eprintln!("stopped");
            ExitCode::FAILURE
        }
        StepEnd::Lost(owner) => {
            eprintln!("stopped: {owner} owns the run");
            ExitCode::FAILURE
        }
    }
}

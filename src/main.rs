use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use rbd_mirror_step::api::RbdMirrorStep;

/// Ceph RBD mirroring failover steps (resync, demote, promote) as a Tekton custom task.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the RbdMirrorStep CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        None => {
            eprintln!("the controller is not built yet; see `rbd-mirror-step --help`");
            std::process::ExitCode::FAILURE
        }
    }
}

fn crd_yaml() -> String {
    serde_saphyr::to_string(&RbdMirrorStep::crd()).expect("the CRD serialises")
}

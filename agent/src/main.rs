//! The `weft` binary: the agent and its command-line clients.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use weft::{
    cli::{
        completions::{CompletionsArgs, ManArgs},
        flows::FlowsArgs,
        policies::PoliciesArgs,
        services::ServicesArgs,
        status::StatusArgs,
        top::TopArgs,
    },
    config::{AgentArgs, Config},
};

/// eBPF-based, sidecarless observability and steering: flows, L7 metrics
/// and traces from the kernel, with no sidecars.
#[derive(Parser)]
#[command(name = "weft", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (needs root, or CAP_BPF, CAP_PERFMON and
    /// CAP_NET_ADMIN; CAP_SYS_ADMIN too if tracefs or bpffs is not mounted).
    Agent(AgentArgs),
    /// Show recent and live flows from the local agent.
    Flows(FlowsArgs),
    /// Live golden signals by workload, pod, process, service, route or pair.
    Top(TopArgs),
    /// Show the local agent's health.
    Status(StatusArgs),
    /// Show the services the local agent steers.
    Services(ServicesArgs),
    /// Show the policy rules the local agent enforces, with their hit
    /// counts.
    Policies(PoliciesArgs),
    /// Remove every pinned weft object (steering programs and maps): run
    /// it after stopping the agent for good.
    Cleanup,
    /// Print the shell completion script for bash, zsh or fish.
    Completions(CompletionsArgs),
    /// Write the man pages (weft.1 and one per command) into a directory.
    Man(ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube-rs logs every failed request to the API server as an error;
    // the agent reports them itself, once per change (RUST_LOG overrides).
    let default_filter = "info,kube_client::client::builder=off";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .format_timestamp_millis()
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match dispatch(cli.command, &runtime) {
        Ok(code) => code,
        Err(err) => failure(&err),
    }
}

/// Prints a runtime failure; its exit status is 2 when the node's setup
/// or the API socket's path is at fault (as for bad configuration), else 1.
fn failure(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    let bad_setup = err.chain().any(|cause| {
        cause
            .downcast_ref::<weft::loader::LoadError>()
            .is_some_and(weft::loader::LoadError::is_node_setup)
            || cause
                .downcast_ref::<weft::steer::SteerError>()
                .is_some_and(weft::steer::SteerError::is_node_setup)
            || cause
                .downcast_ref::<weft::api::ApiError>()
                .is_some_and(socket_path_unusable)
    });
    if bad_setup {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Another agent serves on the API socket's path, or something that is not
/// a socket is there: the agent was pointed at the wrong path.
fn socket_path_unusable(err: &weft::api::ApiError) -> bool {
    matches!(
        err,
        weft::api::ApiError::AlreadyServing { .. } | weft::api::ApiError::NotASocket { .. }
    )
}

/// Runs a command; `Err` is a runtime failure (see [`failure`]).
fn dispatch(command: Command, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    match command {
        Command::Agent(args) => run_agent(&args, runtime),
        Command::Flows(args) => runtime.block_on(weft::cli::flows::run(args)),
        Command::Top(args) => runtime.block_on(weft::cli::top::run(args)),
        Command::Status(args) => runtime.block_on(weft::cli::status::run(args)),
        Command::Services(args) => runtime.block_on(weft::cli::services::run(args)),
        Command::Policies(args) => runtime.block_on(weft::cli::policies::run(args)),
        Command::Completions(args) => {
            weft::cli::completions::print_completions(&args, Cli::command())
                .map(|()| ExitCode::SUCCESS)
                .map_err(Into::into)
        }
        Command::Man(args) => weft::cli::completions::write_man_pages(Cli::command(), &args.dir)
            .map(|pages| {
                for page in pages {
                    println!("{}", page.display());
                }
                ExitCode::SUCCESS
            }),
        Command::Cleanup => match weft::steer::cleanup() {
            Ok(n) => {
                println!("removed {n} pinned weft objects");
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => Err(err.into()),
        },
    }
}

/// `weft agent`: the configuration checked (exit status 2 when bad), then
/// printed (`--print-config`) or run.
fn run_agent(args: &AgentArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let config = match Config::load(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.print_config {
        print!("{}", serde_yaml_ng::to_string(&config)?);
        return Ok(ExitCode::SUCCESS);
    }
    runtime
        .block_on(weft::daemon::run(config))
        .map(|()| ExitCode::SUCCESS)
}

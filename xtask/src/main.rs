//! `cargo xtask`: the project's tasks, written in Rust so that they need
//! nothing but cargo (see the alias in `.cargo/config.toml`).

mod agent;
mod bench;
mod cmd;
mod deploy_tools;
mod fuzz;
mod python_venvs;
mod setup;
mod soak;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    bin_name = "cargo xtask",
    about = "Tasks for building, running and testing weft"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (Debian packages, BPF toolchain,
    /// bpf-linker); every step is skipped when already satisfied.
    Setup,
    /// Setup, then build the release agent (target/release/weft).
    Build,
    /// Build, then run `weft agent ARGS...` in the foreground (as root).
    Run {
        /// Arguments for `weft agent`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole test suite as CI runs it: setup, fmt, clippy, release
    /// build, then all tests including the root integration tests.
    Test(test::Options),
    /// The agent and the core root tests on Debian's 5.10, 6.1 and 6.12
    /// kernels in qemu (virtme-ng, emulated) and on the machine's 6.18.
    VmTest(vm::Options),
    /// Run every cargo-fuzz target (parsers, configuration, flow API
    /// requests) for a bounded time each; a crash fails and its input is
    /// kept as a regression test.
    Fuzz(fuzz::Options),
    /// Measure weft's cost against no instrumentation and against a
    /// sidecar proxy, side by side (as root); writes target/bench/latest.*.
    Bench(bench::Options),
    /// The soak alone for N minutes (default 60; CI runs 3 with the root
    /// tests): mixed traffic at a steady rate, the agent sampled every
    /// 10 s and judged; writes target/soak/ (JSON samples, summary, PNG).
    Soak(soak::Options),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup().map(drop),
        Task::Build => {
            let env = setup::setup()?;
            let bin = agent::build(&env)?;
            println!("[xtask] agent binary: {}", bin.display());
            Ok(())
        }
        Task::Run { args } => agent::run(&setup::setup()?, &args),
        Task::Test(options) => test::test(&options),
        Task::VmTest(options) => vm::vm_test(&options),
        Task::Bench(options) => bench::bench(&options),
        Task::Soak(options) => soak::soak(&options),
        Task::Fuzz(options) => fuzz::fuzz(&setup::setup()?, &options),
    }
}

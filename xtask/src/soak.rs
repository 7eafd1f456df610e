//! `cargo xtask soak --minutes N`: the soak (tests/tests/soak.rs) alone,
//! for N minutes: steady mixed traffic through a lab while the agent is
//! sampled every 10 s, then judged. CI runs the same test for 3 minutes
//! with the other root tests; this is the long run.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::cmd::{is_root, run, say, workspace_root};
use crate::setup;

#[derive(clap::Args)]
pub struct Options {
    /// How long the traffic runs, in minutes (fractions allowed).
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,
    /// Where the samples (samples.json), the summary (summary.json) and
    /// the plot (soak.png) go; default target/soak/.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn soak(options: &Options) -> Result<()> {
    if !options.minutes.is_finite() || options.minutes <= 0.0 {
        bail!("--minutes {}: a length above zero", options.minutes);
    }
    if !is_root()? {
        bail!(
            "the soak loads eBPF programs and creates network namespaces: \
             run `sudo -E cargo xtask soak`"
        );
    }
    let env = setup::setup()?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/soak"));
    let mut test = crate::test::root_tests(&env)?;
    test.args(["-p", "weft-tests", "--test", "soak", "--", "--nocapture"])
        .env("WEFT_SOAK_MINUTES", options.minutes.to_string())
        .env("WEFT_SOAK_OUT", &out);
    let result = run(&mut crate::test::on_a_fresh_node(&test));
    say(format_args!(
        "soak output in {}: samples.json (a sample every 10 s), summary.json, soak.png",
        out.display()
    ));
    result
}

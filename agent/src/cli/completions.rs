//! `weft completions SHELL` and `weft man DIR`: shell completion scripts
//! and man pages, generated from the clap definitions at run time so that
//! they always describe the binary that prints them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for. Load it with
    /// `source <(weft completions bash)`, or install it where the shell
    /// looks (bash: /usr/share/bash-completion/completions/weft, zsh: a
    /// `_weft` file on $fpath, fish: ~/.config/fish/completions/weft.fish).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells a script is printed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Writes the completion script of `command` (the whole `weft` CLI) for
/// `shell` to `out`.
pub fn write_completions(shell: Shell, mut command: clap::Command, out: &mut dyn Write) {
    let name = command.get_name().to_owned();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut command, name, out);
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The directory to write the pages into, created when missing:
    /// weft.1, and weft-COMMAND.1 for each command (view one with
    /// `man -l DIR/weft-flows.1`; the container image installs them in
    /// /usr/share/man/man1).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Writes a man page for `command` and for each of its visible
/// subcommands into `dir`, and returns the files written, in name order.
pub fn write_man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "1")
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name == "weft.1" || name.starts_with("weft-"))
        })
        .collect();
    pages.sort();
    Ok(pages)
}

/// `weft completions`: the script on standard output.
pub fn print_completions(args: &CompletionsArgs, command: clap::Command) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    write_completions(args.shell, command, &mut stdout);
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("weft")
            .version("1.0")
            .subcommand(
                clap::Command::new("flows")
                    .about("Show flows")
                    .arg(clap::Arg::new("port").long("port")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_commands_and_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            write_completions(shell, command(), &mut out);
            let script = String::from_utf8(out).expect("utf-8");
            assert!(script.contains("flows"), "{shell:?}: {script}");
            assert!(script.contains("port"), "{shell:?}: {script}");
        }
    }

    #[test]
    fn a_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("weft-man-{}", std::process::id()));
        let pages = write_man_pages(command(), &dir).expect("pages");
        let names: Vec<_> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["weft-flows.1", "weft.1"]);
        let flows = std::fs::read_to_string(&pages[0]).expect("read");
        assert!(flows.contains(".TH weft-flows 1"), "{flows}");
        assert!(flows.contains("\\-\\-port"), "{flows}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}

//! The CLI's discoverability: `weft completions` prints scripts that the
//! shells themselves load and complete from, and `weft man` writes pages
//! that man renders. Neither needs root or an agent.

use std::{path::Path, process::Command};

use weft_tests::agent::{weft, weft_bin};

/// `weft completions SHELL`, written to a file in `dir`.
fn script(shell: &str, dir: &Path) -> std::path::PathBuf {
    let out = weft(&["completions", shell]);
    assert!(
        out.status.success(),
        "weft completions {shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(format!("weft.{shell}"));
    std::fs::write(&path, &out.stdout).expect("write the script");
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `shell -c code` with the binary's directory first on PATH, and
/// returns its standard output.
fn in_shell(shell: &str, code: &str) -> String {
    let bin_dir = weft_bin().parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(shell)
        .args(["-c", code])
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("{shell} (installed by `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "{shell} -c {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn bash_completes_commands_and_flags() {
    let dir = temp_dir("bash");
    let script = script("bash", &dir);
    // What bash does on TAB: the words so far, then the function that
    // `complete -p weft` names, called with the command, the word being
    // completed and the word before it.
    let complete = |words: &str, cword: usize| {
        in_shell(
            "bash",
            &format!(
                "source {}; complete -p weft >/dev/null || exit 3; \
                 COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; \
                 COMP_POINT=${{#COMP_LINE}}; \
                 _weft weft \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ),
        )
    };
    let commands = complete("weft ''", 1);
    for command in [
        "agent",
        "flows",
        "top",
        "status",
        "services",
        "policies",
        "cleanup",
        "completions",
        "man",
    ] {
        assert!(
            commands.lines().any(|l| l == command),
            "{command} not offered:\n{commands}"
        );
    }
    let flags = complete("weft flows --pro", 2);
    assert!(
        flags.lines().any(|l| l == "--protocol"),
        "--protocol not offered:\n{flags}"
    );
    assert!(!flags.lines().any(|l| l == "--port"), "{flags}");
    let shells = complete("weft completions ''", 2);
    // The values, besides the flags that are always offered.
    let mut offered: Vec<&str> = shells.lines().filter(|l| !l.starts_with('-')).collect();
    offered.sort();
    assert_eq!(offered, ["bash", "fish", "zsh"]);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn fish_completes_commands_and_flags() {
    let dir = temp_dir("fish");
    let script = script("fish", &dir);
    let complete = |line: &str| {
        in_shell(
            "fish",
            &format!("source {}; complete -C '{line}'", script.display()),
        )
    };
    // fish prints a candidate a line, then a tab and its description.
    let first = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_owned())
            .collect()
    };
    let commands = first(&complete("weft "));
    for command in ["agent", "flows", "status", "completions", "man"] {
        assert!(
            commands.iter().any(|c| c == command),
            "{command}: {commands:?}"
        );
    }
    let flags = first(&complete("weft flows --pro"));
    assert!(flags.iter().any(|f| f == "--protocol"), "{flags:?}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn zsh_loads_the_completion_function() {
    let dir = temp_dir("zsh");
    let script = script("zsh", &dir);
    // A `_weft` file on $fpath is how zsh installs it; compinit then binds
    // it to the command.
    std::fs::rename(&script, dir.join("_weft")).expect("rename");
    let bound = in_shell(
        "zsh",
        &format!(
            "fpath=({} $fpath); autoload -Uz compinit; compinit -u -D; \
             print -r -- $_comps[weft]; autoload -Uz +X _weft && print loaded",
            dir.display()
        ),
    );
    assert_eq!(bound.lines().collect::<Vec<_>>(), ["_weft", "loaded"]);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn man_pages_render_for_every_command() {
    let dir = temp_dir("man");
    let out = weft(&["man", dir.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "weft man: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(out.stdout).expect("utf-8");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "weft-agent.1",
            "weft-cleanup.1",
            "weft-completions.1",
            "weft-flows.1",
            "weft-man.1",
            "weft-policies.1",
            "weft-services.1",
            "weft-status.1",
            "weft-top.1",
            "weft.1",
        ]
    );
    assert_eq!(listed.lines().count(), pages.len(), "{listed}");
    // man renders each without a complaint from groff.
    for page in &pages {
        let path = dir.join(page);
        let rendered = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man");
        assert!(rendered.status.success(), "man -l {page}");
        let warnings = String::from_utf8_lossy(&rendered.stderr);
        assert!(warnings.trim().is_empty(), "{page}: {warnings}");
    }
    let flows = Command::new("man")
        .arg("-l")
        .arg(dir.join("weft-flows.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "200")
        .output()
        .expect("man");
    let text = String::from_utf8_lossy(&flows.stdout);
    for expected in ["weft-flows", "--protocol", "--port", "--api-socket"] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

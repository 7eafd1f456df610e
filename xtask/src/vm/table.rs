//! The kernel table of docs/kernels.md, made from what the matrix found:
//! for each kernel, the agent's own `weft status` (programs loaded,
//! programs the kernel refused, features off or replaced) and the core
//! tests' counts.
//!
//! The table sits in docs/kernels.md between two markers; `cargo xtask
//! vm-test` prints it, says whether the page's copy matches, and with
//! `--update-docs` writes it there.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::guest;

pub const BEGIN: &str = "<!-- kernel-table: written by `cargo xtask vm-test --update-docs` -->";
pub const END: &str = "<!-- end of kernel-table -->";

const HEADER: &str = "| kernel | programs loaded | refused by the kernel (fallback) | off or replaced | core tests passed |\n\
                      | --- | --- | --- | --- | --- |\n";

/// One kernel's row, from `results/<kernel>/`; `None` when the agent
/// never wrote its status there.
pub fn row(out: &Path) -> Option<String> {
    let status: Value =
        serde_json::from_slice(&fs::read(out.join("agent-status.json")).ok()?).ok()?;
    let verdict = guest::verdict(out);
    let names = |key: &str| -> Vec<String> {
        status[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let loaded = names("programs");
    let refused: Vec<String> = names("failed_programs")
        .into_iter()
        .map(|name| {
            // A refused program's fallback is loaded under its name plus a
            // suffix (`weft_udp_egress` -> `weft_udp_egress_anon`).
            let prefix = format!("{name}_");
            match loaded.iter().find(|l| l.starts_with(&prefix)) {
                Some(fallback) => format!("`{name}` (`{fallback}`)"),
                None => format!("`{name}`"),
            }
        })
        .collect();
    let off: Vec<String> = status["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["available"] == false)
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect();
    let tests: Vec<String> = verdict
        .counts
        .iter()
        .map(|(name, passed, failed)| format!("{name} {passed}/{}", passed + failed))
        .collect();
    let or_none = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    Some(format!(
        "| {} | {} | {} | {} | {} |\n",
        status["kernel"].as_str().unwrap_or("?"),
        loaded.len(),
        or_none(refused),
        or_none(off),
        or_none(tests),
    ))
}

/// The whole table: a row for each of `series` (in that order), made from
/// `results/` for the kernels this run tested (`ran`), kept from
/// `previous` (the table of docs/kernels.md) for the others.
pub fn table(results: &Path, series: &[&str], ran: &[&str], previous: Option<&str>) -> String {
    let mut t = HEADER.to_owned();
    for k in series {
        if ran.contains(k) {
            match row(&results.join(k)) {
                Some(r) => t.push_str(&r),
                None => t.push_str(&format!("| {k} | agent did not start | | | |\n")),
            }
        } else if let Some(r) = previous.and_then(|p| previous_row(p, k)) {
            t.push_str(r);
            t.push('\n');
        }
    }
    t
}

/// The row of kernel series `series` ("6.1") in a table: its first cell is
/// that release ("6.1.0-57-amd64") or the series itself.
fn previous_row<'a>(table: &'a str, series: &str) -> Option<&'a str> {
    table.lines().find(|line| {
        let first = line
            .trim_start_matches('|')
            .split('|')
            .next()
            .unwrap_or("")
            .trim();
        first == series || first.starts_with(&format!("{series}."))
    })
}

/// Where the table's text lies in `page`: after the begin marker, up
/// to the end marker.
fn bounds(page: &str) -> Option<(usize, usize)> {
    let start = page.find(BEGIN)? + BEGIN.len();
    let end = page[start..].find(END)? + start;
    Some((start, end))
}

/// The table in `page` (docs/kernels.md), between the markers.
pub fn in_page(page: &str) -> Option<&str> {
    let (start, end) = bounds(page)?;
    Some(page[start..end].trim_matches('\n'))
}

/// `page` with its table replaced by `table`.
pub fn replace_in(page: &str, table: &str) -> Result<String> {
    let (start, end) =
        bounds(page).context("docs/kernels.md has no kernel-table markers (begin and end)")?;
    Ok(format!(
        "{}\n{}\n{}",
        &page[..start],
        table.trim_matches('\n'),
        &page[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_from_a_guests_files() {
        let dir = std::env::temp_dir().join(format!("weft-vm-table-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("6.1")).unwrap();
        fs::write(
            dir.join("6.1/agent-status.json"),
            r#"{"kernel":"6.1.0-57-amd64",
                "programs":[{"name":"weft_tcp_state"},{"name":"weft_udp_egress_anon"}],
                "failed_programs":[{"name":"weft_udp_egress"}],
                "features":[{"name":"kernel BTF","available":true},
                            {"name":"smoothed RTT","available":false}]}"#,
        )
        .unwrap();
        fs::write(
            dir.join("6.1/status"),
            "kernel 6.1.0-57-amd64\nagent started\ntest tcp 101 5 1\ntest udp 0 2 0\ndone\n",
        )
        .unwrap();
        let previous = format!("{HEADER}| 6.12.118 | 30 | none | none | tcp 6/6 |\n");
        let series = ["5.10", "6.1", "6.12", "6.18"];
        let t = table(&dir, &series, &["6.1", "5.10"], Some(&previous));
        assert_eq!(
            t,
            format!(
                "{HEADER}| 5.10 | agent did not start | | | |\n\
                 | 6.1.0-57-amd64 | 2 | `weft_udp_egress` (`weft_udp_egress_anon`) \
                 | smoothed RTT | tcp 5/6, udp 2/2 |\n\
                 | 6.12.118 | 30 | none | none | tcp 6/6 |\n"
            ),
            "6.12 kept from the previous table, 6.18 in neither"
        );
        let page = format!("intro\n{BEGIN}\nold\n{END}\nrest\n");
        let updated = replace_in(&page, &t).unwrap();
        assert_eq!(in_page(&updated), Some(t.trim_end()));
        assert!(updated.starts_with("intro\n") && updated.ends_with(&format!("{END}\nrest\n")));
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! The soak's samples drawn as one PNG with gnuplot (Debian's
//! `gnuplot-nox`, installed by `cargo xtask setup`): the agent's resident
//! memory, descriptors and threads, metric series, kernel map fill, lost
//! events and the traffic, over the run's minutes.

use std::{fmt::Write as _, path::Path};

use super::{sample::Sample, verdict::Summary};

/// Writes `samples.tsv` and `soak.gp` into `dir` and draws `soak.png`.
pub fn draw(dir: &Path, samples: &[Sample], summary: &Summary) -> Result<(), String> {
    let maps: Vec<&String> = samples
        .first()
        .map(|s| s.maps.keys().collect())
        .unwrap_or_default();
    std::fs::write(dir.join("samples.tsv"), table(samples, &maps))
        .map_err(|e| format!("samples.tsv: {e}"))?;
    std::fs::write(dir.join("soak.gp"), script(summary, &maps))
        .map_err(|e| format!("soak.gp: {e}"))?;
    crate::peer::require_program("gnuplot");
    let out = std::process::Command::new("gnuplot")
        .arg("soak.gp")
        .current_dir(dir)
        .output()
        .map_err(|e| format!("gnuplot: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "gnuplot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// One row per sample: minutes, RSS (MiB), fds, threads, series, events
/// lost, connections and paths (thousands), then each map's fill (%).
fn table(samples: &[Sample], maps: &[&String]) -> String {
    let mut text = String::new();
    for s in samples {
        let thousands = |name: &str| s.traffic.get(name).copied().unwrap_or(0) as f64 / 1000.0;
        let _ = write!(
            text,
            "{:.3}\t{:.2}\t{}\t{}\t{}\t{}\t{:.3}\t{:.3}",
            s.t_s / 60.0,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.tasks,
            s.series,
            s.lost,
            thousands("tcp_connections"),
            thousands("distinct_paths"),
        );
        for map in maps {
            let percent = s.maps.get(*map).map_or(0.0, |f| f.percent());
            let _ = write!(text, "\t{percent:.3}");
        }
        text.push('\n');
    }
    text
}

fn script(summary: &Summary, maps: &[&String]) -> String {
    let warm_min = summary.warm_up_s / 60.0;
    let rss_limit = summary.rss_kib.warm as f64 / 1024.0 * (1.0 + super::verdict::RSS_GROWTH);
    let verdict = if summary.failures.is_empty() {
        "passed"
    } else {
        "FAILED"
    };
    let map_lines: Vec<String> = maps
        .iter()
        .enumerate()
        .map(|(i, name)| format!("'samples.tsv' using 1:{} with lines title '{name}'", 9 + i))
        .collect();
    format!(
        r#"set terminal pngcairo size 1500,900 font "DejaVu Sans,10"
set output 'soak.png'
# Map names hold underscores: plain text, not subscripts.
set termoption noenhanced
set datafile separator "\t"
set multiplot layout 2,3 title "weft soak: {minutes:.0} minutes, {connections} TCP connections, {paths} distinct URL paths, {lost} events lost ({verdict})"
set xlabel 'minutes'
set grid
set key top left
set arrow 1 from {warm_min},graph 0 to {warm_min},graph 1 nohead dashtype 2 lc rgb 'gray40'
set title 'agent resident memory (MiB); dashed: end of warm-up, +10 %'
set yrange [0:*]
plot 'samples.tsv' using 1:2 with linespoints pt 7 ps 0.4 title 'RSS', {rss_limit} with lines dashtype 2 lc rgb 'red' title '+10 % of warm-up'
set title 'agent open descriptors and threads'
plot 'samples.tsv' using 1:3 with linespoints pt 7 ps 0.4 title 'fds', '' using 1:4 with linespoints pt 7 ps 0.4 title 'threads'
set title 'metric series (/metrics sample lines)'
plot 'samples.tsv' using 1:5 with linespoints pt 7 ps 0.4 title 'series'
set title 'kernel map fill (% of capacity)'
set yrange [0:*]
plot {map_lines}
set title 'events lost (all sources and stages)'
set yrange [0:1<*]
plot 'samples.tsv' using 1:6 with linespoints pt 7 ps 0.4 title 'lost'
set title 'traffic so far (thousands)'
plot 'samples.tsv' using 1:7 with lines title 'TCP connections', '' using 1:8 with lines title 'distinct URL paths'
unset multiplot
"#,
        minutes = summary.minutes,
        connections = summary.traffic.get("tcp_connections").copied().unwrap_or(0),
        paths = summary.traffic.get("distinct_paths").copied().unwrap_or(0),
        lost = summary.lost,
        map_lines = map_lines.join(", "),
    )
}

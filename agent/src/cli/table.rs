//! Plain-text tables and the cell formats the client commands share
//! (sizes, durations, clock times). No colours or borders: the output must
//! stay readable in a pipe and easy to `grep`/`awk`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Gap between columns.
const GAP: &str = "  ";

/// Rows rendered with each column as wide as its widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The widest cell of each column, header included.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(width(cell)),
                    None => widths.push(width(cell)),
                }
            }
        }
        widths
    }

    /// The header and rows, one line each, every line ending in `\n`.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = line(&self.header, &widths);
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row, &widths));
            out.push('\n');
        }
        out
    }
}

/// One line of cells, each padded to its column's width (a longer cell
/// pushes the rest right rather than being cut). Trailing spaces are
/// trimmed.
pub fn line<S: AsRef<str>>(cells: &[S], widths: &[usize]) -> String {
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push_str(GAP);
        }
        let cell = cell.as_ref();
        out.push_str(cell);
        let pad = widths
            .get(i)
            .copied()
            .unwrap_or(0)
            .saturating_sub(width(cell));
        out.extend(std::iter::repeat_n(' ', pad));
    }
    out.truncate(out.trim_end().len());
    out
}

/// Display width, counting characters (good enough for names and
/// addresses; no East-Asian wide characters expected).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// Bytes in binary units: `512B`, `1.5KiB`, `976.6MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1}{unit}")
}

/// A duration in microseconds at a precision that suits its size:
/// `830µs`, `1.83ms`, `2.50s`, `3m12s`, `2h05m`.
pub fn human_duration_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        1_000_000..60_000_000 => format!("{:.2}s", us as f64 / 1e6),
        _ => {
            let secs = us / 1_000_000;
            let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
            if h > 0 {
                format!("{h}h{m:02}m")
            } else {
                format!("{m}m{s:02}s")
            }
        }
    }
}

/// Milliseconds with two decimals (`0.04ms`), for round-trip times.
pub fn millis_us(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1e3)
}

/// The local wall-clock time of day, `HH:MM:SS.mmm`, as people read logs.
/// `None` if the time cannot be converted.
pub fn local_clock(time: SystemTime) -> Option<String> {
    let since_epoch = time.duration_since(UNIX_EPOCH).ok()?;
    let (h, m, s) = local_hms(since_epoch)?;
    Some(format!(
        "{h:02}:{m:02}:{s:02}.{:03}",
        since_epoch.subsec_millis()
    ))
}

/// Hours, minutes and seconds in the local time zone, from the C library,
/// which knows the zone database and `TZ` (std does not).
fn local_hms(since_epoch: Duration) -> Option<(i32, i32, i32)> {
    let secs = libc::time_t::try_from(since_epoch.as_secs()).ok()?;
    // SAFETY: `libc::tm` is plain integers plus a `tm_zone` pointer, for all
    // of which zero is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the
    // thread-safe variant that writes only into `tm`.
    let result = unsafe { libc::localtime_r(&secs, &mut tm) };
    if result.is_null() {
        return None;
    }
    Some((tm.tm_hour, tm.tm_min, tm.tm_sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["NAME", "N"]);
        t.push(vec!["a".into(), "1".into()]);
        t.push(vec!["longer".into(), "22".into()]);
        assert_eq!(t.render(), "NAME    N\na       1\nlonger  22\n");
    }

    #[test]
    fn line_pads_and_trims() {
        assert_eq!(line(&["a", "b", ""], &[3, 3, 3]), "a    b");
        assert_eq!(line(&["toolong", "x"], &[3, 1]), "toolong  x");
    }

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(1_000_000), "976.6KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0EiB");
    }

    #[test]
    fn durations_by_magnitude() {
        assert_eq!(human_duration_us(830), "830µs");
        assert_eq!(human_duration_us(1830), "1.83ms");
        assert_eq!(human_duration_us(2_500_000), "2.50s");
        assert_eq!(human_duration_us(192_000_000), "3m12s");
        assert_eq!(human_duration_us(7_500_000_000), "2h05m");
        assert_eq!(millis_us(41), "0.04ms");
    }

    #[test]
    fn local_clock_has_millisecond_precision() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let clock = local_clock(t).unwrap();
        assert_eq!(clock.len(), "HH:MM:SS.mmm".len(), "{clock}");
        assert!(clock.ends_with(":20.123"), "{clock}");
    }
}

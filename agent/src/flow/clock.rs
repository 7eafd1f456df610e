//! Kernel timestamps (CLOCK_MONOTONIC, from bpf_ktime_get_ns) to wall-clock
//! time for records.

use std::time::{Duration, SystemTime};

/// Now on CLOCK_MONOTONIC, in nanoseconds, the clock of bpf_ktime_get_ns.
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time of a monotonic timestamp.
pub fn wall_time(mono_ns: u64) -> SystemTime {
    let now_mono = mono_now_ns();
    let now_wall = SystemTime::now();
    if mono_ns <= now_mono {
        now_wall - Duration::from_nanos(now_mono - mono_ns)
    } else {
        now_wall + Duration::from_nanos(mono_ns - now_mono)
    }
}

/// RFC 3339 in UTC with nanoseconds, as in flow records.
pub fn rfc3339(mono_ns: u64) -> String {
    humantime::format_rfc3339_nanos(wall_time(mono_ns)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_now() {
        let now = mono_now_ns();
        let wall = wall_time(now);
        let diff = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(diff < Duration::from_secs(1));
        assert!(rfc3339(now).ends_with('Z'));
    }
}

//! A steady rate until a deadline: the soak's clients take one tick per
//! request, so the load stays the same for the whole run.

use std::time::{Duration, Instant};

/// Ticks `rate` times a second until `deadline`. A client that fell
/// more than a second behind (a stalled machine) starts again from now
/// rather than bursting to catch up: the soak measures a steady rate.
pub struct Pace {
    interval: Duration,
    next: Instant,
    deadline: Instant,
}

impl Pace {
    pub fn per_second(rate: f64, deadline: Instant) -> Self {
        assert!(rate > 0.0, "a rate above zero");
        Self {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Instant::now(),
            deadline,
        }
    }
}

impl Iterator for Pace {
    type Item = ();

    fn next(&mut self) -> Option<()> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        if self.next > now {
            std::thread::sleep((self.next - now).min(self.deadline - now));
            if Instant::now() >= self.deadline {
                return None;
            }
        } else if now - self.next > Duration::from_secs(1) {
            self.next = now;
        }
        self.next += self.interval;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_at_the_rate_until_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(300);
        let ticks = Pace::per_second(50.0, deadline).count();
        // 15 ticks in 300 ms, give or take the scheduler.
        assert!((12..=16).contains(&ticks), "{ticks} ticks");
        assert!(Instant::now() >= deadline);
    }
}

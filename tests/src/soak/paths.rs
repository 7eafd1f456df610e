//! Distinct URL paths: every HTTP request of the soak asks for a path no
//! other request asked for, in shapes whose identifiers the agent's route
//! templating turns into `{id}`, so that `http_route` (a metric label)
//! stays a handful of values however many paths there are.

use std::sync::atomic::{AtomicU64, Ordering};

/// The routes the paths template to (what `http_route` may hold).
pub const ROUTES: &[&str] = &[
    "/users/{id}",
    "/users/{id}/orders/{id}",
    "/catalog/items/{id}",
    "/files/{id}",
    "/sessions/{id}",
    "/legacy/{id}",
];

/// The prefix the servers answer 404 for (a route that always fails).
pub const NOT_FOUND_PREFIX: &str = "/legacy/";

/// Hands out distinct paths, from any thread.
#[derive(Default)]
pub struct Paths {
    next: AtomicU64,
}

impl Paths {
    pub fn next(&self) -> String {
        path(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// How many paths were handed out, all distinct.
    pub fn handed_out(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// Path number `n`: a different path for every `n`, one in ten of them
/// under [`NOT_FOUND_PREFIX`].
pub fn path(n: u64) -> String {
    // Spreads n over 64 bits, so the hex identifiers look like hashes.
    let h = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    match n % 10 {
        0..=2 => format!("/users/{n}"),
        3 | 4 => format!("/users/{}/orders/{h:016x}", n % 5000),
        5 | 6 => format!("/catalog/items/{n}?ref=soak"),
        7 => format!(
            "/files/{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xfff,
            (h >> 4) & 0xfff,
            n
        ),
        8 => format!("/sessions/tok{n:020}"),
        _ => format!("{NOT_FOUND_PREFIX}{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..20_000 {
            let p = path(n);
            let bare = p.split('?').next().unwrap_or_default().to_owned();
            assert!(seen.insert(bare), "{p} twice");
        }
    }
}

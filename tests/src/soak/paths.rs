//! Distinct URL paths: every HTTP request of the soak asks for a path no
//! other request asked for, in shapes whose identifiers the agent's route
//! templating turns into `{id}`, so that `http_route` (a metric label)
//! stays a handful of values however many paths there are.
//!
//! Each client walks the shapes in turn (its own [`Lane`]), so that every
//! client asks for every route, and meets both statuses, within its first
//! ten requests: every (client, route, status) series exists long before
//! warm-up ends. A single sequence shared by all clients would let a
//! client's share of it fall on the same shapes for minutes (the clients
//! take turns at steady rates), and a series first seen late looks like
//! growth.

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

/// Shapes of path, in the order a lane walks them.
pub const SHAPES: u64 = 10;

/// Hands out the identifiers that make paths distinct, from any thread.
#[derive(Default)]
pub struct Paths {
    next: AtomicU64,
}

impl Paths {
    /// A client's own walk through the shapes.
    pub fn lane(&self) -> Lane<'_> {
        Lane {
            paths: self,
            taken: 0,
        }
    }

    /// How many paths were handed out, all distinct.
    pub fn handed_out(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// One client's paths: shape after shape, each with an identifier no other
/// path has.
pub struct Lane<'a> {
    paths: &'a Paths,
    taken: u64,
}

impl Lane<'_> {
    pub fn next_path(&mut self) -> String {
        let n = self.paths.next.fetch_add(1, Ordering::Relaxed);
        let shape = self.taken % SHAPES;
        self.taken += 1;
        path(shape, n)
    }
}

/// The path of shape `shape` (below [`SHAPES`]) with identifier `n`:
/// distinct for every `n`; shape 9 is under [`NOT_FOUND_PREFIX`].
pub fn path(shape: u64, n: u64) -> String {
    // Spreads n over 64 bits, so the hex identifiers look like hashes.
    let h = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    match shape {
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
        let paths = Paths::default();
        let mut lanes = [paths.lane(), paths.lane(), paths.lane()];
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            // Lanes taking turns unevenly, as clients at different rates.
            let lane = &mut lanes[(i * i) % 3];
            let p = lane.next_path();
            let bare = p.split('?').next().unwrap_or_default().to_owned();
            assert!(seen.insert(bare), "{p} twice");
        }
        assert_eq!(paths.handed_out(), 20_000);
    }

    #[test]
    fn a_lane_asks_for_every_route_within_its_first_ten_paths() {
        let paths = Paths::default();
        // Another client's paths before this one's change nothing.
        let mut other = paths.lane();
        for _ in 0..7 {
            other.next_path();
        }
        let mut lane = paths.lane();
        let first: Vec<String> = (0..SHAPES).map(|_| lane.next_path()).collect();
        for route in ROUTES {
            let prefix = route.split("{id}").next().unwrap_or_default();
            assert!(
                first.iter().any(|p| p.starts_with(prefix)),
                "{route} not among {first:?}"
            );
        }
        assert_eq!(
            first
                .iter()
                .filter(|p| p.starts_with(NOT_FOUND_PREFIX))
                .count(),
            1
        );
    }
}

//! The flow store: the recent flow records `weft flows` reads, and the live
//! feed `weft flows -f` follows.
//!
//! A bounded ring keeps memory fixed whatever the traffic: when full, the
//! oldest record goes and is counted as `evicted` (shown by `weft status`).
//! Followers get new records through a bounded broadcast channel; a follower
//! that falls behind loses the oldest unread records instead of slowing the
//! flow table down, and is told how many it missed.
//!
//! `--since`: each entry carries the monotonic [`Instant`] at which it was
//! stored. Comparing the record's RFC 3339 `time` would mean parsing a string
//! per record, and its kernel `mono_ns` depends on which clock the producer
//! used; the store's own stamp is cheap, immune to wall-clock steps, and
//! sorted (entries are appended in order), so the cutoff is a binary search.
//! It lags the event by the pipeline's latency (milliseconds), which is far
//! below the resolution anyone asks `--since` for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::broadcast;

use crate::flow::filter::FlowFilter;
use crate::flow::record::FlowRecord;
use crate::flow::top::Observed;
use crate::status::TableStatus;

/// How many live records a follower may fall behind before it loses some.
/// Entries are `Arc`s, so this costs little memory; it absorbs bursts while a
/// client writes to a slow terminal.
pub const FOLLOWER_BUFFER: usize = 8192;

/// One stored record and when it was stored.
struct Entry {
    stored_at: Instant,
    record: Arc<FlowRecord>,
}

/// The ring and its counter, under one lock.
struct Ring {
    entries: VecDeque<Entry>,
    evicted: u64,
    /// When the newest evicted record was stored: records from before
    /// then may be missing from a window (`weft top`).
    last_evicted: Option<Instant>,
}

/// Recent flow records plus a live feed; share it as `Arc<FlowStore>`
/// between the task that pushes and the API that reads.
pub struct FlowStore {
    capacity: usize,
    created: Instant,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<FlowRecord>>,
    follower_lost: AtomicU64,
}

impl FlowStore {
    /// A store keeping at most `capacity` records. With `capacity == 0` it
    /// keeps none, and only feeds followers.
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(FOLLOWER_BUFFER);
        Self {
            capacity,
            created: Instant::now(),
            // Allocate lazily: a large configured capacity costs nothing
            // until traffic fills it.
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                evicted: 0,
                last_evicted: None,
            }),
            live,
            follower_lost: AtomicU64::new(0),
        }
    }

    /// The ring is consistent after every statement that mutates it, so a
    /// panic elsewhere while holding the lock leaves nothing half-done:
    /// recover from poisoning instead of propagating the panic.
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores a record (dropping the oldest when full) and hands it to the
    /// followers.
    pub fn push(&self, record: FlowRecord) {
        self.push_at(record, Instant::now());
    }

    fn push_at(&self, record: FlowRecord, stored_at: Instant) {
        let record = Arc::new(record);
        let mut ring = self.lock();
        if self.capacity > 0 {
            if ring.entries.len() >= self.capacity {
                if let Some(oldest) = ring.entries.pop_front() {
                    ring.last_evicted = Some(oldest.stored_at);
                }
                ring.evicted += 1;
            }
            ring.entries.push_back(Entry {
                stored_at,
                record: Arc::clone(&record),
            });
        }
        // Sent under the lock, so that `query_and_subscribe` sees each record
        // either in the ring or on the channel, never both nor neither. An
        // error only means that nobody follows right now.
        let _ = self.live.send(record);
    }

    /// Stored records matching `filter` and `range`, oldest first.
    pub fn query(&self, filter: &FlowFilter, range: Range) -> Vec<Arc<FlowRecord>> {
        let ring = self.lock();
        select(&ring, filter, range)
    }

    /// The records `weft top` computes a window from: those matching
    /// `filter` stored since `window_from` (the window), and those stored
    /// between `lookback_from` and then (the running figures' bases), each
    /// in the order they were stored.
    pub fn window(
        &self,
        filter: &FlowFilter,
        lookback_from: Instant,
        window_from: Instant,
    ) -> Window {
        let ring = self.lock();
        let matching = |from: Instant, to: Option<Instant>| -> Vec<Arc<FlowRecord>> {
            let start = ring.entries.partition_point(|e| e.stored_at < from);
            let end = to.map_or(ring.entries.len(), |to| {
                ring.entries.partition_point(|e| e.stored_at < to)
            });
            ring.entries
                .range(start..end.max(start))
                .filter(|e| filter.matches(&e.record))
                .map(|e| Arc::clone(&e.record))
                .collect()
        };
        let observed = Observed {
            earlier: matching(lookback_from, Some(window_from)),
            window: matching(window_from, None),
        };
        let complete = ring.last_evicted.is_none_or(|at| at < window_from);
        let covered_from = [Some(window_from), Some(self.created), ring.last_evicted]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(window_from);
        Window {
            observed,
            covered_from,
            complete,
        }
    }

    /// An instant before every record this store holds or will hold.
    pub fn before_first(&self) -> Instant {
        self.created
            .checked_sub(std::time::Duration::from_nanos(1))
            .unwrap_or(self.created)
    }

    /// A receiver of every record pushed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FlowRecord>> {
        self.live.subscribe()
    }

    /// [`query`](Self::query) and [`subscribe`](Self::subscribe) at one
    /// instant: every record is in exactly one of the two, so a follower
    /// neither misses nor repeats records pushed meanwhile.
    pub fn query_and_subscribe(
        &self,
        filter: &FlowFilter,
        range: Range,
    ) -> (Vec<Arc<FlowRecord>>, broadcast::Receiver<Arc<FlowRecord>>) {
        let ring = self.lock();
        let records = select(&ring, filter, range);
        (records, self.live.subscribe())
    }

    /// Counts live records a follower missed because it fell behind.
    pub fn record_follower_lost(&self, missed: u64) {
        self.follower_lost.fetch_add(missed, Ordering::Relaxed);
    }

    /// Live records followers missed so far, over all followers; for the
    /// agent's loss counters (stage: the API's follower queue).
    pub fn follower_lost(&self) -> u64 {
        self.follower_lost.load(Ordering::Relaxed)
    }

    /// Fill and evictions, for `weft status`.
    pub fn stats(&self) -> TableStatus {
        let ring = self.lock();
        TableStatus {
            entries: ring.entries.len() as u64,
            capacity: self.capacity as u64,
            evicted: ring.evicted,
        }
    }
}

/// The records of a `weft top` window, and how much of it the store
/// covers.
pub struct Window {
    pub observed: Observed,
    /// The start of what the store covers: the window's start, or later
    /// when the agent started later or records of the window were evicted.
    pub covered_from: Instant,
    /// Whether no record of the window was evicted.
    pub complete: bool,
}

/// Which of the stored records a query wants, besides its filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// Only those stored at or after this instant.
    pub since: Option<Instant>,
    /// Only those stored at or before this instant.
    pub until: Option<Instant>,
    /// Then only the newest `last` ...
    pub last: Option<usize>,
    /// ... or the oldest `first`.
    pub first: Option<usize>,
}

/// The selection behind [`FlowStore::query`], in time order.
///
/// Records are stored as they are written, which is not the order of
/// their `time`: an L7 record is written when its response completes but
/// dated by its request, an `open` once its other end is known but dated
/// by the establishment. A listing comes in time order, and `last` keeps
/// the newest by time.
fn select(ring: &Ring, filter: &FlowFilter, range: Range) -> Vec<Arc<FlowRecord>> {
    let start = range.since.map_or(0, |cutoff| {
        ring.entries.partition_point(|e| e.stored_at < cutoff)
    });
    let end = range.until.map_or(ring.entries.len(), |cutoff| {
        ring.entries.partition_point(|e| e.stored_at <= cutoff)
    });
    let mut records: Vec<Arc<FlowRecord>> = ring
        .entries
        .range(start..end.max(start))
        .filter(|e| filter.matches(&e.record))
        .map(|e| Arc::clone(&e.record))
        .collect();
    // Stable: records of one instant stay in the order they were written.
    records.sort_by_key(|r| r.mono_ns);
    if let Some(last) = range.last {
        records.drain(..records.len().saturating_sub(last));
    }
    if let Some(first) = range.first {
        records.truncate(first);
    }
    records
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::flow::filter::test_support::tcp_record;

    /// A record told apart by its source port.
    fn record(port: u16) -> FlowRecord {
        let mut r = tcp_record();
        r.source.port = port;
        r
    }

    fn ports(records: &[Arc<FlowRecord>]) -> Vec<u16> {
        records.iter().map(|r| r.source.port).collect()
    }

    #[test]
    fn keeps_capacity_and_counts_evictions() {
        let store = FlowStore::new(3);
        for port in 1..=5 {
            store.push(record(port));
        }
        assert_eq!(
            store.stats(),
            TableStatus {
                entries: 3,
                capacity: 3,
                evicted: 2
            }
        );
        let all = store.query(&FlowFilter::default(), Range::default());
        assert_eq!(ports(&all), [3, 4, 5], "oldest first, oldest evicted");
    }

    #[test]
    fn a_window_says_when_evictions_cut_into_it() {
        let store = FlowStore::new(3);
        let t0 = store.created;
        let at = |s: u64| t0 + Duration::from_secs(s);
        for port in 1..=3 {
            store.push_at(record(port), at(u64::from(port)));
        }
        let all = FlowFilter::default();
        let w = store.window(&all, at(0), at(2));
        assert_eq!(ports(&w.observed.earlier), [1]);
        assert_eq!(ports(&w.observed.window), [2, 3]);
        assert!(w.complete);
        assert_eq!(w.covered_from, at(2));
        // Two more: records 1 and 2 (stored at 1 s and 2 s) are evicted,
        // and a window from 2 s lost one of its own.
        store.push_at(record(4), at(4));
        store.push_at(record(5), at(5));
        let w = store.window(&all, at(0), at(2));
        assert_eq!(ports(&w.observed.window), [3, 4, 5]);
        assert!(!w.complete);
        assert_eq!(w.covered_from, at(2));
        let w = store.window(&all, at(0), at(3));
        assert!(w.complete, "what was evicted was older than the window");
    }

    #[test]
    fn zero_capacity_keeps_nothing_but_feeds_followers() {
        let store = FlowStore::new(0);
        let mut rx = store.subscribe();
        store.push(record(1));
        assert!(
            store
                .query(&FlowFilter::default(), Range::default())
                .is_empty()
        );
        assert_eq!(store.stats().evicted, 0);
        assert_eq!(rx.try_recv().unwrap().source.port, 1);
    }

    fn last(n: usize) -> Range {
        Range {
            last: Some(n),
            ..Range::default()
        }
    }

    #[test]
    fn last_keeps_the_newest_matching() {
        let store = FlowStore::new(10);
        for port in 1..=6 {
            store.push(record(port));
        }
        let last2 = store.query(&FlowFilter::default(), last(2));
        assert_eq!(ports(&last2), [5, 6]);

        let mut odd = FlowFilter::default();
        for p in ["1", "3", "5"] {
            odd.add_port(p).unwrap();
        }
        assert_eq!(ports(&store.query(&odd, last(2))), [3, 5]);
        assert_eq!(ports(&store.query(&odd, Range::default())), [1, 3, 5]);
        assert_eq!(ports(&store.query(&odd, last(0))), [] as [u16; 0]);
    }

    #[test]
    fn since_drops_older_entries() {
        let store = FlowStore::new(10);
        let t0 = Instant::now();
        for (i, port) in (1..=4).enumerate() {
            store.push_at(record(port), t0 + Duration::from_secs(i as u64 * 10));
        }
        let since = |secs| Range {
            since: Some(t0 + Duration::from_secs(secs)),
            ..Range::default()
        };
        let all = FlowFilter::default();
        assert_eq!(ports(&store.query(&all, since(10))), [2, 3, 4]);
        assert_eq!(ports(&store.query(&all, since(11))), [3, 4]);
        assert_eq!(
            ports(&store.query(
                &all,
                Range {
                    last: Some(1),
                    ..since(10)
                }
            )),
            [4]
        );
        assert!(store.query(&all, since(31)).is_empty());
        // `until` keeps those stored at or before it; `first` the oldest.
        let until = |secs| Range {
            until: Some(t0 + Duration::from_secs(secs)),
            ..Range::default()
        };
        assert_eq!(ports(&store.query(&all, until(10))), [1, 2]);
        assert_eq!(ports(&store.query(&all, until(9))), [1]);
        let window = Range {
            until: Some(t0 + Duration::from_secs(20)),
            ..since(10)
        };
        assert_eq!(ports(&store.query(&all, window)), [2, 3]);
        let first = Range {
            first: Some(2),
            ..since(10)
        };
        assert_eq!(ports(&store.query(&all, first)), [2, 3]);
        // An empty window, until before since: nothing, no panic.
        let backwards = Range {
            until: Some(t0),
            ..since(20)
        };
        assert!(store.query(&all, backwards).is_empty());
    }

    #[test]
    fn query_and_subscribe_splits_old_and_new() {
        let store = FlowStore::new(10);
        store.push(record(1));
        let (old, mut rx) = store.query_and_subscribe(&FlowFilter::default(), Range::default());
        store.push(record(2));
        assert_eq!(ports(&old), [1]);
        assert_eq!(rx.try_recv().unwrap().source.port, 2);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn lagging_follower_is_told_how_many_it_missed() {
        let store = FlowStore::new(1);
        let mut rx = store.subscribe();
        let extra = 5;
        for port in 0..(FOLLOWER_BUFFER + extra) {
            store.push(record(port as u16));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, extra as u64),
            other => panic!("expected a lag notice, got {other:?}"),
        }
        store.record_follower_lost(extra as u64);
        assert_eq!(store.follower_lost(), extra as u64);
    }

    /// Written out of time order (an L7 record after the close that
    /// followed its request): listed in time order, and `last` keeps the
    /// newest by time, not the last written.
    #[test]
    fn listed_in_time_order() {
        let store = FlowStore::new(10);
        for (port, mono_ns) in [(1, 100), (2, 300), (3, 200), (4, 300), (5, 50)] {
            let mut r = record(port);
            r.mono_ns = mono_ns;
            store.push(r);
        }
        let all = store.query(&FlowFilter::default(), Range::default());
        assert_eq!(ports(&all), [5, 1, 3, 2, 4]);
        let last = store.query(&FlowFilter::default(), last(3));
        assert_eq!(ports(&last), [3, 2, 4]);
    }
}

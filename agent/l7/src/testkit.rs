//! Test support for parsers: byte fixtures, golden JSON, every-split
//! replays and a deterministic mutation fuzzer.
//!
//! A parser's tests name their recordings once ([`Fixtures`]) and get the
//! checks every recording deserves from it, so each protocol's tests say
//! only what is particular to the protocol.
//!
//! Fixture files (`src/fixtures/<protocol>/*.bin`) are the records of a
//! recording relay (see the fixtures' README): per read, one direction byte
//! (`>` client to server, `<` server to client), a 4-byte big-endian
//! length, the bytes. Record `i` is fed with timestamp `(i + 1) * 1000` ns,
//! so golden timestamps name the record that held a message's first or
//! last byte.
//!
//! Goldens (`<fixture>.json` next to the `.bin`) are regenerated with
//! `WEFT_BLESS=1 cargo test -p weft-l7`; review the diff before committing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Chunk, Direction, Exchange, MetricAttributes, ParseError, Session};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub direction: Direction,
    pub data: Vec<u8>,
}

pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/fixtures")
        .join(rel)
}

/// Reads `src/fixtures/<rel>` (a `.bin` recording).
pub fn load(rel: &str) -> Vec<Record> {
    let bytes = std::fs::read(fixture_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    parse_records(&bytes).unwrap_or_else(|| panic!("{rel}: not a recording"))
}

pub fn parse_records(mut bytes: &[u8]) -> Option<Vec<Record>> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let direction = match bytes[0] {
            b'>' => Direction::ToServer,
            b'<' => Direction::ToClient,
            _ => return None,
        };
        let len = u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
        let data = bytes.get(5..5 + len)?.to_vec();
        records.push(Record { direction, data });
        bytes = &bytes[5 + len..];
    }
    Some(records)
}

pub fn ts_of(record: usize) -> u64 {
    (record as u64 + 1) * 1000
}

/// One fed piece: a direction, bytes and the timestamp of the record they
/// came from.
pub type Piece<'a> = (Direction, &'a [u8], u64);

pub fn pieces(records: &[Record]) -> Vec<Piece<'_>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.direction, r.data.as_slice(), ts_of(i)))
        .collect()
}

/// A whole captured read or write: nothing lost before it or cut from it.
pub fn chunk(direction: Direction, data: &[u8], ts_ns: u64) -> Chunk<'_> {
    Chunk {
        direction,
        data,
        truncated: 0,
        gap_before: 0,
        ts_ns,
    }
}

/// Feeds the pieces in order and closes the session after the last one.
/// Stops at the first error, which is returned along with the exchanges
/// emitted before it.
pub fn replay(
    session: &mut dyn Session,
    pieces: &[Piece<'_>],
) -> (Vec<Exchange>, Option<ParseError>) {
    let mut out = Vec::new();
    let mut last = 0;
    for &(direction, data, ts_ns) in pieces {
        if let Err(e) = session.feed(&chunk(direction, data, ts_ns), &mut out) {
            return (out, Some(e));
        }
        last = ts_ns;
    }
    session.close(last + 1, &mut out);
    (out, None)
}

pub fn exchange_json(e: &Exchange) -> Value {
    let metric = match &e.metric {
        MetricAttributes::Http {
            method,
            status_code,
            route,
            scheme,
        } => json!({
            "http": {"method": method, "status_code": status_code, "route": route, "scheme": scheme}
        }),
        MetricAttributes::Rpc {
            system,
            method,
            status_code,
        } => json!({
            "rpc": {"system": system, "method": method, "status_code": status_code}
        }),
        MetricAttributes::Db {
            system,
            operation,
            error_type,
        } => json!({
            "db": {"system": system, "operation": operation, "error_type": error_type}
        }),
        MetricAttributes::Dns {
            question_type,
            response_code,
        } => json!({
            "dns": {"question_type": question_type, "response_code": response_code}
        }),
        MetricAttributes::Tls {
            version,
            outcome,
            server_name,
        } => json!({
            "tls": {"version": version, "outcome": outcome, "server_name": server_name}
        }),
    };
    json!({
        "protocol": e.protocol.name(),
        "request_ns": e.request_ns,
        "response_ns": e.response_ns,
        "answered": e.answered,
        "request_bytes": e.request_bytes,
        "response_bytes": e.response_bytes,
        "fields": e.fields,
        "metric": metric,
    })
}

/// The replay's outcome as JSON: the exchanges, and the error if any.
pub fn outcome_json(outcome: &(Vec<Exchange>, Option<ParseError>)) -> Value {
    let exchanges: Vec<Value> = outcome.0.iter().map(exchange_json).collect();
    match &outcome.1 {
        None => json!({ "exchanges": exchanges }),
        Some(e) => json!({ "exchanges": exchanges, "error": e.to_string() }),
    }
}

/// Compares `actual` with the golden file `src/fixtures/<rel>` (or writes
/// it when `WEFT_BLESS` is set).
pub fn check_golden(rel: &str, actual: &Value) {
    let path = fixture_path(rel);
    let pretty = serde_json::to_string_pretty(actual).unwrap_or_default() + "\n";
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(&path, pretty).unwrap_or_else(|e| panic!("{rel}: {e}"));
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{rel}: {e} (WEFT_BLESS=1 writes it)"));
    let golden: Value = serde_json::from_str(&golden).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(&golden, actual, "{rel} differs; actual:\n{pretty}");
}

/// The exchanges of a whole replay, as JSON (an error only ends them).
pub fn exchanges_json<S: Session>(records: &[Record], make: &dyn Fn() -> S) -> Vec<Value> {
    let (exchanges, _) = replay(&mut make(), &pieces(records));
    exchanges.iter().map(exchange_json).collect()
}

/// Replays the records split in every way the ticket asks for and checks
/// each gives the same outcome as the unsplit replay: every record cut in
/// two at every position, and everything fed one byte at a time.
pub fn assert_split_invariant<S: Session>(records: &[Record], make: &dyn Fn() -> S) {
    let whole = pieces(records);
    let want = outcome_json(&replay(&mut make(), &whole));
    for (i, (direction, data, ts)) in whole.iter().enumerate() {
        for cut in 1..data.len() {
            let mut split = whole[..i].to_vec();
            split.push((*direction, &data[..cut], *ts));
            split.push((*direction, &data[cut..], *ts));
            split.extend_from_slice(&whole[i + 1..]);
            let got = outcome_json(&replay(&mut make(), &split));
            assert_eq!(got, want, "record {i} cut at {cut}");
        }
    }
    let bytes: Vec<Piece<'_>> = whole
        .iter()
        .flat_map(|&(d, data, ts)| data.chunks(1).map(move |b| (d, b, ts)))
        .collect();
    assert_eq!(
        outcome_json(&replay(&mut make(), &bytes)),
        want,
        "byte by byte"
    );
}

/// A protocol's recordings, `src/fixtures/<dir>/<name>.bin`, each with its
/// golden `<name>.json`.
pub struct Fixtures {
    pub dir: &'static str,
    pub names: &'static [&'static str],
}

impl Fixtures {
    fn path(&self, name: &str, extension: &str) -> String {
        format!("{}/{name}.{extension}", self.dir)
    }

    /// The recordings with their names.
    pub fn load(&self) -> Vec<(&'static str, Vec<Record>)> {
        let load_one = |&name| (name, load(&self.path(name, "bin")));
        self.names.iter().map(load_one).collect()
    }

    /// The recordings alone, e.g. as fuzzing seeds.
    pub fn records(&self) -> Vec<Vec<Record>> {
        self.load()
            .into_iter()
            .map(|(_, records)| records)
            .collect()
    }

    /// Replays one recording into a fresh session and compares the outcome
    /// with its golden. Returns the recording.
    pub fn assert_golden<S: Session>(&self, name: &str, make: &dyn Fn() -> S) -> Vec<Record> {
        let records = load(&self.path(name, "bin"));
        let outcome = replay(&mut make(), &pieces(&records));
        check_golden(&self.path(name, "json"), &outcome_json(&outcome));
        records
    }

    /// One recording's golden, and the same outcome however it is split.
    pub fn assert_recording<S: Session>(&self, name: &str, make: &dyn Fn() -> S) {
        let records = self.assert_golden(name, make);
        assert_split_invariant(&records, make);
    }

    /// Every recording's golden.
    pub fn assert_goldens<S: Session>(&self, make: &dyn Fn() -> S) {
        for name in self.names {
            self.assert_golden(name, make);
        }
    }

    /// Every recording gives the same outcome however it is split.
    pub fn assert_split_invariant<S: Session>(&self, make: &dyn Fn() -> S) {
        for records in self.records() {
            assert_split_invariant(&records, make);
        }
    }

    /// Joining at any record: never an error, and every exchange reported
    /// is one the full replay reports too (a parser that joins late must
    /// not make up what it did not see).
    pub fn assert_joining_invents_nothing<S: Session>(&self, make: &dyn Fn() -> S) {
        for (name, records) in self.load() {
            let full = exchanges_json(&records, make);
            for k in 1..records.len() {
                let joined = pieces(&records).split_off(k);
                let (got, err) = replay(&mut make(), &joined);
                assert!(err.is_none(), "{name} joined at {k}: {err:?}");
                for e in got.iter().map(exchange_json) {
                    assert!(full.contains(&e), "{name} joined at {k}: made up {e}");
                }
            }
        }
    }
}

/// xorshift64*: deterministic, dependency-free randomness for fuzzing.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One mutation of a recording: byte flips, insertions (including runs
/// of interesting bytes), deletions, truncation, splices with another
/// seed, record re-splitting and lost-byte markers.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<Record>]) -> Vec<(Record, usize, usize)> {
    let base = &seeds[rng.below(seeds.len())];
    let mut records: Vec<(Record, usize, usize)> = base.iter().map(|r| (r.clone(), 0, 0)).collect();
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        if records.is_empty() {
            break;
        }
        let i = rng.below(records.len());
        let data = &mut records[i].0.data;
        match rng.below(9) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] = [0, 0xff, 0x7f, 0x80, b'\n', b'\r', b':', b'0', b' '][rng.below(9)];
            }
            2 => {
                let at = rng.below(data.len() + 1);
                let byte = rng.next() as u8;
                let run = 1 + rng.below(64);
                data.splice(at..at, std::iter::repeat_n(byte, run));
            }
            3 if !data.is_empty() => {
                let at = rng.below(data.len());
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            4 => {
                let keep = rng.below(records.len() + 1);
                records.truncate(keep);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                if let Some(r) = other.get(rng.below(other.len().max(1))) {
                    let at = rng.below(records.len() + 1);
                    records.insert(at, (r.clone(), 0, 0));
                }
            }
            6 if data.len() > 1 => {
                let cut = 1 + rng.below(data.len() - 1);
                let tail = data.split_off(cut);
                let direction = records[i].0.direction;
                records.insert(
                    i + 1,
                    (
                        Record {
                            direction,
                            data: tail,
                        },
                        0,
                        0,
                    ),
                );
            }
            7 => records[i].1 = rng.below(100_000),
            _ => records[i].2 = rng.below(100_000),
        }
    }
    records
}

/// For [`fuzz`]'s `bounded`: what a session holds, whatever it is fed,
/// within the limits.
pub fn within(
    buffered: usize,
    max_buffered: usize,
    pending: usize,
    max_pending: usize,
) -> Result<(), String> {
    if buffered > max_buffered || pending > max_pending {
        return Err(format!("buffered {buffered} pending {pending}"));
    }
    Ok(())
}

/// Runs mutated recordings through fresh sessions for `budget`, after each
/// chunk checking `bounded` (e.g. buffered bytes within limits). A panic
/// fails the test with the seed and iteration to replay it; so do fewer
/// than 100 iterations, which would test too little.
pub fn fuzz<S: Session>(
    seeds: &[Vec<Record>],
    budget: Duration,
    make: &dyn Fn() -> S,
    bounded: &dyn Fn(&S) -> Result<(), String>,
) {
    let mut rng = Rng::new(0x5eed_f00d_1234_5678);
    let start = Instant::now();
    let mut iterations = 0;
    while start.elapsed() < budget {
        iterations += 1;
        let case = mutate(&mut rng, seeds);
        let mut session = make();
        let mut out = Vec::new();
        for (n, (record, gap_before, truncated)) in case.iter().enumerate() {
            let chunk = Chunk {
                truncated: *truncated,
                gap_before: *gap_before,
                ..chunk(record.direction, &record.data, ts_of(n))
            };
            let result = session.feed(&chunk, &mut out);
            if let Err(why) = bounded(&session) {
                panic!("iteration {iterations}: {why}");
            }
            if result.is_err() {
                break;
            }
        }
        session.close(u64::MAX / 2, &mut out);
        for e in &out {
            assert!(
                e.response_ns >= e.request_ns,
                "iteration {iterations}: negative latency"
            );
            assert!(
                e.answered || e.response_bytes == 0,
                "iteration {iterations}: unanswered with a response size"
            );
        }
    }
    assert!(iterations > 100, "only {iterations} iterations");
}

//! The bodies of the cargo-fuzz targets (`agent/l7/fuzz`), kept here so
//! that the same code runs under libFuzzer and in `cargo test`, where every
//! input a fuzzer once crashed on (`fuzz/regressions/<target>/`) is replayed
//! as a regression test.
//!
//! Compiled for tests and with the `fuzzing` feature, which only the fuzz
//! crate enables: the agent never carries it.
//!
//! Conversation targets read the fuzzer's bytes as chunks ([`conversation`]):
//! a control byte (bit 0: direction; bits 1-2: none / a capture cut after
//! the chunk / bytes lost before it), a byte sizing the cut or the loss, a
//! length byte and that many bytes. [`encode_recording`] writes a recorded
//! conversation (the fixtures' `.bin` files) in that form, as seeds.

use crate::dns::DnsSession;
use crate::http1::Http1Session;
use crate::http2::Http2Session;
use crate::mysql::MysqlSession;
use crate::postgres::PostgresSession;
use crate::redis::RedisSession;
use crate::tls::TlsSession;
use crate::{Chunk, Direction, Limits, Privacy, Session, Transport};

/// A fuzz target: its name (the fuzz crate's binary) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("http1", http1),
    ("http2", http2),
    ("dns_udp", dns_udp),
    ("dns_tcp", dns_tcp),
    ("redis", redis),
    ("postgres", postgres),
    ("mysql", mysql),
    ("tls", tls),
    ("detect", detect),
    ("hpack", hpack),
    ("sql_obfuscate", sql_obfuscate),
    ("http_target", http_target),
];

/// Small limits, so that the bounds bite on small inputs.
const SMALL: Limits = Limits {
    max_message: 512,
    max_pending: 8,
    max_field: 64,
    max_hpack_table: 1024,
};

pub fn http1(data: &[u8]) {
    let mut session = Http1Session::new(SMALL, &Privacy::default());
    conversation(
        data,
        &mut session,
        Http1Session::buffered,
        2 * SMALL.max_message,
    );
}

pub fn http2(data: &[u8]) {
    const LIMITS: Limits = Limits {
        max_message: 1024,
        ..SMALL
    };
    fn buffered(s: &Http2Session) -> usize {
        let tables = s.hpack_table_sizes();
        assert!(
            tables.iter().all(|&t| t <= LIMITS.max_hpack_table),
            "HPACK tables {tables:?} over {}",
            LIMITS.max_hpack_table
        );
        s.buffered()
    }
    let mut session = Http2Session::new(LIMITS, &Privacy::default());
    conversation(data, &mut session, buffered, 4 * LIMITS.max_message);
}

pub fn dns_udp(data: &[u8]) {
    let mut session = DnsSession::new(Transport::Datagram, SMALL, &Privacy::default());
    let bound = 2 * (SMALL.max_message + 2);
    conversation(data, &mut session, DnsSession::buffered, bound);
}

pub fn dns_tcp(data: &[u8]) {
    let mut session = DnsSession::new(Transport::Stream, SMALL, &Privacy::default());
    let bound = 2 * (SMALL.max_message + 2);
    conversation(data, &mut session, DnsSession::buffered, bound);
}

pub fn redis(data: &[u8]) {
    let mut session = RedisSession::new(SMALL, &Privacy::default());
    let bound = 18 * SMALL.max_field + 64 + 1024;
    conversation(data, &mut session, RedisSession::buffered, bound);
}

/// The handshake reader keeps at most a hello record per direction.
pub fn tls(data: &[u8]) {
    let mut session = TlsSession::new();
    let bound = 2 * (5 + (1 << 14));
    conversation(data, &mut session, TlsSession::buffered, bound);
}

pub fn postgres(data: &[u8]) {
    let mut session = PostgresSession::new(SMALL, &Privacy::default());
    let bound = 2 * (SMALL.max_message + 5);
    conversation(data, &mut session, PostgresSession::buffered, bound);
}

pub fn mysql(data: &[u8]) {
    let mut session = MysqlSession::new(SMALL, &Privacy::default());
    let bound = SMALL.max_message + 512 + 8;
    conversation(data, &mut session, MysqlSession::buffered, bound);
}

/// Detection as the agent runs it: the first chunk (with a server port
/// from the input) picks the protocol, and the session made for it gets
/// the whole conversation. No bound on buffering here (the boxed session
/// does not tell it); the per-protocol targets check that.
pub fn detect(data: &[u8]) {
    let [flags, port_hi, port_lo, rest @ ..] = data else {
        return;
    };
    let transport = if flags & 1 == 0 {
        Transport::Stream
    } else {
        Transport::Datagram
    };
    let Some(first) = chunks(rest).next() else {
        return;
    };
    let first = crate::detect::FirstBytes {
        direction: first.direction,
        data: first.data,
        transport,
        server_port: u16::from_be_bytes([*port_hi, *port_lo]),
    };
    let Ok(protocol) = crate::detect(&first) else {
        return;
    };
    if let Some(mut session) =
        crate::new_session_on(protocol, transport, SMALL, &Privacy::default())
    {
        conversation(rest, &mut *session, |_| 0, 0);
    }
}

/// HPACK header blocks with the dynamic table carried from one block to
/// the next; the first byte splits the input into blocks and sets the
/// table size the peer announces.
pub fn hpack(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = if split & 1 == 0 {
        crate::hpack::Decoder::new(1024)
    } else {
        crate::hpack::Decoder::joined(1024)
    };
    decoder.allow_max_size(usize::from(split) * 64);
    for block in rest.chunks(usize::from(split.max(1))) {
        if decoder.decode(block, &mut |_, _| {}).is_err() {
            break;
        }
        assert!(decoder.table_size() <= 1024);
    }
}

/// Any text, either SQL dialect: no panic, output within its bound.
pub fn sql_obfuscate(data: &[u8]) {
    use crate::sql_obfuscate::{Dialect, obfuscate_sql, sql_operation};
    let sql = String::from_utf8_lossy(data);
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        let out = obfuscate_sql(&sql, dialect, 64);
        assert!(out.len() <= 64 + '…'.len_utf8(), "{} bytes", out.len());
    }
    let _ = sql_operation(&sql);
}

/// A request target through the route template and the query redaction:
/// the route stays within its bound, and no value of a sensitive query
/// parameter survives the default privacy settings.
pub fn http_target(data: &[u8]) {
    let target = String::from_utf8_lossy(data);
    let route = crate::route::template(&target);
    assert!(
        route.len() <= crate::route::MAX_ROUTE_LEN,
        "route of {} bytes",
        route.len()
    );
    let redacted = crate::query::redact_target(&target, &Privacy::default());
    let Some((_, query)) = redacted.split_once('?') else {
        return;
    };
    for param in query.split('&') {
        if let Some((_, value)) = param.split_once('=') {
            assert!(
                value.is_empty() || value == crate::query::REDACTED,
                "a query value survived: {param:?} in {redacted:?}"
            );
        }
    }
}

/// One chunk of a fuzzed conversation.
struct FuzzChunk<'a> {
    direction: Direction,
    data: &'a [u8],
    truncated: usize,
    gap_before: usize,
}

/// The chunks the fuzzer's bytes encode (see the module's documentation);
/// a last chunk shorter than its length byte takes what is left.
fn chunks(mut rest: &[u8]) -> impl Iterator<Item = FuzzChunk<'_>> {
    std::iter::from_fn(move || {
        let [ctrl, extra, len, tail @ ..] = rest else {
            return None;
        };
        let (data, after) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = after;
        let direction = if ctrl & 1 == 0 {
            Direction::ToServer
        } else {
            Direction::ToClient
        };
        let (truncated, gap_before) = match (ctrl >> 1) & 3 {
            1 => (usize::from(*extra) * 64, 0),
            2 => (0, usize::from(*extra)),
            _ => (0, 0),
        };
        Some(FuzzChunk {
            direction,
            data,
            truncated,
            gap_before,
        })
    })
}

/// Feeds the conversation to `session` and checks what every parser
/// promises: no panic, buffering within `bound` after every chunk (a
/// `bound` of 0 checks nothing), no response before its request, no
/// response size on an unanswered exchange.
pub fn conversation<S: Session + ?Sized>(
    data: &[u8],
    session: &mut S,
    buffered: fn(&S) -> usize,
    bound: usize,
) {
    let mut out = Vec::new();
    let mut ts_ns = 0;
    for piece in chunks(data) {
        ts_ns += 1;
        let chunk = Chunk {
            direction: piece.direction,
            data: piece.data,
            truncated: piece.truncated,
            gap_before: piece.gap_before,
            ts_ns,
        };
        let result = session.feed(&chunk, &mut out);
        if bound > 0 {
            let held = buffered(session);
            assert!(held <= bound, "buffered {held} > {bound}");
        }
        if result.is_err() {
            break;
        }
    }
    session.close(ts_ns + 1, &mut out);
    for e in &out {
        assert!(e.response_ns >= e.request_ns, "response before its request");
        assert!(
            e.answered || e.response_bytes == 0,
            "unanswered with a response size"
        );
    }
}

/// A recording (the fixtures' `.bin` form: a direction byte `>` or `<`, a
/// 4-byte big-endian length, the bytes) as a conversation input, each read
/// split into chunks of at most 255 bytes. `None` if it is not a recording.
pub fn encode_recording(mut recording: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(recording.len() + recording.len() / 64);
    while let [direction, rest @ ..] = recording {
        let ctrl = match direction {
            b'>' => 0,
            b'<' => 1,
            _ => return None,
        };
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let data = rest.get(4..4 + len)?;
        for piece in data.chunks(255) {
            out.extend_from_slice(&[ctrl, 0, piece.len() as u8]);
            out.extend_from_slice(piece);
        }
        recording = &rest[4 + len..];
    }
    Some(out)
}

/// The fixture recordings that seed a target, as paths relative to
/// `src/fixtures` (directories stand for every `.bin` in them). Their
/// encodings are kept in `fuzz/seeds/<target>/`, checked by a test.
pub fn seed_fixtures(target: &str) -> &'static [&'static str] {
    match target {
        "http1" => &["http1"],
        "http2" => &["http2"],
        "dns_udp" => &["dns/udp.bin"],
        "dns_tcp" => &["dns/tcp.bin"],
        "redis" => &["redis"],
        "postgres" => &["postgres"],
        "mysql" => &["mysql"],
        "tls" => &["tls"],
        "detect" => &[
            "http1/keepalive.bin",
            "http2/grpc.bin",
            "dns/udp.bin",
            "dns/tcp.bin",
            "redis/resp2.bin",
            "postgres/simple.bin",
            "mysql/query.bin",
            "tls/tls13.bin",
        ],
        _ => &[],
    }
}

/// A seed for `target` from a fixture recording: the conversation, and for
/// `detect` the transport byte and a server port before it.
pub fn seed(target: &str, fixture: &str, recording: &[u8]) -> Option<Vec<u8>> {
    let conversation = encode_recording(recording)?;
    if target != "detect" {
        return Some(conversation);
    }
    let datagram = u8::from(fixture.ends_with("udp.bin"));
    Some([&[datagram, 0, 0][..], &conversation].concat())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn crate_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Every input a fuzzer crashed on, kept in `fuzz/regressions/<target>/`,
    /// runs through its target again.
    #[test]
    fn fuzz_regressions_stay_fixed() {
        let dir = crate_dir().join("fuzz/regressions");
        let replayed = replay_regressions(&dir, TARGETS);
        println!(
            "{replayed} regression inputs replayed from {}",
            dir.display()
        );
    }

    /// Every target is a binary of the fuzz crate, and every binary a target.
    #[test]
    fn every_target_is_a_fuzz_binary() {
        let manifest =
            std::fs::read_to_string(crate_dir().join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        let binaries: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|name| *name != "weft-l7-fuzz")
            .collect();
        let targets: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
        assert_eq!(binaries, targets);
    }

    /// The seeds in `fuzz/seeds/` are the current encodings of their
    /// fixtures (`WEFT_BLESS=1` rewrites them), and every seed, those
    /// written by hand too, passes through its target.
    #[test]
    fn seeds_are_the_fixtures_and_pass_their_targets() {
        let bless = std::env::var_os("WEFT_BLESS").is_some();
        let mut checked = 0;
        for (target, body) in TARGETS {
            let dir = crate_dir().join("fuzz/seeds").join(target);
            for (name, input) in fixture_seeds(target) {
                let path = dir.join(&name);
                if bless {
                    std::fs::create_dir_all(&dir).expect("seed directory");
                    std::fs::write(&path, &input).expect("write a seed");
                }
                let kept = std::fs::read(&path).unwrap_or_default();
                assert!(
                    kept == input,
                    "{} is not its fixture's encoding: rerun with WEFT_BLESS=1",
                    path.display()
                );
                checked += 1;
            }
            for seed in std::fs::read_dir(&dir).into_iter().flatten() {
                body(&std::fs::read(seed.expect("seed").path()).expect("a seed"));
            }
        }
        assert_eq!(checked, 40, "seeds made from fixtures");
    }

    /// `(seed file name, seed)` for every fixture that seeds `target`.
    fn fixture_seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let fixtures = crate_dir().join("src/fixtures");
        let mut files = Vec::new();
        for rel in seed_fixtures(target) {
            let path = fixtures.join(rel);
            if path.is_dir() {
                let mut bins: Vec<PathBuf> = std::fs::read_dir(&path)
                    .expect("fixture directory")
                    .map(|e| e.expect("fixture entry").path())
                    .filter(|p| p.extension().is_some_and(|e| e == "bin"))
                    .collect();
                bins.sort();
                files.extend(bins);
            } else {
                files.push(path);
            }
        }
        files
            .iter()
            .map(|file| {
                let rel = file.strip_prefix(&fixtures).expect("under fixtures");
                let rel = rel.to_str().expect("UTF-8 fixture path");
                let recording = std::fs::read(file).expect("fixture");
                let seed = seed(target, rel, &recording)
                    .unwrap_or_else(|| panic!("{rel}: not a recording"));
                (rel.trim_end_matches(".bin").replace('/', "-"), seed)
            })
            .collect()
    }

    #[test]
    fn a_recording_encodes_as_its_chunks() {
        let mut recording = vec![b'>', 0, 0, 1, 44];
        recording.extend([b'a'; 300]);
        recording.extend([b'<', 0, 0, 0, 2, b'o', b'k']);
        let encoded = encode_recording(&recording).expect("a recording");
        let pieces: Vec<(Direction, usize)> = chunks(&encoded)
            .map(|c| (c.direction, c.data.len()))
            .collect();
        assert_eq!(
            pieces,
            [
                (Direction::ToServer, 255),
                (Direction::ToServer, 45),
                (Direction::ToClient, 2)
            ]
        );
        assert_eq!(encode_recording(b"x"), None);
        assert_eq!(encode_recording(&[b'>', 0, 0, 0, 9, 1]), None);
    }

    /// Runs every file under `dir/<target>/` through that target; returns
    /// how many ran. A directory that names no target is an error, so a
    /// renamed target cannot leave its regressions unrun.
    fn replay_regressions(dir: &Path, targets: &[Target]) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut replayed = 0;
        for entry in entries {
            let path = entry.expect("regressions entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let Some((_, body)) = targets.iter().find(|(target, _)| *target == name) else {
                panic!("{}: no fuzz target of that name", path.display());
            };
            for input in std::fs::read_dir(&path).expect("regressions of a target") {
                let input = input.expect("regression input").path();
                println!("replaying {}", input.display());
                body(&std::fs::read(&input).expect("regression input"));
                replayed += 1;
            }
        }
        replayed
    }
}

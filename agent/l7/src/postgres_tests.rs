use std::time::Duration;

use super::*;
use crate::testkit::{self, Fixtures, Record};

fn session() -> PostgresSession {
    PostgresSession::new(Limits::default(), &Privacy::default())
}

const FIXTURES: Fixtures = Fixtures {
    dir: "postgres",
    names: &["simple", "extended", "prepared", "extended-error"],
};

#[test]
fn simple_queries_from_psql() {
    FIXTURES.assert_recording("simple", &session);
}

#[test]
fn extended_unnamed_statements_from_pgbench() {
    FIXTURES.assert_recording("extended", &session);
}

#[test]
fn prepared_statements_from_pgbench() {
    FIXTURES.assert_recording("prepared", &session);
}

#[test]
fn extended_error_from_pgbench() {
    FIXTURES.assert_recording("extended-error", &session);
}

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup() -> Vec<u8> {
    let body = b"\x00\x03\x00\x00user\x00u\x00\x00";
    let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
    m.extend_from_slice(body);
    m
}

fn rec(direction: Direction, data: Vec<u8>) -> Record {
    Record { direction, data }
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

#[test]
fn ssl_accepted_reads_nothing_from_a_cut_handshake() {
    let records = vec![
        rec(
            Direction::ToServer,
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f".to_vec(),
        ),
        rec(Direction::ToClient, b"S".to_vec()),
        // A ClientHello cut short and a ServerHello's first bytes: the
        // handshake never completes, so no record and no error.
        rec(
            Direction::ToServer,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        ),
        rec(Direction::ToClient, b"\x16\x03\x03\x00\x7a\x02".to_vec()),
    ];
    let outcome = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(outcome.0.is_empty() && outcome.1.is_none(), "{outcome:?}");
    testkit::assert_split_invariant(&records, &session);
}

/// psql's way into TLS: SSLRequest, `S`, then a real handshake (Python's
/// ssl, TLS 1.3): the connection reports the handshake's metadata as any
/// TLS connection does, and nothing else.
#[test]
fn ssl_accepted_reports_the_handshake() {
    let mut records = vec![
        rec(
            Direction::ToServer,
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f".to_vec(),
        ),
        rec(Direction::ToClient, b"S".to_vec()),
    ];
    records.extend(testkit::load("tls/tls13.bin"));
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    let ex = &out[0];
    assert_eq!(ex.protocol, Protocol::Tls);
    assert_eq!(ex.fields["sni"], "api.weft.test");
    assert_eq!(ex.fields["version"], "1.3");
    assert_eq!(ex.fields["outcome"], "ok");
    // Sizes are the handshake's: the SSLRequest and its answer are not in
    // them.
    let tls_only = testkit::replay(
        &mut crate::tls::TlsSession::new(),
        &testkit::pieces(&records[2..]),
    );
    assert_eq!(ex.request_bytes, tls_only.0[0].request_bytes);
    assert_eq!(ex.response_bytes, tls_only.0[0].response_bytes);
    testkit::assert_split_invariant(&records, &session);
}

/// A connection that ends inside the handshake is a failed one.
#[test]
fn ssl_closed_during_the_handshake_fails() {
    let mut records = vec![
        rec(
            Direction::ToServer,
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f".to_vec(),
        ),
        rec(Direction::ToClient, b"S".to_vec()),
    ];
    records.extend(testkit::load("tls/tls13.bin").into_iter().take(2));
    // (`replay` closes the session after the last record.)
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].fields["outcome"], "failed");
    assert_eq!(out[0].fields["failure"], "closed");
}

#[test]
fn pipelined_simple_queries_pair_in_order() {
    let mut requests = startup();
    requests.extend(msg(b'Q', b"SELECT 1\0"));
    requests.extend(msg(b'Q', b"SELEC oops\0"));
    let mut responses = ready();
    responses.extend(msg(b'C', b"SELECT 1\0"));
    responses.extend(ready());
    responses.extend(msg(b'E', b"SERROR\0C42601\0Msyntax error\0\0"));
    responses.extend(ready());
    let records = vec![
        rec(Direction::ToServer, requests),
        rec(Direction::ToClient, responses),
    ];
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].fields["statement"], "SELECT ?");
    assert_eq!(out[0].fields["rows"], 1);
    assert_eq!(out[1].fields["operation"], "SELEC");
    assert_eq!(out[1].fields["error_code"], "42601");
    assert!(
        out[1].fields.get("error_message").is_none(),
        "private by default"
    );
    testkit::assert_split_invariant(&records, &session);
}

#[test]
fn truncated_statement_keeps_its_prefix_and_pairs() {
    let mut s = session();
    let mut out = Vec::new();
    let long = format!(
        "SELECT * FROM t WHERE name = 'x' AND v IN ({}1)\0",
        "1, ".repeat(1000)
    );
    let q = msg(b'Q', long.as_bytes());
    let feed =
        |s: &mut PostgresSession, direction, data: &[u8], truncated, ts_ns, out: &mut Vec<_>| {
            let chunk = Chunk {
                truncated,
                ..testkit::chunk(direction, data, ts_ns)
            };
            s.feed(&chunk, out)
        };
    feed(&mut s, Direction::ToServer, &startup(), 0, 1, &mut out).unwrap();
    feed(&mut s, Direction::ToClient, &ready(), 0, 2, &mut out).unwrap();
    // Only the first 40 bytes of the query were captured.
    feed(
        &mut s,
        Direction::ToServer,
        &q[..40],
        q.len() - 40,
        3,
        &mut out,
    )
    .unwrap();
    feed(&mut s, Direction::ToClient, &ready(), 0, 4, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fields["statement"],
        "SELECT * FROM t WHERE name = ? AN…"
    );
    assert_eq!((out[0].request_ns, out[0].response_ns), (3, 4));
}

#[test]
fn lost_server_bytes_resync_at_the_next_request() {
    let mut s = session();
    let mut out = Vec::new();
    let mut feed = |direction, data: &[u8], truncated, ts_ns| {
        let chunk = Chunk {
            truncated,
            ..testkit::chunk(direction, data, ts_ns)
        };
        s.feed(&chunk, &mut out).unwrap();
    };
    feed(Direction::ToServer, &startup(), 0, 1);
    feed(Direction::ToClient, &ready(), 0, 2);
    feed(Direction::ToServer, &msg(b'Q', b"SELECT big\0"), 0, 3);
    // Rows, then a capture cut that swallows message boundaries.
    let row = msg(b'D', &[b'x'; 100]);
    feed(Direction::ToClient, &row[..50], 5000, 4);
    feed(
        Direction::ToClient,
        b"garbage from the middle of a row",
        0,
        5,
    );
    feed(Direction::ToServer, &msg(b'Q', b"SELECT 2\0"), 0, 6);
    feed(Direction::ToClient, &ready(), 0, 7);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].fields["statement"], "SELECT big");
    assert_eq!(out[0].fields["truncated"], true);
    assert_eq!((out[0].request_ns, out[0].response_ns), (3, 5));
    assert_eq!(out[1].fields["statement"], "SELECT ?");
    assert_eq!((out[1].request_ns, out[1].response_ns), (6, 7));
}

#[test]
fn hostile_lengths_are_errors_not_allocations() {
    fn client(data: &[u8]) -> Chunk<'_> {
        testkit::chunk(Direction::ToServer, data, 1)
    }
    fn server(data: &[u8]) -> Chunk<'_> {
        testkit::chunk(Direction::ToClient, data, 1)
    }
    let mut s = session();
    let mut out = Vec::new();
    let start = startup();
    assert!(s.feed(&client(&start), &mut out).is_ok());
    // A 3 GB message: refused.
    let err = s.feed(&client(b"Q\xc0\x00\x00\x00"), &mut out);
    assert!(err.is_err());
    // A 1 GB row is counted down, never buffered.
    let mut s = session();
    s.feed(&client(&start), &mut out).unwrap();
    s.feed(&server(b"D\x3f\xff\xff\xff"), &mut out).unwrap();
    s.feed(&server(&[0u8; 100_000]), &mut out).unwrap();
    assert!(s.buffered() <= crate::framer::MAX_HEADER);
    let ssl = FirstBytes {
        direction: Direction::ToServer,
        data: &[0, 0, 0, 8, 4, 210, 22, 47],
        transport: crate::Transport::Stream,
        server_port: 1,
    };
    assert_eq!(detect(&ssl), Detection::Yes);
    assert_eq!(crate::detect(&ssl), Ok(Protocol::Postgres));
    let first = FirstBytes {
        data: &start,
        ..ssl
    };
    assert_eq!(crate::detect(&first), Ok(Protocol::Postgres));
}

#[test]
fn fuzz_smoke() {
    let seeds = FIXTURES.records();
    let limits = Limits::default();
    testkit::fuzz(
        &seeds,
        Duration::from_secs(2),
        &session,
        &|s: &PostgresSession| {
            let max = limits.max_message + crate::framer::MAX_HEADER;
            testkit::within(s.buffered(), max, s.pending.len(), limits.max_pending)
        },
    );
}

fn sizes(out: &[Exchange]) -> Vec<(u64, u64)> {
    out.iter()
        .map(|e| (e.request_bytes, e.response_bytes))
        .collect()
}

/// A simple query is its `Q`; an extended batch its messages up to `Sync`;
/// each response every message up to its `ReadyForQuery`, all with their
/// 5-byte headers. Startup and authentication count for nothing.
#[test]
fn sizes_are_the_messages_up_to_ready_for_query() {
    let mut requests = startup();
    let q = msg(b'Q', b"SELECT 1\0");
    requests.extend(&q);
    let batch = [
        msg(b'P', b"\0SELECT $1\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    requests.extend(&batch);
    let mut responses = msg(b'R', b"\0\0\0\0");
    responses.extend(msg(b'S', b"a\0b\0"));
    responses.extend(ready());
    let simple = [
        msg(
            b'T',
            b"\0\x01?column?\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        ),
        msg(b'D', b"\0\x01\0\0\0\x011"),
        msg(b'C', b"SELECT 1\0"),
        ready(),
    ]
    .concat();
    responses.extend(&simple);
    let extended = [
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'D', b"\0\x01\0\0\0\x011"),
        msg(b'C', b"SELECT 1\0"),
        ready(),
    ]
    .concat();
    responses.extend(&extended);
    let records = vec![
        rec(Direction::ToServer, requests),
        rec(Direction::ToClient, responses),
    ];
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none(), "{err:?}");
    let want = [
        (q.len() as u64, simple.len() as u64),
        (batch.len() as u64, extended.len() as u64),
    ];
    assert_eq!(sizes(&out), want);
    assert_eq!(want, [(14, 66), (51, 42)]);
    testkit::assert_split_invariant(&records, &session);
}

#[test]
fn sizes_count_cut_bytes_and_not_an_unfinished_response() {
    let mut s = session();
    let mut out = Vec::new();
    let mut feed = |direction, data: &[u8], truncated, ts_ns| {
        let chunk = Chunk {
            truncated,
            ..testkit::chunk(direction, data, ts_ns)
        };
        s.feed(&chunk, &mut out).unwrap();
    };
    feed(Direction::ToServer, &startup(), 0, 1);
    feed(Direction::ToClient, &ready(), 0, 2);
    // A 10 000-byte query of which 40 bytes were captured.
    let long = format!("SELECT '{}'\0", "x".repeat(10_000 - 11));
    let q = msg(b'Q', long.as_bytes());
    feed(Direction::ToServer, &q[..40], q.len() - 40, 3);
    // The rows come, then the connection closes before `Z`.
    feed(Direction::ToClient, &msg(b'D', &[b'x'; 100]), 0, 4);
    s.close(5, &mut out);
    assert_eq!(out.len(), 1);
    assert!(!out[0].answered);
    assert_eq!(sizes(&out), [(10_004, 0)]);
}

#[test]
fn a_password_is_hidden_when_literals_are_shown() {
    let mut requests = startup();
    requests.extend(msg(b'Q', b"SELECT 'visible'\0"));
    requests.extend(msg(b'Q', b"ALTER ROLE app PASSWORD 'hunter2'\0"));
    let mut responses = ready();
    responses.extend(msg(b'C', b"SELECT 1\0"));
    responses.extend(ready());
    responses.extend(msg(b'C', b"ALTER ROLE\0"));
    responses.extend(ready());
    let records = vec![
        rec(Direction::ToServer, requests),
        rec(Direction::ToClient, responses),
    ];
    let privacy = Privacy {
        obfuscate_sql: false,
        ..Privacy::default()
    };
    let mut s = PostgresSession::new(Limits::default(), &privacy);
    let (out, err) = testkit::replay(&mut s, &testkit::pieces(&records));
    assert!(err.is_none());
    assert_eq!(out[0].fields["statement"], "SELECT 'visible'");
    assert_eq!(out[1].fields["statement"], "ALTER ROLE app PASSWORD ?");
}

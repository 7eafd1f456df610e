use std::time::Duration;

use super::*;
use crate::testkit::{self, Fixtures, Record};

fn session() -> MysqlSession {
    MysqlSession::new(Limits::default(), &Privacy::default())
}

const FIXTURES: Fixtures = Fixtures {
    dir: "mysql",
    names: &["query", "prepared"],
};

#[test]
fn queries_from_the_mariadb_client() {
    FIXTURES.assert_recording("query", &session);
}

#[test]
fn prepared_statements_from_connector_python() {
    FIXTURES.assert_recording("prepared", &session);
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(payload);
    p
}

/// MySQL 8 style: both sides set CLIENT_DEPRECATE_EOF, so no EOF follows
/// the column definitions and an OK packet with a 0xfe header ends the rows.
#[test]
fn result_sets_without_eof_packets() {
    let caps: u32 = CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF;
    let mut greeting = vec![10];
    greeting.extend_from_slice(b"8.0.36\0\x01\0\0\0abcdefgh\0");
    greeting.extend_from_slice(&(caps as u16).to_le_bytes());
    greeting.extend_from_slice(&[0x21, 0x02, 0x00]);
    greeting.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    greeting.extend_from_slice(&[0; 11]);
    let mut response = caps.to_le_bytes().to_vec();
    response.extend_from_slice(&[0; 28]);
    response.extend_from_slice(b"u\0");
    let mut rows = packet(1, &[1]);
    rows.extend(packet(
        2,
        b"\x03def\0\0\0\x01v\0\x0c\x21\0\x0b\0\0\0\x03\0\0\0\0",
    ));
    rows.extend(packet(3, b"\x01a"));
    rows.extend(packet(4, b"\x01b"));
    rows.extend(packet(5, b"\xfe\0\0\x02\0\0\0"));
    let records = vec![
        Record {
            direction: Direction::ToClient,
            data: packet(0, &greeting),
        },
        Record {
            direction: Direction::ToServer,
            data: packet(1, &response),
        },
        Record {
            direction: Direction::ToClient,
            data: packet(2, b"\0\0\0\x02\0\0\0"),
        },
        Record {
            direction: Direction::ToServer,
            data: packet(0, b"\x03SELECT v FROM t"),
        },
        Record {
            direction: Direction::ToClient,
            data: rows,
        },
        Record {
            direction: Direction::ToServer,
            data: packet(0, b"\x03SELECT 'x'"),
        },
        Record {
            direction: Direction::ToClient,
            data: packet(1, b"\xff\x7a\x04#42S02gone"),
        },
    ];
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].fields["rows"], 2);
    assert_eq!((out[0].request_ns, out[0].response_ns), (4000, 5000));
    assert_eq!(out[1].fields["error_code"], "1146");
    assert_eq!(out[1].fields["sqlstate"], "42S02");
    testkit::assert_split_invariant(&records, &session);
}

/// Greeting, handshake response and OK (4.1 protocol, EOF packets): a
/// session in its command phase.
fn logged_in() -> Vec<Record> {
    let caps: u32 = CLIENT_PROTOCOL_41;
    let mut greeting = vec![10];
    greeting.extend_from_slice(b"10.11.6\0\x01\0\0\0abcdefgh\0");
    greeting.extend_from_slice(&(caps as u16).to_le_bytes());
    greeting.extend_from_slice(&[0x21, 0x02, 0x00]);
    greeting.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    greeting.extend_from_slice(&[0; 11]);
    let mut response = caps.to_le_bytes().to_vec();
    response.extend_from_slice(&[0; 28]);
    response.extend_from_slice(b"u\0");
    vec![
        Record {
            direction: Direction::ToClient,
            data: packet(0, &greeting),
        },
        Record {
            direction: Direction::ToServer,
            data: packet(1, &response),
        },
        Record {
            direction: Direction::ToClient,
            data: packet(2, b"\0\0\0\x02\0\0\0"),
        },
    ]
}

/// An execution is named by the operation of the statement it runs (as
/// `db.operation.name` is); `EXECUTE` only when its prepare was not seen.
#[test]
fn an_execution_is_named_by_its_statement() {
    let mut records = logged_in();
    let command = |payload: &[u8]| Record {
        direction: Direction::ToServer,
        data: packet(0, payload),
    };
    let ok = Record {
        direction: Direction::ToClient,
        data: packet(1, b"\0\0\0\x02\0\0\0"),
    };
    // Statement 7 was prepared before the capture began.
    records.push(command(b"\x17\x07\0\0\0\0\x01\0\0\0"));
    records.push(ok.clone());
    // Statement 8 is prepared here: no columns, no parameters.
    records.push(command(b"\x16UPDATE t SET v = 1"));
    records.push(Record {
        direction: Direction::ToClient,
        data: packet(1, b"\0\x08\0\0\0\0\0\0\0\0\0\0"),
    });
    records.push(command(b"\x17\x08\0\0\0\0\x01\0\0\0"));
    records.push(ok);
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none(), "{err:?}");
    let ops: Vec<_> = out.iter().map(|x| x.fields["operation"].clone()).collect();
    assert_eq!(ops, ["EXECUTE", "PREPARE", "UPDATE"], "{out:?}");
    assert!(out[0].fields.get("statement").is_none());
    assert_eq!(out[2].fields["statement"], "UPDATE t SET v = ?");
    let MetricAttributes::Db { operation, .. } = &out[2].metric else {
        panic!("{:?}", out[2].metric);
    };
    assert_eq!(operation, "UPDATE");
}

#[test]
fn hostile_packets() {
    let mut s = session();
    let mut out = Vec::new();
    let mut feed = |direction, data: &[u8]| s.feed(&testkit::chunk(direction, data, 1), &mut out);
    let records = testkit::load("mysql/query.bin");
    for r in &records[..3] {
        feed(r.direction, &r.data).unwrap();
    }
    // A 16 MB packet continuing into another: skipped, never buffered.
    let mut big = vec![0xff, 0xff, 0xff, 0x00, COM_QUERY];
    big.extend_from_slice(b"SELECT ");
    feed(Direction::ToServer, &big).unwrap();
    for _ in 0..200 {
        feed(Direction::ToServer, &[b'1'; 100_000]).unwrap();
    }
    assert!(s.buffered() <= Limits::default().max_message + 4);
    // A column count that is not one.
    let mut s = session();
    let mut out = Vec::new();
    for r in &records[..3] {
        s.feed(&testkit::chunk(r.direction, &r.data, 1), &mut out)
            .unwrap();
    }
    let query = b"\x09\x00\x00\x00\x03SELECT 1";
    s.feed(&testkit::chunk(Direction::ToServer, query, 2), &mut out)
        .unwrap();
    let bad = b"\x01\x00\x00\x01\xff";
    // 0xff alone is an (empty) ERR packet: answered, error code 0.
    s.feed(&testkit::chunk(Direction::ToClient, bad, 3), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn detects_the_greeting() {
    let records = testkit::load("mysql/query.bin");
    let greeting = &records[0].data;
    let first = |data| FirstBytes {
        direction: Direction::ToClient,
        data,
        transport: crate::Transport::Stream,
        server_port: 3306,
    };
    assert_eq!(detect(&first(greeting)), Detection::Yes);
    assert_eq!(crate::detect(&first(greeting)), Ok(Protocol::Mysql));
    assert_eq!(detect(&first(&greeting[..10])), Detection::NeedMore);
    assert_eq!(detect(&first(b"HTTP/1.1 200")), Detection::No);
}

#[test]
fn fuzz_smoke() {
    let seeds = FIXTURES.records();
    let limits = Limits::default();
    testkit::fuzz(
        &seeds,
        Duration::from_secs(2),
        &session,
        &|s: &MysqlSession| {
            let max = limits.max_message + SERVER_KEEP + 8;
            testkit::within(s.buffered(), max, s.pending.len(), limits.max_pending)?;
            if s.statements.len() > MAX_STATEMENTS {
                return Err(format!("statements {}", s.statements.len()));
            }
            Ok(())
        },
    );
}

fn sizes(out: &[Exchange]) -> Vec<(u64, u64)> {
    out.iter()
        .map(|e| (e.request_bytes, e.response_bytes))
        .collect()
}

/// A command is its packet(s); its response every packet up to the final
/// OK, EOF or ERR, 4-byte headers included.
#[test]
fn sizes_are_the_packets_of_a_command_and_its_response() {
    let mut records = logged_in();
    let query = packet(0, b"\x03SELECT v FROM t");
    // Column count, one definition, EOF, two rows, EOF.
    let result = [
        packet(1, &[1]),
        packet(2, b"\x03def\0\0\0\x01v\0\x0c\x21\0\x0b\0\0\0\x03\0\0\0\0"),
        packet(3, b"\xfe\0\0\x02\0"),
        packet(4, b"\x01a"),
        packet(5, b"\x01b"),
        packet(6, b"\xfe\0\0\x02\0"),
    ]
    .concat();
    // LOAD DATA LOCAL: the server asks for the file, the client sends it
    // (then an empty packet), the server says OK.
    let load = packet(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t");
    let file = [packet(2, b"1\n2\n"), packet(3, b"")].concat();
    let ask = packet(1, b"\xfbf");
    let ok = packet(4, b"\0\x02\0\x02\0\0\0");
    records.push(Record {
        direction: Direction::ToServer,
        data: query.clone(),
    });
    records.push(Record {
        direction: Direction::ToClient,
        data: result.clone(),
    });
    records.push(Record {
        direction: Direction::ToServer,
        data: load.clone(),
    });
    records.push(Record {
        direction: Direction::ToClient,
        data: ask.clone(),
    });
    records.push(Record {
        direction: Direction::ToServer,
        data: file.clone(),
    });
    records.push(Record {
        direction: Direction::ToClient,
        data: ok.clone(),
    });
    // Unanswered: the connection closes first.
    records.push(Record {
        direction: Direction::ToServer,
        data: packet(0, b"\x03SELECT 2"),
    });
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none(), "{err:?}");
    let want = [
        (query.len() as u64, result.len() as u64),
        (
            (load.len() + file.len()) as u64,
            (ask.len() + ok.len()) as u64,
        ),
        (13, 0),
    ];
    assert_eq!(sizes(&out), want);
    assert_eq!(want[..2], [(20, 61), (56, 17)]);
    testkit::assert_split_invariant(&records, &session);
}

/// A client that asks for TLS (the SSL request: a short handshake response
/// with CLIENT_SSL), then a real handshake (Python's ssl, TLS 1.3): the
/// connection reports the handshake's metadata as any TLS connection does,
/// and no parse error.
#[test]
fn an_ssl_request_reports_the_handshake() {
    let caps: u32 = CLIENT_PROTOCOL_41 | CLIENT_SSL;
    let mut greeting = vec![10];
    greeting.extend_from_slice(b"8.0.36\0\x01\0\0\0abcdefgh\0");
    greeting.extend_from_slice(&(caps as u16).to_le_bytes());
    greeting.extend_from_slice(&[0x21, 0x02, 0x00]);
    greeting.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    greeting.extend_from_slice(&[0; 11]);
    // caps, max packet size, charset, 23 bytes of filler.
    let mut ssl_request = caps.to_le_bytes().to_vec();
    ssl_request.extend_from_slice(&[0; 28]);
    let mut records = vec![
        Record {
            direction: Direction::ToClient,
            data: packet(0, &greeting),
        },
        Record {
            direction: Direction::ToServer,
            data: packet(1, &ssl_request),
        },
    ];
    records.extend(testkit::load("tls/tls13.bin"));
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].protocol, Protocol::Tls);
    assert_eq!(out[0].fields["sni"], "api.weft.test");
    assert_eq!(out[0].fields["version"], "1.3");
    assert_eq!(out[0].fields["outcome"], "ok");
    testkit::assert_split_invariant(&records, &session);
}

/// The TLS plaintext of such a connection starts with the client's full
/// handshake response (sequence 2): it is detected as MySQL, and the
/// commands after the server's OK parse as on a cleartext connection.
#[test]
fn the_plaintext_after_an_ssl_request_starts_at_the_handshake_response() {
    let caps: u32 = CLIENT_PROTOCOL_41 | CLIENT_SSL;
    let mut response = caps.to_le_bytes().to_vec();
    response.extend_from_slice(&[0xff, 0xff, 0xff, 0x00, 0x21]);
    // MariaDB's extended capabilities in the filler's last four bytes.
    response.extend_from_slice(&[0; 19]);
    response.extend_from_slice(&[0x1d, 0, 0, 0]);
    response.extend_from_slice(b"root\0\0");
    let first = packet(2, &response);
    let bytes = FirstBytes {
        direction: Direction::ToServer,
        data: &first,
        transport: crate::Transport::Stream,
        server_port: 3306,
    };
    assert_eq!(detect(&bytes), Detection::Yes);
    assert_eq!(crate::detect(&bytes), Ok(Protocol::Mysql));
    // Cut before the filler: more is needed; a sequence other than 2 is
    // not this.
    let cut = FirstBytes {
        data: &first[..20],
        ..bytes
    };
    assert_eq!(detect(&cut), Detection::NeedMore);
    let mut other = first.clone();
    other[3] = 1;
    let other = FirstBytes {
        data: &other,
        ..bytes
    };
    assert_eq!(detect(&other), Detection::No);

    let records = vec![
        Record {
            direction: Direction::ToServer,
            data: first.clone(),
        },
        Record {
            direction: Direction::ToClient,
            data: packet(3, b"\0\0\0\x02\0\0\0"),
        },
        Record {
            direction: Direction::ToServer,
            data: packet(0, b"\x03DELETE FROM t"),
        },
        Record {
            direction: Direction::ToClient,
            data: packet(1, b"\0\x02\0\x02\0\0\0"),
        },
    ];
    let (out, err) = testkit::replay(&mut session(), &testkit::pieces(&records));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].fields["operation"], "DELETE");
    assert_eq!(out[0].fields["rows"], 2);
    testkit::assert_split_invariant(&records, &session);
}

use std::time::Duration;

use super::*;
use crate::testkit::{self, Fixtures, Record};

fn udp() -> DnsSession {
    DnsSession::new(Transport::Datagram, Limits::default(), &Privacy::default())
}

fn tcp() -> DnsSession {
    DnsSession::new(Transport::Stream, Limits::default(), &Privacy::default())
}

const FIXTURES: Fixtures = Fixtures {
    dir: "dns",
    names: &["udp", "tcp"],
};

/// Datagrams are never split, so only the golden applies.
#[test]
fn udp_queries_from_dig_against_dnsmasq() {
    FIXTURES.assert_golden("udp", &udp);
}

#[test]
fn tcp_queries_from_dig_against_dnsmasq() {
    FIXTURES.assert_recording("tcp", &tcp);
}

/// The UDP recording re-framed for TCP: the same exchanges, and splitting
/// applies.
#[test]
fn udp_messages_framed_for_tcp_split_anywhere() {
    let records: Vec<Record> = testkit::load("dns/udp.bin")
        .into_iter()
        .map(|r| {
            let mut data = (r.data.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&r.data);
            Record {
                direction: r.direction,
                data,
            }
        })
        .collect();
    let framed = testkit::outcome_json(&testkit::replay(&mut tcp(), &testkit::pieces(&records)));
    let plain = testkit::load("dns/udp.bin");
    let mut datagrams = testkit::replay(&mut udp(), &testkit::pieces(&plain));
    // Over TCP each message is 2 bytes longer: its length prefix.
    for e in &mut datagrams.0 {
        e.request_bytes += 2;
        e.response_bytes += if e.answered { 2 } else { 0 };
    }
    assert_eq!(framed, testkit::outcome_json(&datagrams));
    testkit::assert_split_invariant(&records, &tcp);
}

/// Pipelined TCP queries answered out of order (RFC 7766 6.2.1.1), made
/// from the recorded messages: all queries in one write, the responses in
/// reverse order in another.
#[test]
fn pipelined_tcp_queries_pair_by_id() {
    let records = testkit::load("dns/tcp.bin");
    let queries: Vec<u8> = records
        .iter()
        .filter(|r| r.direction == Direction::ToServer)
        .flat_map(|r| r.data.clone())
        .collect();
    let responses: Vec<u8> = records
        .iter()
        .rev()
        .filter(|r| r.direction == Direction::ToClient)
        .flat_map(|r| r.data.clone())
        .collect();
    let records = vec![
        Record {
            direction: Direction::ToServer,
            data: queries,
        },
        Record {
            direction: Direction::ToClient,
            data: responses,
        },
    ];
    let (out, err) = testkit::replay(&mut tcp(), &testkit::pieces(&records));
    assert!(err.is_none());
    let names: Vec<_> = out
        .iter()
        .map(|e| (e.fields["query"].clone(), e.fields["rcode"].clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("nope.test", "NXDOMAIN"),
            ("test", "NOERROR"),
            ("www.test", "NOERROR")
        ]
        .map(|(q, r)| (Value::from(q), Value::from(r)))
    );
    testkit::assert_split_invariant(&records, &tcp);
}

fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [id, flags, qd, an, 0, 0] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m
}

#[test]
fn compression_pointers_are_loop_safe() {
    // A pointer to itself, a forward pointer, and a two-pointer cycle.
    for name in [&[0xc0, 12][..], &[0xc0, 40], &[1, b'a', 0xc0, 16, 0xc0, 12]] {
        let mut m = header(1, 0x8180, 1, 0);
        m.extend_from_slice(name);
        m.extend_from_slice(&[0, 1, 0, 1]);
        let parsed = parse_message(&m).unwrap();
        assert_eq!(parsed.question, None, "{name:?}");
        assert!(read_name(&m, 12).is_err());
    }
    // A legitimate backwards pointer.
    let mut m = header(1, 0x8180, 1, 1);
    m.extend_from_slice(b"\x03www\x04test\x00\x00\x05\x00\x01");
    m.extend_from_slice(b"\xc0\x10\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x7f\x00\x00\x01");
    assert_eq!(read_name(&m, 26).unwrap(), ("test".into(), 28));
    // Names over 255 bytes are refused.
    let mut m = header(1, 0, 1, 0);
    for _ in 0..5 {
        m.push(63);
        m.extend_from_slice(&[b'a'; 63]);
    }
    m.push(0);
    assert!(read_name(&m, 12).is_err());
    // Escapes.
    let mut m = header(1, 0, 1, 0);
    m.extend_from_slice(b"\x03a.b\x02\x00\\\x00");
    assert_eq!(read_name(&m, 12).unwrap().0, "a\\.b.\\000\\\\");
}

#[test]
fn truncated_and_hostile_datagrams() {
    let mut s = udp();
    let mut out = Vec::new();
    let mut feed = |direction, data: &[u8], ts_ns| {
        s.feed(&testkit::chunk(direction, data, ts_ns), &mut out)
            .unwrap();
    };
    feed(Direction::ToServer, b"\x00\x01", 1);
    feed(Direction::ToClient, &[0xff; 3000], 2);
    // A response whose question was cut off by the capture still pairs.
    let mut q = header(7, 0x0100, 1, 0);
    q.extend_from_slice(b"\x01a\x04test\x00\x00\x1c\x00\x01");
    feed(Direction::ToServer, &q, 3);
    feed(Direction::ToClient, &header(7, 0x8183, 1, 0), 4);
    s.close(5, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields["query"], "a.test");
    assert_eq!(out[0].fields["qtype"], "AAAA");
    assert_eq!(out[0].fields["rcode"], "NXDOMAIN");
    // TCP: a length below the header size is an error.
    let mut s = tcp();
    let chunk = testkit::chunk(Direction::ToServer, b"\x00\x05hello", 1);
    assert!(s.feed(&chunk, &mut Vec::new()).is_err());
}

#[test]
fn pending_queries_are_bounded() {
    let limits = Limits {
        max_pending: 4,
        ..Limits::default()
    };
    let mut s = DnsSession::new(Transport::Datagram, limits, &Privacy::default());
    let mut out = Vec::new();
    for id in 0..10u16 {
        let mut q = header(id, 0x0100, 1, 0);
        q.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        s.feed(&testkit::chunk(Direction::ToServer, &q, 1), &mut out)
            .unwrap();
    }
    assert_eq!(s.pending.len(), 4);
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|e| !e.answered));
}

#[test]
fn detection() {
    let records = testkit::load("dns/udp.bin");
    let first = |data, transport, server_port| FirstBytes {
        direction: Direction::ToServer,
        data,
        transport,
        server_port,
    };
    assert_eq!(
        detect(&first(&records[0].data, Transport::Datagram, 15353)),
        Detection::Yes
    );
    assert_eq!(
        detect(&first(&records[1].data, Transport::Datagram, 15353)),
        Detection::No
    );
    let tcp = testkit::load("dns/tcp.bin");
    assert_eq!(
        detect(&first(&tcp[0].data, Transport::Stream, 15353)),
        Detection::Yes
    );
    assert_eq!(
        crate::detect(&first(&tcp[0].data, Transport::Stream, 15353)),
        Ok(Protocol::Dns)
    );
    assert_eq!(
        crate::detect(&first(&records[0].data, Transport::Datagram, 15353)),
        Ok(Protocol::Dns)
    );
    let session = crate::new_session_on(
        Protocol::Dns,
        Transport::Datagram,
        Limits::default(),
        &Privacy::default(),
    );
    assert!(session.is_some());
    assert_eq!(
        detect(&first(&tcp[0].data[..20], Transport::Stream, 15353)),
        Detection::NeedMore
    );
    assert_eq!(
        detect(&first(
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            Transport::Stream,
            80
        )),
        Detection::No
    );
    assert_eq!(
        detect(&first(
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            Transport::Stream,
            5432
        )),
        Detection::No
    );
}

#[test]
fn fuzz_smoke() {
    let limits = Limits::default();
    let bounded = |s: &DnsSession| {
        let max = 2 * (limits.max_message + 2);
        testkit::within(s.buffered(), max, s.pending.len(), limits.max_pending)
    };
    let seeds = vec![testkit::load("dns/tcp.bin")];
    testkit::fuzz(&seeds, Duration::from_secs(1), &tcp, &bounded);
    let seeds = vec![testkit::load("dns/udp.bin")];
    testkit::fuzz(&seeds, Duration::from_secs(1), &udp, &bounded);
}

#[test]
fn tcp_messages_are_kept_only_up_to_the_limit() {
    let limits = Limits {
        max_message: 64,
        ..Limits::default()
    };
    let mut s = DnsSession::new(Transport::Stream, limits, &Privacy::default());
    let mut q = header(9, 0x0100, 1, 0);
    q.extend_from_slice(b"\x01a\x04test\x00\x00\x01\x00\x01");
    q.resize(1000, 0);
    let mut data = (q.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&q[..900]);
    let chunk = testkit::chunk(Direction::ToServer, &data, 1);
    let mut out = Vec::new();
    s.feed(&chunk, &mut out).unwrap();
    assert!(s.buffered() <= 64 + 2, "buffered {}", s.buffered());
    let rest = Chunk {
        data: &q[900..],
        ts_ns: 2,
        ..chunk
    };
    s.feed(&rest, &mut out).unwrap();
    s.close(3, &mut out);
    assert_eq!(
        out[0].fields["query"], "a.test",
        "the question is in the kept prefix"
    );
}

/// `www.test A` with id 7, and its one-address answer.
fn query_and_answer() -> (Vec<u8>, Vec<u8>) {
    let question = b"\x03www\x04test\x00\x00\x01\x00\x01";
    let mut query = header(7, 0x0100, 1, 0);
    query.extend_from_slice(question);
    let mut answer = header(7, 0x8180, 1, 1);
    answer.extend_from_slice(question);
    answer.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01");
    (query, answer)
}

fn sizes(out: &[Exchange]) -> Vec<(u64, u64)> {
    out.iter()
        .map(|e| (e.request_bytes, e.response_bytes))
        .collect()
}

#[test]
fn sizes_are_whole_messages() {
    let (query, answer) = query_and_answer();
    assert_eq!((query.len(), answer.len()), (26, 42));
    // UDP: the datagrams, bytes the capture cut included.
    let mut s = udp();
    let mut out = Vec::new();
    s.feed(&testkit::chunk(Direction::ToServer, &query, 1), &mut out)
        .unwrap();
    let cut = Chunk {
        truncated: 100,
        ..testkit::chunk(Direction::ToClient, &answer, 2)
    };
    s.feed(&cut, &mut out).unwrap();
    // An unanswered query.
    s.feed(&testkit::chunk(Direction::ToServer, &query, 3), &mut out)
        .unwrap();
    s.close(4, &mut out);
    assert_eq!(sizes(&out), [(26, 142), (26, 0)]);
    // TCP: with the 2-byte length prefix.
    let framed = |m: &[u8]| [&(m.len() as u16).to_be_bytes()[..], m].concat();
    let mut s = tcp();
    let mut out = Vec::new();
    let (query, answer) = (framed(&query), framed(&answer));
    s.feed(&testkit::chunk(Direction::ToServer, &query, 1), &mut out)
        .unwrap();
    s.feed(&testkit::chunk(Direction::ToClient, &answer, 2), &mut out)
        .unwrap();
    assert_eq!(sizes(&out), [(28, 44)]);
}

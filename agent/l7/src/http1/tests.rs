//! HTTP/1 tests: golden fixtures recorded from real peers, every-split
//! replays, hostile input.

use super::*;
use crate::detect::FirstBytes;
use crate::testkit::{self, Fixtures};
use crate::{Direction, Transport};

fn session() -> Http1Session {
    Http1Session::new(Limits::default(), &Privacy::default())
}

const FIXTURES: Fixtures = Fixtures {
    dir: "http1",
    names: &[
        "keepalive",
        "pipelined",
        "split-head",
        "head",
        "continue",
        "chunked",
        "http10-close",
        "gzip-chunked",
    ],
};

#[test]
fn fixtures_match_goldens() {
    FIXTURES.assert_goldens(&session);
}

#[test]
fn fixtures_split_anywhere_give_the_same_exchanges() {
    FIXTURES.assert_split_invariant(&session);
}

#[test]
fn fixtures_are_detected() {
    for (name, records) in FIXTURES.load() {
        for direction in [Direction::ToServer, Direction::ToClient] {
            // The first bytes of each direction, however many reads held them.
            let data: Vec<u8> = records
                .iter()
                .filter(|r| r.direction == direction)
                .flat_map(|r| r.data.iter().copied())
                .take(300)
                .collect();
            let first = FirstBytes {
                direction,
                data: &data,
                transport: Transport::Stream,
                server_port: 80,
            };
            assert_eq!(detect(&first), Detection::Yes, "{name}");
            assert_eq!(crate::detect(&first), Ok(Protocol::Http1), "{name}");
            for cut in 0..data.len().min(40) {
                let first = FirstBytes {
                    data: &data[..cut],
                    ..first
                };
                assert_ne!(detect(&first), Detection::No, "{name} prefix {cut}");
            }
        }
    }
}

fn detect_request(data: &[u8]) -> Detection {
    detect(&FirstBytes {
        direction: Direction::ToServer,
        data,
        transport: Transport::Stream,
        server_port: 80,
    })
}

fn detect_response(data: &[u8]) -> Detection {
    detect(&FirstBytes {
        direction: Direction::ToClient,
        data,
        transport: Transport::Stream,
        server_port: 80,
    })
}

#[test]
fn detection() {
    assert_eq!(detect_request(b"GET / HTTP/1.1\r\n"), Detection::Yes);
    assert_eq!(detect_request(b"DELETE /x?y HTTP/1.0\r\n"), Detection::Yes);
    assert_eq!(detect_request(b"GE"), Detection::NeedMore);
    assert_eq!(detect_request(b"GET /very/long"), Detection::NeedMore);
    assert_eq!(detect_request(b"GET / HTTP/2.0\r\n"), Detection::No);
    assert_eq!(detect_request(b"GET / HTTP/1.1"), Detection::Yes);
    assert_eq!(detect_request(b"GET /\r\n"), Detection::No);
    assert_eq!(
        detect_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Detection::No
    );
    assert_eq!(detect_request(b"BREW /pot HTTP/1.1\r\n"), Detection::No);
    assert_eq!(detect_request(b"*3\r\n$3\r\nSET\r\n"), Detection::No);
    assert_eq!(detect_request(&[b'a'; 10]), Detection::No);
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', DETECT_MAX_LINE));
    assert_eq!(detect_request(&long), Detection::No);
    assert_eq!(detect_response(b"HTTP/1.1 200 OK\r\n"), Detection::Yes);
    assert_eq!(detect_response(b"HTTP/1.1 20"), Detection::NeedMore);
    assert_eq!(detect_response(b"HTTP/1.1 2000"), Detection::No);
    assert_eq!(detect_response(b"HTTP/2 200"), Detection::No);
}

/// Feeds one direction's bytes as a chunk.
fn feed(
    s: &mut Http1Session,
    direction: Direction,
    data: &[u8],
    ts_ns: u64,
    out: &mut Vec<Exchange>,
) -> Result<(), ParseError> {
    s.feed(&testkit::chunk(direction, data, ts_ns), out)
}

#[test]
fn latency_runs_from_first_request_byte_to_last_response_byte() {
    let mut s = session();
    let mut out = Vec::new();
    feed(
        &mut s,
        Direction::ToServer,
        b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
        10,
        &mut out,
    )
    .unwrap();
    feed(&mut s, Direction::ToServer, b"body", 20, &mut out).unwrap();
    feed(
        &mut s,
        Direction::ToClient,
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab",
        30,
        &mut out,
    )
    .unwrap();
    assert!(out.is_empty());
    feed(&mut s, Direction::ToClient, b"cdef", 45, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].request_ns, out[0].response_ns, out[0].latency_ns()),
        (10, 45, 35)
    );
}

#[test]
fn bodies_are_never_buffered() {
    let limits = Limits {
        max_message: 256,
        ..Limits::default()
    };
    let mut s = Http1Session::new(limits, &Privacy::default());
    let mut out = Vec::new();
    feed(
        &mut s,
        Direction::ToServer,
        b"PUT /big HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
        1,
        &mut out,
    )
    .unwrap();
    for i in 0..1000 {
        feed(&mut s, Direction::ToServer, &[b'x'; 4096], 2 + i, &mut out).unwrap();
        assert_eq!(s.buffered(), 0);
    }
    // Uncaptured bytes inside the body are absorbed too.
    s.feed(
        &Chunk {
            direction: Direction::ToServer,
            data: b"",
            truncated: 1 << 40,
            gap_before: 1 << 30,
            ts_ns: 5000,
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(s.pending(), 1);
}

#[test]
fn hostile_heads_are_bounded() {
    let limits = Limits {
        max_message: 1024,
        ..Limits::default()
    };
    // Endless headers.
    let mut s = Http1Session::new(limits, &Privacy::default());
    let mut out = Vec::new();
    feed(
        &mut s,
        Direction::ToServer,
        b"GET / HTTP/1.1\r\n",
        1,
        &mut out,
    )
    .unwrap();
    let mut result = Ok(());
    for i in 0..100 {
        result = feed(
            &mut s,
            Direction::ToServer,
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            2 + i,
            &mut out,
        );
        assert!(s.buffered() <= 1024);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result.unwrap_err().kind, ErrorKind::TooLarge(1024));
    // A line without end.
    let mut s = Http1Session::new(limits, &Privacy::default());
    let mut endless = b"GET /".to_vec();
    endless.extend([b'a'; 5000]);
    let err = feed(&mut s, Direction::ToServer, &endless, 1, &mut out).unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooLarge(1024));
    assert!(out.is_empty());
}

#[test]
fn malformed_messages_are_errors() {
    let cases: [(&[u8], &[u8]); 6] = [
        (b"GET / HTTP/1.1\r\nbad\r\n\r\n", b""),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b""),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
            b"",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            b"",
        ),
        (
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ),
        (
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX",
        ),
    ];
    for (request, response) in cases {
        let mut s = session();
        let mut out = Vec::new();
        let r = feed(&mut s, Direction::ToServer, request, 1, &mut out)
            .and_then(|()| feed(&mut s, Direction::ToClient, response, 2, &mut out));
        assert!(
            matches!(
                r,
                Err(ParseError {
                    kind: ErrorKind::Malformed(_),
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

#[test]
fn pipelining_is_bounded() {
    let limits = Limits {
        max_pending: 4,
        ..Limits::default()
    };
    let mut s = Http1Session::new(limits, &Privacy::default());
    let mut out = Vec::new();
    let many = b"GET / HTTP/1.1\r\n\r\n".repeat(5);
    let err = feed(&mut s, Direction::ToServer, &many, 1, &mut out).unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooLarge(4));
    assert!(s.pending() <= 4);
}

#[test]
fn upgrade_stops_parsing() {
    let mut s = session();
    let mut out = Vec::new();
    feed(
        &mut s,
        Direction::ToServer,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        1,
        &mut out,
    )
    .unwrap();
    feed(
        &mut s,
        Direction::ToClient,
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello",
        2,
        &mut out,
    )
    .unwrap();
    feed(
        &mut s,
        Direction::ToServer,
        b"\x81\x85garbage that is not HTTP",
        3,
        &mut out,
    )
    .unwrap();
    s.close(4, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields["status"], 101);
}

#[test]
fn lost_bytes_resynchronise_without_mispairing() {
    let mut s = session();
    let mut out = Vec::new();
    feed(
        &mut s,
        Direction::ToServer,
        b"GET /a HTTP/1.1\r\n\r\n",
        1,
        &mut out,
    )
    .unwrap();
    // The response head was lost: the pending request is dropped and the
    // next response start is found again.
    s.feed(
        &Chunk {
            direction: Direction::ToClient,
            data: b"tail of a lost head\r\n\r\n",
            truncated: 0,
            gap_before: 100,
            ts_ns: 2,
        },
        &mut out,
    )
    .unwrap();
    feed(
        &mut s,
        Direction::ToServer,
        b"GET /b HTTP/1.1\r\n\r\n",
        3,
        &mut out,
    )
    .unwrap();
    feed(
        &mut s,
        Direction::ToClient,
        b"HTTP/1.1 204 No Content\r\n\r\n",
        4,
        &mut out,
    )
    .unwrap();
    s.close(5, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (
            out[0].fields["path"].as_str(),
            out[0].request_ns,
            out[0].response_ns
        ),
        (Some("/b"), 3, 4)
    );
}

#[test]
fn close_flushes_unanswered_requests() {
    let mut s = session();
    let mut out = Vec::new();
    feed(
        &mut s,
        Direction::ToServer,
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        7,
        &mut out,
    )
    .unwrap();
    s.close(9, &mut out);
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|e| !e.answered && e.response_ns == 7 && !e.fields.contains_key("status"))
    );
}

#[test]
fn joined_mid_stream_reports_only_true_exchanges() {
    FIXTURES.assert_joining_invents_nothing(&session);
}

#[test]
fn fuzz_smoke() {
    let seeds = FIXTURES.records();
    let limits = Limits {
        max_message: 512,
        max_pending: 8,
        ..Limits::default()
    };
    testkit::fuzz(
        &seeds,
        std::time::Duration::from_secs(2),
        &|| Http1Session::new(limits, &Privacy::default()),
        &|s| {
            if s.requests.head.len() > 512 || s.responses.head.len() > 512 || s.pending() > 8 {
                Err(format!("buffered {} pending {}", s.buffered(), s.pending()))
            } else {
                Ok(())
            }
        },
    );
}

/// Request and response sizes of each exchange.
fn sizes(out: &[Exchange]) -> Vec<(u64, u64)> {
    out.iter()
        .map(|e| (e.request_bytes, e.response_bytes))
        .collect()
}

/// Feeds whole messages, one chunk each, in order.
fn exchange_all(messages: &[(Direction, &[u8])]) -> Vec<Exchange> {
    let mut s = session();
    let mut out = Vec::new();
    for (i, &(direction, data)) in messages.iter().enumerate() {
        feed(&mut s, direction, data, i as u64 + 1, &mut out).unwrap();
    }
    s.close(1000, &mut out);
    out
}

#[test]
fn sizes_count_heads_and_content_length_bodies() {
    let request: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let response: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let out = exchange_all(&[
        (Direction::ToServer, request),
        (Direction::ToClient, response),
    ]);
    assert_eq!(sizes(&out), [(request.len() as u64, response.len() as u64)]);
    assert_eq!(sizes(&out), [(53, 45)]);
}

#[test]
fn sizes_count_chunked_framing_and_trailers() {
    let request: &[u8] = b"GET /c HTTP/1.1\r\n\r\n";
    let response: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n";
    let out = exchange_all(&[
        (Direction::ToServer, request),
        (Direction::ToClient, response),
    ]);
    assert_eq!(sizes(&out), [(19, response.len() as u64)]);
    assert_eq!(response.len(), 89);
}

#[test]
fn keep_alive_exchanges_have_their_own_sizes() {
    let first: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
    let second: &[u8] = b"PUT /bb HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz";
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd";
    let no_content: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    let out = exchange_all(&[
        (Direction::ToServer, first),
        (Direction::ToClient, ok),
        (Direction::ToServer, second),
        (Direction::ToClient, no_content),
    ]);
    assert_eq!(sizes(&out), [(28, 42), (51, 27)]);
    // Pipelined in one write each way, the split is the same.
    let requests = [first, second].concat();
    let responses = [ok, no_content].concat();
    let out = exchange_all(&[
        (Direction::ToServer, &requests),
        (Direction::ToClient, &responses),
    ]);
    assert_eq!(sizes(&out), [(28, 42), (51, 27)]);
}

#[test]
fn sizes_count_bytes_the_capture_cut() {
    let head: &[u8] = b"POST /upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    let mut s = session();
    let mut out = Vec::new();
    // The capture kept the head and 10 bytes of the body.
    let captured = [head, &[b'x'; 10]].concat();
    s.feed(
        &Chunk {
            truncated: 99_990,
            ..testkit::chunk(Direction::ToServer, &captured, 1)
        },
        &mut out,
    )
    .unwrap();
    // A response with a 5000-byte body of which only 100 were captured.
    let response_head: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n";
    let response = [response_head, &[b'y'; 100]].concat();
    s.feed(
        &Chunk {
            truncated: 4900,
            ..testkit::chunk(Direction::ToClient, &response, 2)
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(
        sizes(&out),
        [(
            head.len() as u64 + 100_000,
            response_head.len() as u64 + 5000
        )]
    );
}

#[test]
fn interim_responses_count_in_the_final_response() {
    let request: &[u8] = b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    let interim: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let done: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    let out = exchange_all(&[
        (Direction::ToServer, request),
        (Direction::ToClient, interim),
        (Direction::ToServer, b"hi"),
        (Direction::ToClient, done),
    ]);
    assert_eq!(
        sizes(&out),
        [(
            request.len() as u64 + 2,
            (interim.len() + done.len()) as u64
        )]
    );
}

#[test]
fn unanswered_requests_have_no_response_size() {
    let out = exchange_all(&[
        (Direction::ToServer, b"GET /a HTTP/1.1\r\n\r\n"),
        (
            Direction::ToServer,
            b"POST /b HTTP/1.1\r\nContent-Length: 8\r\n\r\nabc",
        ),
    ]);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|e| !e.answered));
    // The second request's body was still being sent: what was sent counts.
    assert_eq!(sizes(&out), [(19, 0), (42, 0)]);
}

#[test]
fn a_response_framed_by_close_counts_to_the_close() {
    let out = exchange_all(&[
        (Direction::ToServer, b"GET / HTTP/1.0\r\n\r\n"),
        (Direction::ToClient, b"HTTP/1.0 200 OK\r\n\r\n"),
        (Direction::ToClient, b"0123456789"),
    ]);
    assert_eq!(sizes(&out), [(18, 29)]);
}

//! HTTP/2 and gRPC tests: golden fixtures recorded from real peers
//! (nghttp and curl against nginx, grpcio), every-split replays, joining
//! mid-stream, hostile frames.

use super::*;
use crate::testkit::{self, Fixtures};
use crate::{Direction, Transport};

fn session() -> Http2Session {
    Http2Session::new(Limits::default(), &Privacy::default())
}

const FIXTURES: Fixtures = Fixtures {
    dir: "http2",
    names: &["multiplexed", "head", "post", "grpc"],
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
            let first = records.iter().find(|r| r.direction == direction).unwrap();
            let first = FirstBytes {
                direction,
                data: &first.data,
                transport: Transport::Stream,
                server_port: 80,
            };
            assert_eq!(crate::detect(&first), Ok(Protocol::Http2), "{name}");
            let need = if direction == Direction::ToServer {
                frame::PREFACE.len()
            } else {
                9
            };
            for cut in 0..need {
                let first = FirstBytes {
                    data: &first.data[..cut],
                    ..first
                };
                assert_eq!(detect(&first), Detection::NeedMore, "{name} prefix {cut}");
            }
        }
    }
    let no = FirstBytes {
        direction: Direction::ToServer,
        data: b"GET / HTTP/1.1\r\n",
        transport: Transport::Stream,
        server_port: 80,
    };
    assert_eq!(detect(&no), Detection::No);
}

/// Joining at any record reports nothing made up, e.g. from a header
/// table we did not see.
#[test]
fn joined_mid_stream_reports_only_true_exchanges() {
    FIXTURES.assert_joining_invents_nothing(&session);
}

/// The same with lost bytes in the middle: an exchange whose frames were
/// lost may go missing, none may be wrong.
#[test]
fn lost_bytes_never_produce_wrong_exchanges() {
    for (name, records) in FIXTURES.load() {
        let full = testkit::exchanges_json(&records, &session);
        for lost in 1..records.len() {
            let mut s = session();
            let mut out = Vec::new();
            for (i, r) in records.iter().enumerate() {
                let (data, gap) = if i == lost {
                    (&r.data[r.data.len() / 2..], r.data.len() / 2)
                } else {
                    (&r.data[..], 0)
                };
                let chunk = Chunk {
                    gap_before: gap,
                    ..testkit::chunk(r.direction, data, testkit::ts_of(i))
                };
                s.feed(&chunk, &mut out).unwrap();
            }
            s.close(u64::MAX, &mut out);
            // A response whose end was lost ends at its last byte seen (and
            // counts the bytes seen), and a gRPC status in lost trailers is
            // unknown: less, never wrong.
            for e in out.iter().filter(|e| e.answered) {
                let same = |f: &&Value| {
                    let mut f = (*f).clone();
                    let end = f["response_ns"].as_u64().unwrap();
                    let size = f["response_bytes"].as_u64().unwrap();
                    f["response_ns"] = e.response_ns.into();
                    f["response_bytes"] = e.response_bytes.into();
                    if !e.fields.contains_key("grpc_status") {
                        f["fields"].as_object_mut().unwrap().remove("grpc_status");
                        if let Some(rpc) = f["metric"].get_mut("rpc") {
                            rpc["status_code"] = Value::Null;
                        }
                    }
                    f == testkit::exchange_json(e)
                        && e.response_ns <= end
                        && e.response_bytes <= size
                };
                assert!(
                    full.iter().any(|f| same(&f)),
                    "{name} lost in {lost}: wrong {e:?}"
                );
            }
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn preface() -> Vec<u8> {
    let mut p = frame::PREFACE.to_vec();
    p.extend(frame(frame::SETTINGS, 0, 0, &[]));
    p
}

fn feed(
    s: &mut Http2Session,
    direction: Direction,
    data: &[u8],
    out: &mut Vec<Exchange>,
) -> Result<(), ParseError> {
    s.feed(&testkit::chunk(direction, data, 1), out)
}

/// GET / on stream 1, http, :authority "a" (all from the static table).
const GET: &[u8] = &[0x82, 0x84, 0x86, 0x41, 0x01, b'a'];

#[test]
fn hpack_index_out_of_range_is_an_error() {
    let mut s = session();
    let mut out = Vec::new();
    let mut bytes = preface();
    bytes.extend(frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &[0x82, 0xff, 0x10],
    ));
    let err = feed(&mut s, Direction::ToServer, &bytes, &mut out).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Malformed("index out of range"));
}

#[test]
fn table_size_bomb_is_refused() {
    let limits = Limits {
        max_hpack_table: 8192,
        ..Limits::default()
    };
    let mut s = Http2Session::new(limits, &Privacy::default());
    let mut out = Vec::new();
    // The server allows a 1 GiB table; the client announces 1 GiB.
    let settings = frame(frame::SETTINGS, 0, 0, &[0, 1, 0x40, 0, 0, 0]);
    feed(&mut s, Direction::ToClient, &settings, &mut out).unwrap();
    let mut bytes = preface();
    let mut block = vec![0x3f, 0xe1, 0xff, 0xff, 0x03]; // size update to 31 + 0x61 + ...
    block.extend_from_slice(GET);
    bytes.extend(frame(frame::HEADERS, frame::END_HEADERS, 1, &block));
    let err = feed(&mut s, Direction::ToServer, &bytes, &mut out).unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooLarge(8192));
}

#[test]
fn continuation_flood_is_bounded() {
    let limits = Limits {
        max_message: 4096,
        ..Limits::default()
    };
    let mut s = Http2Session::new(limits, &Privacy::default());
    let mut out = Vec::new();
    feed(&mut s, Direction::ToServer, &preface(), &mut out).unwrap();
    feed(
        &mut s,
        Direction::ToServer,
        &frame(frame::HEADERS, 0, 1, GET),
        &mut out,
    )
    .unwrap();
    let filler = frame(frame::CONTINUATION, 0, 1, &[0x84; 1000]);
    let mut result = Ok(());
    for _ in 0..10 {
        result = feed(&mut s, Direction::ToServer, &filler, &mut out);
        assert!(s.buffered() <= 4096);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result.unwrap_err().kind, ErrorKind::TooLarge(4096));
}

#[test]
fn interleaved_header_blocks_are_errors() {
    let mut s = session();
    let mut out = Vec::new();
    let mut bytes = preface();
    bytes.extend(frame(frame::HEADERS, 0, 1, GET));
    bytes.extend(frame(frame::DATA, 0, 1, b"x"));
    let err = feed(&mut s, Direction::ToServer, &bytes, &mut out).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Malformed("header block interrupted"));
}

#[test]
fn streams_pair_out_of_order_and_resets() {
    let mut s = session();
    let mut out = Vec::new();
    let mut bytes = preface();
    for id in [1, 3, 5] {
        bytes.extend(frame(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            id,
            GET,
        ));
    }
    feed(&mut s, Direction::ToServer, &bytes, &mut out).unwrap();
    let mut resp = frame(frame::SETTINGS, 0, 0, &[]);
    resp.extend(frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        5,
        &[0x8d],
    )); // 404
    resp.extend(frame(frame::HEADERS, frame::END_HEADERS, 1, &[0x88])); // 200
    resp.extend(frame(frame::RST_STREAM, 0, 3, &[0, 0, 0, 8])); // CANCEL
    resp.extend(frame(frame::DATA, frame::END_STREAM, 1, b"body"));
    feed(&mut s, Direction::ToClient, &resp, &mut out).unwrap();
    let got: Vec<(Option<&Value>, Option<&Value>, bool)> = out
        .iter()
        .map(|e| {
            (
                e.fields.get("status"),
                e.fields.get("rst_error_code"),
                e.answered,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(&Value::from(404)), None, true),
            (None, Some(&Value::from(8)), false),
            (Some(&Value::from(200)), None, true)
        ]
    );
}

#[test]
fn too_many_streams_evict_the_oldest() {
    let limits = Limits {
        max_pending: 2,
        ..Limits::default()
    };
    let mut s = Http2Session::new(limits, &Privacy::default());
    let mut out = Vec::new();
    let mut bytes = preface();
    for id in [1, 3, 5] {
        bytes.extend(frame(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            id,
            GET,
        ));
    }
    feed(&mut s, Direction::ToServer, &bytes, &mut out).unwrap();
    assert_eq!(s.pending(), 2);
    assert_eq!(out.len(), 1);
    assert!(!out[0].answered);
}

#[test]
fn garbage_after_preface_is_an_error_not_a_panic() {
    let mut s = session();
    let mut out = Vec::new();
    let mut bytes = frame::PREFACE.to_vec();
    bytes.extend(b"GET / HTTP/1.1\r\n\r\n");
    assert!(feed(&mut s, Direction::ToServer, &bytes, &mut out).is_err());
}

#[test]
fn fuzz_smoke() {
    let seeds = FIXTURES.records();
    let limits = Limits {
        max_message: 2048,
        max_pending: 8,
        max_hpack_table: 4096,
        ..Limits::default()
    };
    testkit::fuzz(
        &seeds,
        std::time::Duration::from_secs(2),
        &|| Http2Session::new(limits, &Privacy::default()),
        &|s| {
            let tables = s.hpack_table_sizes();
            // A frame payload and a header block of at most max_message each
            // per direction.
            if s.buffered() > 4 * 2048 || tables.iter().any(|&t| t > 4096) || s.pending() > 8 {
                Err(format!(
                    "buffered {} tables {tables:?} pending {}",
                    s.buffered(),
                    s.pending()
                ))
            } else {
                Ok(())
            }
        },
    );
}

/// An HPACK literal field without indexing, new name (RFC 7541 §6.2.2),
/// both strings raw (no Huffman) and shorter than 127 bytes.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

#[test]
fn the_trace_context_fields_reach_the_exchange() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = GET.to_vec();
    headers.extend(literal("traceparent", tp));
    headers.extend(literal("tracestate", "vendor=abc"));
    let mut s = session();
    let mut out = Vec::new();
    let mut bytes = preface();
    let flags = frame::END_HEADERS | frame::END_STREAM;
    bytes.extend(frame(frame::HEADERS, flags, 1, &headers));
    // A second request without them.
    bytes.extend(frame(frame::HEADERS, flags, 3, GET));
    feed(&mut s, Direction::ToServer, &bytes, &mut out).unwrap();
    let mut resp = frame(frame::SETTINGS, 0, 0, &[]);
    for id in [1, 3] {
        resp.extend(frame(frame::HEADERS, flags, id, &[0x88]));
    }
    feed(&mut s, Direction::ToClient, &resp, &mut out).unwrap();
    let got: Vec<(Option<&str>, Option<&str>)> = out
        .iter()
        .map(|e| (e.traceparent.as_deref(), e.tracestate.as_deref()))
        .collect();
    assert_eq!(got, vec![(Some(tp), Some("vendor=abc")), (None, None)]);
    // Never in records.
    assert!(out.iter().all(|e| !e.fields.contains_key("traceparent")));
}

/// Each stream counts its own HEADERS, CONTINUATION and DATA frames
/// (9-byte headers included), however the streams interleave; other
/// frames count for no exchange, and a stream reset before its response
/// has no response size.
#[test]
fn sizes_are_per_stream_frames() {
    let mut s = session();
    let mut out = Vec::new();
    // POST / on stream 1: its header block split over HEADERS and
    // CONTINUATION, then 5 + 3 body bytes; GETs on streams 3 and 5.
    let mut bytes = preface();
    bytes.extend(frame(frame::HEADERS, 0, 1, &[0x83, 0x84, 0x86]));
    bytes.extend(frame(frame::CONTINUATION, frame::END_HEADERS, 1, &GET[3..]));
    let flags = frame::END_HEADERS | frame::END_STREAM;
    bytes.extend(frame(frame::HEADERS, flags, 3, GET));
    bytes.extend(frame(frame::DATA, 0, 1, b"hello"));
    bytes.extend(frame(frame::WINDOW_UPDATE, 0, 3, &[0, 0, 1, 0]));
    bytes.extend(frame(frame::DATA, frame::END_STREAM, 1, b"abc"));
    bytes.extend(frame(frame::HEADERS, flags, 5, GET));
    feed(&mut s, Direction::ToServer, &bytes, &mut out).unwrap();
    let mut resp = frame(frame::SETTINGS, 0, 0, &[]);
    resp.extend(frame(frame::HEADERS, frame::END_HEADERS, 3, &[0x88]));
    resp.extend(frame(frame::HEADERS, frame::END_HEADERS, 1, &[0x88]));
    resp.extend(frame(frame::DATA, 0, 3, b"abc"));
    resp.extend(frame(frame::PING, 0, 0, &[0; 8]));
    resp.extend(frame(frame::DATA, frame::END_STREAM, 1, b"hello world"));
    resp.extend(frame(frame::DATA, frame::END_STREAM, 3, b"de"));
    resp.extend(frame(frame::RST_STREAM, 0, 5, &[0, 0, 0, 7]));
    feed(&mut s, Direction::ToClient, &resp, &mut out).unwrap();
    let got: Vec<(u64, u64, bool)> = out
        .iter()
        .map(|e| (e.request_bytes, e.response_bytes, e.answered))
        .collect();
    assert_eq!(
        got,
        [
            (12 + 12 + 14 + 12, 10 + 20, true),
            (15, 10 + 12 + 11, true),
            (15, 0, false)
        ]
    );
}

/// A DATA payload the capture cut still counts whole.
#[test]
fn sizes_count_uncaptured_data() {
    let mut s = session();
    let mut out = Vec::new();
    let mut bytes = preface();
    bytes.extend(frame(
        frame::HEADERS,
        frame::END_HEADERS,
        1,
        &[0x83, 0x84, 0x86, 0x41, 0x01, b'a'],
    ));
    let mut data = frame(frame::DATA, frame::END_STREAM, 1, &[b'x'; 10_000]);
    let cut = data.len() - 9_000;
    data.truncate(cut);
    bytes.extend(&data);
    s.feed(
        &Chunk {
            truncated: 9_000,
            ..testkit::chunk(Direction::ToServer, &bytes, 1)
        },
        &mut out,
    )
    .unwrap();
    let resp = frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &[0x88],
    );
    feed(&mut s, Direction::ToClient, &resp, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].request_bytes, out[0].response_bytes),
        (15 + 10_009, 10)
    );
}

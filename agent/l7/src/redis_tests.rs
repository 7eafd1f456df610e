use std::time::Duration;

use super::*;
use crate::testkit::{self, Fixtures};

fn session() -> RedisSession {
    RedisSession::new(Limits::default(), &Privacy::default())
}

const FIXTURES: Fixtures = Fixtures {
    dir: "redis",
    names: &["resp2", "pipeline", "resp3", "pubsub"],
};

#[test]
fn resp2_commands_errors_and_inline() {
    FIXTURES.assert_recording("resp2", &session);
}

#[test]
fn pipelined_commands_pair_in_order() {
    FIXTURES.assert_recording("pipeline", &session);
}

#[test]
fn resp3_types_and_push_frames() {
    FIXTURES.assert_recording("resp3", &session);
}

#[test]
fn pubsub_messages_are_not_replies() {
    FIXTURES.assert_recording("pubsub", &session);
}

/// A read or write of which the last `truncated` bytes were not captured.
fn chunk(direction: Direction, data: &[u8], truncated: usize, ts_ns: u64) -> Chunk<'_> {
    Chunk {
        truncated,
        ..testkit::chunk(direction, data, ts_ns)
    }
}

#[test]
fn values_are_shown_when_privacy_allows() {
    let privacy = Privacy {
        obfuscate_redis_values: false,
        ..Privacy::default()
    };
    let mut s = RedisSession::new(Limits::default(), &privacy);
    let mut out = Vec::new();
    s.feed(
        &chunk(
            Direction::ToServer,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n",
            0,
            1,
        ),
        &mut out,
    )
    .unwrap();
    s.feed(
        &chunk(
            Direction::ToServer,
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n",
            0,
            2,
        ),
        &mut out,
    )
    .unwrap();
    s.feed(
        &chunk(Direction::ToClient, b"+OK\r\n-WRONGPASS invalid\r\n", 0, 3),
        &mut out,
    )
    .unwrap();
    assert_eq!(out[0].fields["statement"], "SET k hello");
    assert_eq!(out[1].fields["statement"], "AUTH ?");
    assert_eq!(out[1].fields["error_code"], "WRONGPASS");
    let mut s = session();
    let mut out = Vec::new();
    s.feed(
        &chunk(
            Direction::ToServer,
            b"*3\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n",
            0,
            1,
        ),
        &mut out,
    )
    .unwrap();
    s.close(2, &mut out);
    assert_eq!(out[0].fields["statement"], "HELLO ?");
    assert!(!out[0].answered);
}

#[test]
fn credentials_are_hidden_when_values_are_shown() {
    let privacy = Privacy {
        obfuscate_redis_values: false,
        ..Privacy::default()
    };
    let cases: [(&[&str], &str); 7] = [
        (&["AUTH", "user", "pw"], "AUTH ? ?"),
        (
            &["HELLO", "3", "AUTH", "user", "pw", "SETNAME", "app"],
            "HELLO 3 AUTH ? ? ? ?",
        ),
        (
            &["MIGRATE", "h", "6379", "k", "0", "5000", "AUTH2", "u", "pw"],
            "MIGRATE h 6379 k 0 5000 AUTH2 ? ?",
        ),
        (
            &["ACL", "SETUSER", "alice", "on", ">pw", "#ab12", "~keys:*"],
            "ACL SETUSER alice on ? ? ~keys:*",
        ),
        (
            &["config", "set", "maxmemory", "1gb", "requirepass", "pw"],
            "CONFIG set maxmemory 1gb requirepass ?",
        ),
        (&["CONFIG", "SET", "requirepass"], "CONFIG SET requirepass"),
        (&["SET", "k", "hello"], "SET k hello"),
    ];
    for (args, want) in cases {
        let mut command = format!("*{}\r\n", args.len());
        for a in args {
            command.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let mut s = RedisSession::new(Limits::default(), &privacy);
        let mut out = Vec::new();
        s.feed(
            &chunk(Direction::ToServer, command.as_bytes(), 0, 1),
            &mut out,
        )
        .unwrap();
        s.feed(&chunk(Direction::ToClient, b"+OK\r\n", 0, 2), &mut out)
            .unwrap();
        assert_eq!(out[0].fields["statement"], want, "{args:?}");
    }
}

#[test]
fn a_big_value_cut_by_the_capture_still_pairs() {
    let mut s = session();
    let mut out = Vec::new();
    let head = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$100000\r\nxxxx";
    // The rest of the value and its CRLF were not captured.
    let missing = 100_000 - 4 + 2;
    s.feed(&chunk(Direction::ToServer, head, missing, 1), &mut out)
        .unwrap();
    s.feed(&chunk(Direction::ToClient, b"+OK\r\n", 0, 2), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields["statement"], "SET big ?");
    assert_eq!(
        (out[0].request_ns, out[0].response_ns, out[0].answered),
        (1, 2, true)
    );
    // A cut that swallows lines: the reply is reported as truncated and
    // parsing resumes with the next command.
    s.feed(
        &chunk(Direction::ToServer, b"*1\r\n$4\r\nKEYS\r\n", 0, 3),
        &mut out,
    )
    .unwrap();
    s.feed(
        &chunk(Direction::ToClient, b"*1000\r\n$1\r\na\r\n", 9000, 4),
        &mut out,
    )
    .unwrap();
    s.feed(
        &chunk(Direction::ToClient, b"\r\n$1\r\nb\r\n", 0, 5),
        &mut out,
    )
    .unwrap();
    s.feed(&chunk(Direction::ToServer, b"PING\r\n", 0, 6), &mut out)
        .unwrap();
    s.feed(&chunk(Direction::ToClient, b"+PONG\r\n", 0, 7), &mut out)
        .unwrap();
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(
        (out[1].response_ns, &out[1].fields["truncated"]),
        (5, &Json::Bool(true))
    );
    assert_eq!(out[2].fields["command"], "PING");
}

#[test]
fn hostile_input_is_an_error_not_an_allocation() {
    for bad in [
        &b"*1\r\n$-7\r\n"[..],
        b"*3\r\n$99999999999999\r\n",
        b"*1\r\n$?\r\n",
    ] {
        let mut s = session();
        let mut out = Vec::new();
        assert!(
            s.feed(&chunk(Direction::ToServer, bad, 0, 1), &mut out)
                .is_err(),
            "{bad:?}"
        );
    }
    let deep = "*1\r\n".repeat(10_000);
    let mut s = session();
    let mut out = Vec::new();
    s.feed(&chunk(Direction::ToServer, b"PING\r\n", 0, 1), &mut out)
        .unwrap();
    assert!(
        s.feed(&chunk(Direction::ToClient, deep.as_bytes(), 0, 2), &mut out)
            .is_err()
    );
    // An endless inline line keeps a bounded prefix.
    let mut s = session();
    for _ in 0..100 {
        s.feed(&chunk(Direction::ToServer, &[b'a'; 10_000], 0, 1), &mut out)
            .unwrap();
    }
    assert!(s.buffered() <= MAX_ARGS * Limits::default().max_field + 1);
}

#[test]
fn detection() {
    let first = |data| FirstBytes {
        direction: Direction::ToServer,
        data,
        transport: crate::Transport::Stream,
        server_port: 6379,
    };
    assert_eq!(detect(&first(b"*2\r\n$3\r\nGET")), Detection::Yes);
    assert_eq!(
        crate::detect(&first(b"*2\r\n$3\r\nGET")),
        Ok(Protocol::Redis)
    );
    assert_eq!(detect(&first(b"*2\r")), Detection::NeedMore);
    assert_eq!(detect(&first(b"*")), Detection::NeedMore);
    assert_eq!(detect(&first(b"GET / HTTP/1.1")), Detection::No);
    assert_eq!(detect(&first(b"*\r\n$")), Detection::No);
}

#[test]
fn fuzz_smoke() {
    let seeds = FIXTURES.records();
    let limits = Limits::default();
    testkit::fuzz(
        &seeds,
        Duration::from_secs(2),
        &session,
        &|s: &RedisSession| {
            let max =
                (MAX_ARGS + 2) * limits.max_field + REPLY_KEEP + 2 * crate::resp::MAX_DEPTH * 16;
            testkit::within(s.buffered(), max, s.pending.len(), limits.max_pending)
        },
    );
}

fn sizes(out: &[Exchange]) -> Vec<(u64, u64)> {
    out.iter()
        .map(|e| (e.request_bytes, e.response_bytes))
        .collect()
}

#[test]
fn sizes_are_the_command_and_its_reply() {
    let mut s = session();
    let mut out = Vec::new();
    let set: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
    let get: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    s.feed(
        &chunk(Direction::ToServer, &[set, get].concat(), 0, 1),
        &mut out,
    )
    .unwrap();
    s.feed(
        &chunk(Direction::ToClient, b"+OK\r\n$5\r\nhello\r\n", 0, 2),
        &mut out,
    )
    .unwrap();
    // Inline, and left unanswered.
    s.feed(&chunk(Direction::ToServer, b"PING\r\n", 0, 3), &mut out)
        .unwrap();
    s.close(4, &mut out);
    assert_eq!(sizes(&out), [(31, 5), (20, 11), (6, 0)]);
    assert_eq!((set.len(), get.len()), (31, 20));
}

#[test]
fn sizes_count_a_value_the_capture_cut() {
    let mut s = session();
    let mut out = Vec::new();
    let head = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$100000\r\nxxxx";
    let missing = 100_000 - 4 + 2;
    s.feed(&chunk(Direction::ToServer, head, missing, 1), &mut out)
        .unwrap();
    let reply = b"$100000\r\nyy";
    s.feed(&chunk(Direction::ToClient, reply, 100_000, 2), &mut out)
        .unwrap();
    assert_eq!(
        sizes(&out),
        [(
            (head.len() + missing) as u64,
            (reply.len() + 100_000) as u64
        )]
    );
}

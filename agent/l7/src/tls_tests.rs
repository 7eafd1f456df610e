use super::*;
use crate::testkit::{self, Fixtures};
use crate::{Transport, detect::FirstBytes};

/// Real handshakes (record.py): Python's ssl client and server.
const FIXTURES: Fixtures = Fixtures {
    dir: "tls",
    names: &[
        "tls13",
        "tls13_one_alpn",
        "tls12",
        "tls13_unknown_ca",
        "tls12_unknown_ca",
        "no_shared_version",
        "tls13_client_cert_required",
        "tls12_client_cert_required",
    ],
};

/// The fields of the one exchange a recording gives.
fn fields(name: &str) -> Map<String, Value> {
    let records = testkit::load(&format!("tls/{name}.bin"));
    let (out, err) = testkit::replay(&mut TlsSession::new(), &testkit::pieces(&records));
    assert!(err.is_none(), "{name}: {err:?}");
    assert_eq!(out.len(), 1, "{name}: one handshake");
    out[0].fields.clone()
}

#[test]
fn goldens_and_every_split() {
    for name in FIXTURES.names {
        FIXTURES.assert_recording(name, &TlsSession::new);
    }
}

#[test]
fn tls13_names_the_sni_version_and_the_offer() {
    let f = fields("tls13");
    assert_eq!(f["sni"], "api.weft.test");
    assert_eq!(f["version"], "1.3");
    assert_eq!(f["outcome"], "ok");
    // Two offered, the choice encrypted: not guessed.
    assert_eq!(f["alpn"], Value::Null);
    assert_eq!(f["alpn_offered"], serde_json::json!(["h2", "http/1.1"]));
    assert!(f.get("failure").is_none());
}

#[test]
fn tls13_with_one_protocol_offered_names_it() {
    assert_eq!(fields("tls13_one_alpn")["alpn"], "http/1.1");
}

#[test]
fn tls12_names_the_negotiated_protocol() {
    let f = fields("tls12");
    assert_eq!(f["version"], "1.2");
    assert_eq!(f["alpn"], "h2");
    assert_eq!(f["outcome"], "ok");
}

#[test]
fn a_refused_certificate_fails_the_handshake() {
    // OpenSSL's client refuses before it switches keys: a cleartext alert,
    // in TLS 1.3 as in 1.2.
    for (name, version) in [("tls13_unknown_ca", "1.3"), ("tls12_unknown_ca", "1.2")] {
        let f = fields(name);
        assert_eq!(f["version"], version, "{name}");
        assert_eq!(f["outcome"], "failed", "{name}");
        assert_eq!(f["failure"], "unknown_ca", "{name}");
    }
}

/// Mutual TLS, a client with no certificate: TLS 1.2 servers refuse in
/// the clear; a TLS 1.3 server after the client's Finished, encrypted, with
/// a record of an alert's size where its session tickets would come.
#[test]
fn a_server_refusing_the_client_fails_the_handshake() {
    let f = fields("tls12_client_cert_required");
    assert_eq!(
        (&f["version"], &f["outcome"]),
        (&"1.2".into(), &"failed".into())
    );
    assert_eq!(f["failure"], "handshake_failure");
    let f = fields("tls13_client_cert_required");
    assert_eq!(
        (&f["version"], &f["outcome"]),
        (&"1.3".into(), &"failed".into())
    );
    assert_eq!(f["failure"], "encrypted_alert");
    assert_eq!(f["sni"], "api.weft.test");
}

/// An accepting TLS 1.3 server's first record after the client's Finished
/// (a session ticket) confirms the handshake, which ended at the Finished:
/// the record comes then, with the Finished's time and sizes; a close with
/// nothing from the server confirms it too.
#[test]
fn a_tls13_handshake_is_confirmed_by_the_servers_next_record() {
    let records = testkit::load("tls/tls13.bin");
    let (whole, _) = testkit::replay(&mut TlsSession::new(), &testkit::pieces(&records));
    let finished = records
        .iter()
        .position(|r| r.direction == Direction::ToServer && r.data[0] == CHANGE_CIPHER_SPEC)
        .expect("the client's Finished flight");
    let mut session = TlsSession::new();
    let mut out = Vec::new();
    for (i, r) in records[..=finished].iter().enumerate() {
        let chunk = testkit::chunk(r.direction, &r.data, testkit::ts_of(i));
        session.feed(&chunk, &mut out).expect("feed");
    }
    assert!(out.is_empty(), "waits for the server: {out:?}");
    session.close(testkit::ts_of(99), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields["outcome"], "ok");
    assert_eq!(out[0].response_ns, whole[0].response_ns);
    assert_eq!(out[0].request_bytes, whole[0].request_bytes);
    assert_eq!(out[0].response_bytes, whole[0].response_bytes);
}

#[test]
fn a_protected_alert_in_place_of_the_finished_fails_the_handshake() {
    let records = testkit::load("tls/tls13.bin");
    let mut session = TlsSession::new();
    let mut out = Vec::new();
    for (i, r) in records[..2].iter().enumerate() {
        let chunk = testkit::chunk(r.direction, &r.data, testkit::ts_of(i));
        session.feed(&chunk, &mut out).expect("feed");
    }
    // ChangeCipherSpec, then a protected record of an alert's size.
    let mut client = vec![CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1];
    client.extend([APPLICATION_DATA, 3, 3, 0, PROTECTED_ALERT_LEN as u8]);
    client.extend([0xaa; PROTECTED_ALERT_LEN]);
    let chunk = testkit::chunk(Direction::ToServer, &client, 9_000);
    session.feed(&chunk, &mut out).expect("feed");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields["outcome"], "failed");
    assert_eq!(out[0].fields["failure"], "encrypted_alert");
    assert_eq!(out[0].fields["handshake_us"], 8);
}

#[test]
fn no_shared_version_is_the_servers_alert() {
    let f = fields("no_shared_version");
    assert_eq!(f["version"], Value::Null, "no ServerHello");
    assert_eq!(f["outcome"], "failed");
    assert_eq!(f["failure"], "protocol_version");
    assert_eq!(f["sni"], "api.weft.test");
}

#[test]
fn joining_late_makes_nothing_up() {
    FIXTURES.assert_joining_invents_nothing(&TlsSession::new);
}

#[test]
fn a_connection_closed_mid_handshake_is_a_failure() {
    let records = testkit::load("tls/tls13.bin");
    // The ClientHello alone, then the close.
    let mut session = TlsSession::new();
    let mut out = Vec::new();
    let hello = &records[0];
    assert_eq!(hello.direction, Direction::ToServer);
    session
        .feed(
            &testkit::chunk(Direction::ToServer, &hello.data, 1_000),
            &mut out,
        )
        .expect("feed");
    session.close(5_000, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields["failure"], "closed");
    assert_eq!(out[0].fields["handshake_us"], 4);
    assert!(!out[0].answered);
}

#[test]
fn a_hello_cut_by_the_capture_still_names_what_came_first() {
    let records = testkit::load("tls/tls13.bin");
    let hello = &records[0].data;
    // The capture kept the first 200 bytes: the SNI is among the first
    // extensions OpenSSL writes, ALPN later.
    let mut session = TlsSession::new();
    let mut out = Vec::new();
    let chunk = Chunk {
        truncated: hello.len() - 200,
        ..testkit::chunk(Direction::ToServer, &hello[..200], 1_000)
    };
    session.feed(&chunk, &mut out).expect("feed");
    for r in &records[1..] {
        session
            .feed(&testkit::chunk(r.direction, &r.data, 2_000), &mut out)
            .expect("feed");
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields["sni"], "api.weft.test");
    assert_eq!(out[0].fields["outcome"], "ok");
}

#[test]
fn cut_bytes_past_a_record_lose_the_direction_until_a_header_starts_a_chunk() {
    let mut r = Records::default();
    let mut out = Vec::new();
    // A 10-byte record, of which 3 bytes were captured and 20 cut: the cut
    // runs past it, into bytes no header was read for.
    let head = [APPLICATION_DATA, 3, 3, 0, 10, 1, 2, 3];
    let chunk = Chunk {
        truncated: 20,
        ..testkit::chunk(Direction::ToClient, &head, 1)
    };
    r.push(&chunk, |_| 0, &mut out);
    assert!(r.lost);
    assert_eq!(out.len(), 1, "the record itself is given");
    // Garbage at a chunk's start stays lost; a header resynchronises.
    r.push(
        &testkit::chunk(Direction::ToClient, &[9, 9, 9, 9, 9, 9], 2),
        |_| 0,
        &mut out,
    );
    assert!(r.lost);
    r.push(
        &testkit::chunk(Direction::ToClient, &[CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1], 3),
        |_| 0,
        &mut out,
    );
    assert!(!r.lost);
    assert_eq!(out.last().map(|r| r.content_type), Some(CHANGE_CIPHER_SPEC));
}

#[test]
fn detects_a_client_hello_only() {
    let first = |data: &'static [u8], direction| FirstBytes {
        direction,
        data,
        transport: Transport::Stream,
        server_port: 443,
    };
    let hello: &[u8] = &[0x16, 3, 1, 0, 200, 1];
    assert_eq!(detect(&first(hello, Direction::ToServer)), Detection::Yes);
    assert_eq!(
        detect(&first(&hello[..3], Direction::ToServer)),
        Detection::NeedMore
    );
    assert_eq!(detect(&first(hello, Direction::ToClient)), Detection::No);
    // A ServerHello, or HTTP.
    assert_eq!(
        detect(&first(&[0x16, 3, 3, 0, 90, 2], Direction::ToServer)),
        Detection::No
    );
    assert_eq!(
        detect(&first(b"GET / HTTP/1.1\r\n", Direction::ToServer)),
        Detection::No
    );
    assert_eq!(
        crate::detect(&first(hello, Direction::ToServer)),
        Ok(Protocol::Tls)
    );
}

#[test]
fn bounded_and_never_failing_under_mutation() {
    let seeds = FIXTURES.records();
    testkit::fuzz(
        &seeds,
        std::time::Duration::from_secs(2),
        &TlsSession::new,
        &|s: &TlsSession| {
            testkit::within(s.buffered(), 2 * (HEADER + MAX_HELLO), s.records.len(), 0)?;
            // Never an error: feed returns Ok whatever the bytes.
            Ok(())
        },
    );
}

//! RFC 7541 Appendix C examples as golden tests, and hostile blocks.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode(d: &mut Decoder, block: &str) -> Result<(Block, Vec<(String, String)>), HpackError> {
    let mut fields = Vec::new();
    let block = d.decode(&hex(block), &mut |n, v| {
        fields.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ))
    })?;
    Ok((block, fields))
}

fn table(d: &Decoder) -> Vec<(String, String, usize)> {
    d.table
        .iter()
        .map(|e| {
            let name = e
                .name
                .as_deref()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            (
                name,
                String::from_utf8_lossy(&e.value).into_owned(),
                e.size(),
            )
        })
        .collect()
}

type Fields<'a> = &'a [(&'a str, &'a str)];
type Table<'a> = &'a [(&'a str, &'a str, usize)];

fn check(d: &mut Decoder, block: &str, want: Fields<'_>, want_table: Table<'_>, want_size: usize) {
    let (result, fields) = decode(d, block).unwrap();
    assert_eq!(result, Block::Complete);
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(fields, want);
    let want_table: Vec<(String, String, usize)> = want_table
        .iter()
        .map(|(n, v, s)| (n.to_string(), v.to_string(), *s))
        .collect();
    assert_eq!(table(d), want_table);
    assert_eq!(d.table_size(), want_size);
}

const REQ1: Fields<'static> = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const REQ2: Fields<'static> = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const REQ3: Fields<'static> = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];
const REQ_T1: Table<'static> = &[(":authority", "www.example.com", 57)];
const REQ_T2: Table<'static> = &[
    ("cache-control", "no-cache", 53),
    (":authority", "www.example.com", 57),
];
const REQ_T3: Table<'static> = &[
    ("custom-key", "custom-value", 54),
    ("cache-control", "no-cache", 53),
    (":authority", "www.example.com", 57),
];

#[test]
fn c3_requests_without_huffman() {
    let mut d = Decoder::new(4096);
    check(
        &mut d,
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        REQ1,
        REQ_T1,
        57,
    );
    check(
        &mut d,
        "8286 84be 5808 6e6f 2d63 6163 6865",
        REQ2,
        REQ_T2,
        110,
    );
    check(
        &mut d,
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        REQ3,
        REQ_T3,
        164,
    );
}

#[test]
fn c4_requests_with_huffman() {
    let mut d = Decoder::new(4096);
    check(
        &mut d,
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        REQ1,
        REQ_T1,
        57,
    );
    check(&mut d, "8286 84be 5886 a8eb 1064 9cbf", REQ2, REQ_T2, 110);
    check(
        &mut d,
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        REQ3,
        REQ_T3,
        164,
    );
}

const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
const LOC: &str = "https://www.example.com";
const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

fn responses(blocks: [&str; 3]) {
    // Appendix C.5/C.6 use a 256-byte table, so entries get evicted.
    let mut d = Decoder::new(256);
    check(
        &mut d,
        blocks[0],
        &[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOC),
        ],
        &[
            ("location", LOC, 63),
            ("date", DATE1, 65),
            ("cache-control", "private", 52),
            (":status", "302", 42),
        ],
        222,
    );
    check(
        &mut d,
        blocks[1],
        &[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOC),
        ],
        &[
            (":status", "307", 42),
            ("location", LOC, 63),
            ("date", DATE1, 65),
            ("cache-control", "private", 52),
        ],
        222,
    );
    check(
        &mut d,
        blocks[2],
        &[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", DATE2),
            ("location", LOC),
            ("content-encoding", "gzip"),
            ("set-cookie", COOKIE),
        ],
        &[
            ("set-cookie", COOKIE, 98),
            ("content-encoding", "gzip", 52),
            ("date", DATE2, 65),
        ],
        215,
    );
}

#[test]
fn c5_responses_without_huffman() {
    responses([
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
         3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    responses([
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ]);
}

#[test]
fn c1_integers() {
    // C.1.1 (10, 5-bit prefix), C.1.2 (1337, 5-bit prefix), C.1.3 (42, 8-bit).
    let mut b: &[u8] = &[0x0a];
    assert_eq!(integer(&mut b, 5), Ok(10));
    let mut b: &[u8] = &[0x1f, 0x9a, 0x0a];
    assert_eq!(integer(&mut b, 5), Ok(1337));
    assert!(b.is_empty());
    let mut b: &[u8] = &[0x2a];
    assert_eq!(integer(&mut b, 8), Ok(42));
}

#[test]
fn hostile_blocks_are_errors() {
    let cases = [
        ("80", HpackError::Malformed("index 0")),
        ("be", HpackError::Malformed("index out of range")),
        (
            "ff80808080808001",
            HpackError::Malformed("integer too large"),
        ),
        ("ff", HpackError::Malformed("truncated integer")),
        (
            "000561",
            HpackError::Malformed("string longer than the block"),
        ),
        (
            "82 3f e1 1f",
            HpackError::Malformed("table size update after a field"),
        ),
        (
            "3f e2 1f",
            HpackError::Malformed("table size update above SETTINGS"),
        ),
        ("3f e1 ff 07", HpackError::TableTooLarge(65536)),
        ("00 81 00 00", HpackError::Malformed("bad Huffman string")),
    ];
    for (block, want) in cases {
        let mut d = Decoder::new(65536);
        assert_eq!(decode(&mut d, block).map(|_| ()), Err(want), "{block}");
    }
}

#[test]
fn table_size_bombs_stay_bounded() {
    let mut d = Decoder::new(1024);
    d.allow_max_size(1 << 30);
    // The peer may raise the size up to what SETTINGS allowed, but not past
    // our limit.
    assert_eq!(decode(&mut d, "3f e1 07").map(|_| ()), Ok(())); // 1024
    assert_eq!(
        decode(&mut d, "3f e2 07").map(|_| ()),
        Err(HpackError::TableTooLarge(1024))
    );
    // Inserting large entries over and over never holds more than the limit.
    let mut block = vec![0x40, 0x01, b'x', 0x7f, 0x81, 0x03]; // value of 127 + 0x181 = 512 bytes
    block.extend(std::iter::repeat_n(b'v', 512));
    for _ in 0..100 {
        d.decode(&block, &mut |_, _| {}).unwrap();
        assert!(d.table_size() <= 1024);
    }
    // An entry larger than the table empties it.
    let mut big = vec![0x40, 0x01, b'x', 0x7f, 0x81, 0x0f];
    big.extend(std::iter::repeat_n(b'v', 2048));
    d.decode(&big, &mut |_, _| {}).unwrap();
    assert_eq!(d.table_size(), 0);
}

#[test]
fn joined_decoder_reports_unknown_instead_of_guessing() {
    let mut d = Decoder::joined(4096);
    // A reference to an entry inserted before we joined.
    let (result, fields) = decode(&mut d, "82 be").unwrap();
    assert_eq!(result, Block::Unknown);
    assert_eq!(fields, vec![(":method".into(), "GET".into())]);
    // A literal with incremental indexing whose name is unknown still takes
    // its slot, so later indices stay right.
    let (result, _) = decode(&mut d, "7f 00 01 76").unwrap(); // name index 63 (unknown), value "v"
    assert_eq!(result, Block::Unknown);
    let (result, fields) = decode(&mut d, "41 01 61 be").unwrap(); // :authority "a", then index 62
    assert_eq!(result, Block::Complete);
    assert_eq!(
        fields,
        vec![
            (":authority".into(), "a".into()),
            (":authority".into(), "a".into())
        ]
    );
    // Index 63 is the unknown-name entry.
    assert_eq!(decode(&mut d, "bf").unwrap().0, Block::Unknown);
}

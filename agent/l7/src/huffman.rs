//! HPACK's Huffman code (RFC 7541 §5.2 and Appendix B), decoding only.
//!
//! The Appendix B code is canonical: codes of equal length are consecutive
//! and ordered by symbol, each length's first code following the previous
//! length's last. So the code lengths alone define it, and decoding walks
//! one bit at a time comparing against each length's first code, with no
//! 257-entry code table to mistype. Tests check the derived codes against
//! Appendix B's and decode the Appendix C examples.

/// Code length in bits of each symbol (0–255, then EOS = 256), Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// The canonical code, derived at compile time from [`LENGTHS`].
struct Code {
    /// First code of each length.
    first: [u32; MAX_LEN + 1],
    /// How many codes have each length.
    count: [u16; MAX_LEN + 1],
    /// Index in `symbols` of each length's first symbol.
    offset: [u16; MAX_LEN + 1],
    /// Symbols ordered by (length, symbol).
    symbols: [u16; 257],
}

const CODE: Code = build();

const fn build() -> Code {
    let mut count = [0u16; MAX_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut first = [0u32; MAX_LEN + 1];
    let mut offset = [0u16; MAX_LEN + 1];
    let mut len = 2;
    while len <= MAX_LEN {
        first[len] = (first[len - 1] + count[len - 1] as u32) << 1;
        offset[len] = offset[len - 1] + count[len - 1];
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut next = offset;
    let mut s = 0;
    while s < 257 {
        let l = LENGTHS[s] as usize;
        symbols[next[l] as usize] = s as u16;
        next[l] += 1;
        s += 1;
    }
    Code {
        first,
        count,
        offset,
        symbols,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The EOS symbol inside a string (§5.2: a decoding error).
    Eos,
    /// Padding longer than 7 bits or not made of EOS's leading ones.
    BadPadding,
}

/// Appends the decoding of `input` to `out` (at most `input.len() * 8 / 5`
/// bytes: the shortest code is 5 bits).
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let mut code: u32 = 0;
    let mut len = 0usize;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let first = CODE.first[len];
            let count = u32::from(CODE.count[len]);
            if code >= first && code - first < count {
                let symbol = CODE.symbols[usize::from(CODE.offset[len]) + (code - first) as usize];
                if symbol == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(symbol as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Every 30-bit pattern is either a code or has a shorter
                // code as prefix, so this cannot happen; guard anyway.
                return Err(HuffmanError::BadPadding);
            }
        }
    }
    // §5.2: the padding is the most significant bits of EOS (all ones),
    // strictly shorter than 8 bits.
    if len > 7 || code != (1 << len) - 1 {
        return Err(HuffmanError::BadPadding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(symbol: u16) -> (u32, u8) {
        let len = LENGTHS[usize::from(symbol)];
        let start = usize::from(CODE.offset[usize::from(len)]);
        let rank = CODE.symbols[start..]
            .iter()
            .position(|&s| s == symbol)
            .unwrap();
        (CODE.first[usize::from(len)] + rank as u32, len)
    }

    #[test]
    fn derived_codes_are_appendix_b() {
        // A sample across all lengths, from RFC 7541 Appendix B.
        let table = [
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (9, 0xffffea, 24),
            (10, 0x3ffffffc, 30),
            (b' ' as u16, 0x14, 6),
            (b'%' as u16, 0x15, 6),
            (b'0' as u16, 0x0, 5),
            (b':' as u16, 0x5c, 7),
            (b'<' as u16, 0x7ffc, 15),
            (b'\\' as u16, 0x7fff0, 19),
            (b'a' as u16, 0x3, 5),
            (b'z' as u16, 0x7b, 7),
            (b'~' as u16, 0x1ffd, 13),
            (127, 0xffffffc, 28),
            (128, 0xfffe6, 20),
            (153, 0x1fffdc, 21),
            (199, 0x1ffffec, 25),
            (203, 0x7ffffde, 27),
            (249, 0xffffffe, 28),
            (255, 0x3ffffee, 26),
            (EOS, 0x3fffffff, 30),
        ];
        for (symbol, code, len) in table {
            assert_eq!(code_of(symbol), (code, len), "symbol {symbol}");
        }
        // Kraft: a complete prefix code (sum of 2^-len is exactly 1).
        let sum: u64 = LENGTHS
            .iter()
            .map(|&l| 1u64 << (MAX_LEN - usize::from(l)))
            .sum();
        assert_eq!(sum, 1 << MAX_LEN);
    }

    fn dec(hex: &str) -> Result<Vec<u8>, HuffmanError> {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut out = Vec::new();
        decode(&bytes, &mut out).map(|()| out)
    }

    #[test]
    fn appendix_c_strings() {
        let cases = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
            ("640eff", "307"),
            (
                "d07abe941054d444a8200595040b8166e084a62d1bff",
                "Mon, 21 Oct 2013 20:13:22 GMT",
            ),
            ("9bd9ab", "gzip"),
            (
                "94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
            ("", ""),
        ];
        for (hex, want) in cases {
            assert_eq!(dec(hex).as_deref(), Ok(want.as_bytes()), "{want}");
        }
    }

    #[test]
    fn bad_padding_and_eos() {
        // "0" is 00000: three padding zeros are not EOS's ones.
        assert_eq!(dec("00"), Err(HuffmanError::BadPadding));
        // A whole byte of ones is padding longer than 7 bits.
        assert_eq!(dec("6402ff"), Err(HuffmanError::BadPadding));
        // EOS itself (30 ones) followed by padding.
        assert_eq!(dec("ffffffff"), Err(HuffmanError::Eos));
    }
}

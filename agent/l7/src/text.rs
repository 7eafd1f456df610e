//! Bounded text for exchange fields: every string a parser reports is cut
//! to `Limits::max_field` (on a character boundary, with `…` appended), so a
//! hostile peer cannot make records or label values grow without bound.

/// `s` cut to at most `max` bytes plus the ellipsis.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + '…'.len_utf8());
    out.push_str(&s[..end]);
    out.push('…');
    out
}

/// Bytes from the wire as bounded text; invalid UTF-8 becomes U+FFFD.
pub(crate) fn bounded_lossy(bytes: &[u8], max: usize) -> String {
    // Convert at most `max` bytes (plus a few for a split character) so a
    // huge binary value costs nothing.
    let cut = bytes.len() > max;
    let head = &bytes[..bytes.len().min(max.saturating_add(4))];
    let s = bounded(&String::from_utf8_lossy(head), max);
    if cut && !s.ends_with('…') {
        return s + "…";
    }
    s
}

/// An identifier-like token (a command or keyword) upper-cased, or `None`
/// if it is empty, too long or has characters no command name has: these
/// become metric label values, so they must stay a small, clean set.
pub(crate) fn command_name(bytes: &[u8], max: usize) -> Option<String> {
    if bytes.is_empty() || bytes.len() > max {
        return None;
    }
    let ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'|'));
    ok.then(|| String::from_utf8_lossy(bytes).to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_char_boundaries() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc…");
        assert_eq!(bounded("aé", 2), "a…");
        assert_eq!(bounded_lossy(b"ab\xffcd", 3), "ab…");
        assert_eq!(bounded_lossy(&[b'x'; 100], 4), "xxxx…");
    }

    #[test]
    fn command_names_are_clean() {
        assert_eq!(command_name(b"get", 16).as_deref(), Some("GET"));
        assert_eq!(command_name(b"JSON.SET", 16).as_deref(), Some("JSON.SET"));
        assert_eq!(command_name(b"GE T", 16), None);
        assert_eq!(command_name(b"", 16), None);
        assert_eq!(command_name(&[b'A'; 17], 16), None);
    }
}

//! Route templating: turns a request path into a bounded `http_route`.
//!
//! `http_route` is a metric label, so its cardinality must stay bounded
//! whatever the traffic: identifiers (numbers, UUIDs, hex hashes, long
//! opaque tokens) become `{id}`, the query string is dropped, and both the
//! number of segments and the total length are capped. A path with more
//! segments than [`MAX_SEGMENTS`] keeps its first ones and ends in `/{rest}`.

/// Segments kept before the rest collapses into `{rest}`.
pub const MAX_SEGMENTS: usize = 8;
/// Longest route returned (bytes), `{rest}` included.
pub const MAX_ROUTE_LEN: usize = 128;
/// A segment at least this long is an identifier, whatever its characters
/// (route names are short words; blobs are not).
const LONG_SEGMENT: usize = 48;

const ID: &str = "{id}";
const REST: &str = "/{rest}";

/// The templated route of a request target (origin-form path, optionally
/// with a query). Targets not starting with `/` (`*`, authority-form) are
/// not routes: `*` stays, anything else becomes empty.
pub fn template(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path == "*" {
        return "*".to_owned();
    }
    if !path.starts_with('/') {
        return String::new();
    }
    let mut route = String::new();
    for (n, segment) in path[1..].split('/').enumerate() {
        let piece = if is_identifier(segment) { ID } else { segment };
        // +1 for the '/'; keep room for the `/{rest}` marker.
        if n >= MAX_SEGMENTS || route.len() + 1 + piece.len() > MAX_ROUTE_LEN - REST.len() {
            route.push_str(REST);
            return route;
        }
        route.push('/');
        route.push_str(piece);
    }
    route
}

/// Whether a path segment is a value rather than a name.
fn is_identifier(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    bytes.len() >= LONG_SEGMENT
        || bytes.iter().all(u8::is_ascii_digit)
        || is_uuid(bytes)
        || (bytes.len() >= 16 && bytes.iter().all(u8::is_ascii_hexdigit))
        || is_token(bytes)
}

/// RFC 9562 textual form: 8-4-4-4-12 hex digits.
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A long base64/base64url-ish token (session ids, JWT parts, API keys):
/// at least 20 characters from the base64 alphabets, mixing digits and
/// letters (so a long word or a slug without digits stays a name).
fn is_token(b: &[u8]) -> bool {
    b.len() >= 20
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'=' | b'.' | b'~')
        })
        && b.iter().any(u8::is_ascii_digit)
        && b.iter().any(u8::is_ascii_alphabetic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_become_placeholders() {
        let cases = [
            ("/", "/"),
            ("/users", "/users"),
            (
                "/users/123/orders/9f1c2b3a4d5e6f708192a3b4c5d6e7f8",
                "/users/{id}/orders/{id}",
            ),
            ("/users/123?token=abc", "/users/{id}"),
            (
                "/v1/items/550e8400-e29b-41d4-a716-446655440000",
                "/v1/items/{id}",
            ),
            (
                "/blob/da39a3ee5e6b4b0d3255bfef95601890afd80709",
                "/blob/{id}",
            ),
            ("/s/eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "/s/{id}"),
            ("/api/v2/health", "/api/v2/health"),
            ("/cafe", "/cafe"),
            ("/deadbeef", "/deadbeef"),
            (
                "/a-long-article-title-without-digits",
                "/a-long-article-title-without-digits",
            ),
            ("/users/", "/users/"),
            ("*", "*"),
            ("example.com:443", ""),
            ("/x#frag", "/x"),
        ];
        for (path, want) in cases {
            assert_eq!(template(path), want, "{path}");
        }
    }

    #[test]
    fn routes_are_bounded() {
        let deep = "/a".repeat(50);
        assert_eq!(
            template(&deep),
            format!("{}/{{rest}}", "/a".repeat(MAX_SEGMENTS))
        );
        let wide = format!("/{}/{}", "w".repeat(40), "v".repeat(47).repeat(3));
        let route = template(&wide);
        assert!(route.len() <= MAX_ROUTE_LEN, "{route}");
        let long = format!("/{}", "n".repeat(LONG_SEGMENT));
        assert_eq!(template(&long), "/{id}");
        for segs in 0..20 {
            let p = "/word".repeat(segs) + &"/x".repeat(segs);
            assert!(template(&p).len() <= MAX_ROUTE_LEN);
        }
    }
}

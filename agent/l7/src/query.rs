//! Redaction of request targets before they leave a parser.
//!
//! Query values routinely carry secrets (tokens, signatures, e-mail
//! addresses), so by default every value is replaced with `REDACTED` and
//! only the parameter names stay ([`Privacy::redact_query_values`]). When an
//! operator turns that off, parameters whose names look like credentials
//! ([`SENSITIVE_PARAMS`]) are still redacted. Userinfo in absolute-form
//! targets (`http://user:pass@host/`) and fragments are always dropped.

use crate::Privacy;

pub const REDACTED: &str = "REDACTED";

/// Parameter names (lowercase substrings) that are redacted even when
/// query values are otherwise reported.
pub const SENSITIVE_PARAMS: [&str; 10] = [
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "auth",
    "signature",
    "session",
    "credential",
    "code",
];

/// The target with its query values redacted per `privacy`, userinfo and
/// fragment removed.
pub fn redact_target(target: &str, privacy: &Privacy) -> String {
    let target = target.split('#').next().unwrap_or_default();
    let target = strip_userinfo(target);
    let Some((path, query)) = target.split_once('?') else {
        return target.into_owned();
    };
    let mut out = String::with_capacity(target.len());
    out.push_str(path);
    out.push('?');
    for (n, param) in query.split('&').enumerate() {
        if n > 0 {
            out.push('&');
        }
        match param.split_once('=') {
            Some((name, value)) => {
                out.push_str(name);
                out.push('=');
                if privacy.redact_query_values || is_sensitive(name) {
                    out.push_str(REDACTED);
                } else {
                    out.push_str(value);
                }
            }
            None => out.push_str(param),
        }
    }
    out
}

fn is_sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SENSITIVE_PARAMS.iter().any(|s| name.contains(s))
}

/// `scheme://user:pass@host/path` → `scheme://host/path` (RFC 3986 §3.2.1:
/// userinfo is deprecated and never worth reporting).
fn strip_userinfo(target: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = target.find("://") else {
        return target.into();
    };
    let rest = &target[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &target[..scheme_end + 3], &rest[at + 1..]).into(),
        None => target.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_redacted_by_default() {
        let p = Privacy::default();
        let cases = [
            ("/x", "/x"),
            ("/x?", "/x?"),
            ("/x?a=1&b=two&flag", "/x?a=REDACTED&b=REDACTED&flag"),
            ("/x?a=1#frag", "/x?a=REDACTED"),
            ("/x?a==b", "/x?a=REDACTED"),
            (
                "http://u:p@h.example/x?q=1",
                "http://h.example/x?q=REDACTED",
            ),
            ("http://h.example/a@b", "http://h.example/a@b"),
        ];
        for (target, want) in cases {
            assert_eq!(redact_target(target, &p), want, "{target}");
        }
    }

    #[test]
    fn sensitive_names_redacted_when_values_allowed() {
        let p = Privacy {
            redact_query_values: false,
            ..Privacy::default()
        };
        assert_eq!(
            redact_target("/x?page=2&access_token=abc&API_KEY=k&q=rust", &p),
            "/x?page=2&access_token=REDACTED&API_KEY=REDACTED&q=rust"
        );
    }
}

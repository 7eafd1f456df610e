//! SQL statement obfuscation (after DeepFlow's and Datadog's obfuscators):
//! literals become `?` before a statement leaves the parser, so records and
//! traces carry the shape of a query, never its values.
//!
//! - string, number, hex/bit and dollar-quoted literals become `?`;
//! - `IN (?, ?, ?)` collapses to `IN (?)`, and the value groups after the
//!   first of a multi-row `VALUES (..), (..)` are dropped, so statements of
//!   one shape look the same whatever their size;
//! - keywords, identifiers (also quoted ones) and placeholders (`$1`, `?`,
//!   `:name`, `%s`) stay; comments go; whitespace runs become one space;
//! - the output is bounded.
//!
//! A lexer, not a parser: it never fails, whatever the input.

use crate::text::bounded;

/// Lexical differences that matter for finding literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `"x"` is an identifier; `E'..'` strings have backslash escapes;
    /// `$tag$..$tag$` strings; `$1` placeholders.
    Postgres,
    /// `"x"` is a string (default sql_mode); backslash escapes in all
    /// strings; `#` comments; backtick identifiers.
    Mysql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Ident,
    Literal,
    Placeholder,
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    space_before: bool,
}

/// `sql` with its literals replaced by `?`, at most `max_len` bytes (plus
/// `…` when cut).
pub fn obfuscate_sql(sql: &str, dialect: Dialect, max_len: usize) -> String {
    let tokens = Lexer::new(sql, dialect);
    let mut out = String::new();
    let mut prev: Option<Token<'_>> = None;
    let mut tokens = tokens.peekable();
    let mut sign_space = None;
    while let Some(mut token) = tokens.next() {
        if let Some(space) = sign_space.take() {
            token.space_before = space;
        }
        if out.len() > max_len {
            break;
        }
        // Unary sign of a number: part of the literal.
        if token.kind == Kind::Punct
            && matches!(token.text, "-" | "+")
            && starts_operand(prev)
            && tokens
                .peek()
                .is_some_and(|t| t.kind == Kind::Literal && !t.space_before)
        {
            sign_space = Some(token.space_before);
            continue;
        }
        let is_in = prev.is_some_and(|p| p.kind == Kind::Word && p.text.eq_ignore_ascii_case("in"));
        if is_in && token.text == "(" {
            // Look ahead (without storing) for a list of plain values.
            let mut ahead = tokens.clone();
            let mut values = 0usize;
            let closed = loop {
                match ahead.next() {
                    Some(t) if t.text == ")" => break true,
                    Some(t) if t.text == "," => {}
                    Some(t)
                        if t.kind == Kind::Literal
                            || (t.kind == Kind::Placeholder && t.text == "?") =>
                    {
                        values += 1
                    }
                    _ => break false,
                }
            };
            if closed && values > 0 {
                push_text(&mut out, token.space_before, "(?)");
                tokens = ahead;
                prev = Some(Token {
                    kind: Kind::Punct,
                    text: ")",
                    space_before: false,
                });
                continue;
            }
        }
        let after_values =
            prev.is_some_and(|p| p.kind == Kind::Word && p.text.eq_ignore_ascii_case("values"));
        push(&mut out, &token);
        prev = Some(token);
        if after_values && token.text == "(" {
            // Copy the first group, then skip `, ( .. )` groups.
            copy_group(&mut tokens, &mut out, &mut prev);
            while tokens.peek().is_some_and(|t| t.text == ",") {
                let mut ahead = tokens.clone();
                ahead.next();
                if ahead.peek().is_none_or(|t| t.text != "(") {
                    break;
                }
                ahead.next();
                skip_group(&mut ahead);
                tokens = ahead;
            }
        }
    }
    bounded(&out, max_len)
}

/// The first keyword, upper-cased (`SELECT`, `INSERT`, `WITH`...), for
/// `operation`; `None` when the statement does not start with one.
pub fn sql_operation(sql: &str) -> Option<String> {
    let first = Lexer::new(sql, Dialect::Postgres).find(|t| t.text != "(")?;
    let word = first.text;
    (first.kind == Kind::Word && word.len() <= 32 && word.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| word.to_ascii_uppercase())
}

/// Does the statement set a credential (`PASSWORD '…'`, `IDENTIFIED BY
/// '…'`)? Such statements are obfuscated even when the privacy settings
/// report SQL literals: a literal there is a password.
pub fn sets_credentials(sql: &str, dialect: Dialect) -> bool {
    Lexer::new(sql, dialect).any(|t| {
        t.kind == Kind::Word
            && (t.text.eq_ignore_ascii_case("PASSWORD")
                || t.text.eq_ignore_ascii_case("IDENTIFIED"))
    })
}

fn copy_group<'a>(
    tokens: &mut std::iter::Peekable<Lexer<'a>>,
    out: &mut String,
    prev: &mut Option<Token<'a>>,
) {
    let mut depth = 1usize;
    for t in tokens.by_ref() {
        push(out, &t);
        *prev = Some(t);
        match t.text {
            "(" => depth += 1,
            ")" => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return;
        }
    }
}

fn skip_group(tokens: &mut std::iter::Peekable<Lexer<'_>>) {
    let mut depth = 1usize;
    for t in tokens.by_ref() {
        match t.text {
            "(" => depth += 1,
            ")" => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return;
        }
    }
}

/// Whether a sign after `prev` is unary (an operand starts there).
fn starts_operand(prev: Option<Token<'_>>) -> bool {
    match prev {
        None => true,
        Some(t) => match t.kind {
            Kind::Punct => !matches!(t.text, ")" | "]"),
            Kind::Word => [
                "select", "where", "and", "or", "not", "values", "set", "then", "else", "when",
                "return", "by", "limit", "offset", "in", "is", "between", "like", "as", "on",
                "case", "having", "interval",
            ]
            .iter()
            .any(|k| t.text.eq_ignore_ascii_case(k)),
            _ => false,
        },
    }
}

fn push(out: &mut String, token: &Token<'_>) {
    let text = if token.kind == Kind::Literal {
        "?"
    } else {
        token.text
    };
    push_text(out, token.space_before, text);
}

fn push_text(out: &mut String, space: bool, text: &str) {
    // No space before closing punctuation, even after a removed comment.
    if space && !out.is_empty() && !matches!(text, "," | ")" | ";") {
        out.push(' ');
    }
    out.push_str(text);
}

#[derive(Clone)]
struct Lexer<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    dialect: Dialect,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str, dialect: Dialect) -> Self {
        Self {
            s,
            b: s.as_bytes(),
            i: 0,
            dialect,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    /// Skips whitespace and comments; true if any.
    fn skip_space(&mut self) -> bool {
        let start = self.i;
        loop {
            let c = self.at(self.i);
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if (c == b'-' && self.at(self.i + 1) == b'-')
                || (c == b'#' && self.dialect == Dialect::Mysql)
            {
                while self.i < self.b.len() && self.b[self.i] != b'\n' {
                    self.i += 1;
                }
            } else if c == b'/' && self.at(self.i + 1) == b'*' {
                self.block_comment();
            } else {
                return self.i > start;
            }
        }
    }

    /// `/* .. */`, nested in Postgres; unterminated runs to the end.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.i < self.b.len() {
            if self.at(self.i) == b'/' && self.at(self.i + 1) == b'*' {
                depth += 1;
                self.i += 2;
            } else if self.at(self.i) == b'*' && self.at(self.i + 1) == b'/' {
                self.i += 2;
                depth -= 1;
                if depth == 0 || self.dialect == Dialect::Mysql {
                    return;
                }
            } else {
                self.i += 1;
            }
        }
    }

    /// A quoted run closed by `q` (doubled `q` escapes it; backslash too if
    /// `backslash`); the cursor is on the opening quote.
    fn quoted(&mut self, q: u8, backslash: bool) {
        self.i += 1;
        while self.i < self.b.len() {
            let c = self.b[self.i];
            if backslash && c == b'\\' {
                self.i += 2;
            } else if c == q {
                if self.at(self.i + 1) == q {
                    self.i += 2;
                } else {
                    self.i += 1;
                    return;
                }
            } else {
                self.i += 1;
            }
        }
        self.i = self.b.len();
    }

    fn word_end(&self, mut i: usize) -> usize {
        while i < self.b.len() && is_word(self.b[i]) {
            i += 1;
        }
        i
    }

    /// `$tag$ .. $tag$` (cursor on the first `$`); false if not one.
    fn dollar_quoted(&mut self) -> bool {
        let mut tag_end = self.i + 1;
        while self.at(tag_end).is_ascii_alphanumeric() || self.at(tag_end) == b'_' {
            tag_end += 1;
        }
        if self.at(tag_end) != b'$' || self.at(self.i + 1).is_ascii_digit() {
            return false;
        }
        let tag = &self.b[self.i..=tag_end];
        let body = tag_end + 1;
        let close = self.b[body..]
            .windows(tag.len())
            .position(|w| w == tag)
            .map_or(self.b.len(), |p| body + p + tag.len());
        self.i = close;
        true
    }

    fn number(&mut self) {
        let c = self.at(self.i);
        if c == b'0' && matches!(self.at(self.i + 1), b'x' | b'X' | b'b' | b'B') {
            self.i = self.word_end(self.i + 2);
            return;
        }
        while self.at(self.i).is_ascii_digit() {
            self.i += 1;
        }
        if self.at(self.i) == b'.' {
            self.i += 1;
            while self.at(self.i).is_ascii_digit() {
                self.i += 1;
            }
        }
        if matches!(self.at(self.i), b'e' | b'E') {
            let mut j = self.i + 1;
            if matches!(self.at(j), b'+' | b'-') {
                j += 1;
            }
            if self.at(j).is_ascii_digit() {
                self.i = j;
                while self.at(self.i).is_ascii_digit() {
                    self.i += 1;
                }
            }
        }
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let space_before = self.skip_space();
        let start = self.i;
        let c = *self.b.get(start)?;
        let next = self.at(start + 1);
        let mysql = self.dialect == Dialect::Mysql;
        let kind = match c {
            b'\'' => {
                self.quoted(b'\'', mysql);
                Kind::Literal
            }
            b'"' if mysql => {
                self.quoted(b'"', true);
                Kind::Literal
            }
            b'"' => {
                self.quoted(b'"', false);
                Kind::Ident
            }
            b'`' => {
                self.quoted(b'`', false);
                Kind::Ident
            }
            // E'..' X'..' B'..' N'..' prefixed strings.
            b'e' | b'E' | b'x' | b'X' | b'b' | b'B' | b'n' | b'N' if next == b'\'' => {
                self.i += 1;
                self.quoted(b'\'', mysql || matches!(c, b'e' | b'E'));
                Kind::Literal
            }
            b'0'..=b'9' => {
                self.number();
                Kind::Literal
            }
            b'.' if next.is_ascii_digit() => {
                self.number();
                Kind::Literal
            }
            b'$' if next.is_ascii_digit() => {
                self.i = self.word_end(start + 1);
                Kind::Placeholder
            }
            b'$' if !mysql && self.dollar_quoted() => Kind::Literal,
            b'?' => {
                self.i += 1;
                Kind::Placeholder
            }
            b':' if next.is_ascii_alphabetic() || next == b'_' => {
                self.i = self.word_end(start + 1);
                Kind::Placeholder
            }
            b'%' if next == b's' || next == b'(' => {
                // %s or %(name)s (Python drivers).
                self.i = match next {
                    b's' => start + 2,
                    _ => self.b[start..]
                        .iter()
                        .position(|&b| b == b')')
                        .map_or(self.b.len(), |p| (start + p + 2).min(self.b.len())),
                };
                Kind::Placeholder
            }
            c if is_word(c) => {
                self.i = self.word_end(start);
                Kind::Word
            }
            _ => {
                // One character (a multi-byte one whole).
                self.i += self.s[start..].chars().next().map_or(1, char::len_utf8);
                Kind::Punct
            }
        };
        // Never split a character: all token ends above are ASCII or the end.
        let end = self.i.min(self.b.len());
        self.i = end;
        let text = self.s.get(start..end).unwrap_or("?");
        Some(Token {
            kind,
            text,
            space_before,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> String {
        obfuscate_sql(s, Dialect::Postgres, 1024)
    }
    fn my(s: &str) -> String {
        obfuscate_sql(s, Dialect::Mysql, 1024)
    }

    #[test]
    fn statements_setting_credentials_are_found() {
        for (sql, dialect) in [
            ("ALTER ROLE app WITH PASSWORD 'pw'", Dialect::Postgres),
            ("create user app password 'pw'", Dialect::Postgres),
            ("CREATE USER 'u'@'%' IDENTIFIED BY 'pw'", Dialect::Mysql),
            ("SET PASSWORD FOR u = 'pw'", Dialect::Mysql),
        ] {
            assert!(sets_credentials(sql, dialect), "{sql}");
        }
        for (sql, dialect) in [
            ("SELECT 'password' FROM t", Dialect::Postgres),
            ("SELECT \"password\" FROM users", Dialect::Postgres),
            ("SELECT `identified` FROM t", Dialect::Mysql),
        ] {
            assert!(!sets_credentials(sql, dialect), "{sql}");
        }
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            pg("INSERT INTO users VALUES (1, 'alice', 'a@x', 1.5), (2, 'O''Brien', 'o', -3e2)"),
            "INSERT INTO users VALUES (?, ?, ?, ?)"
        );
        assert_eq!(
            pg("SELECT id, name FROM users WHERE id IN (1, 2, 3) AND name <> 'bob'"),
            "SELECT id, name FROM users WHERE id IN (?) AND name <> ?"
        );
        assert_eq!(
            pg("UPDATE t SET score = score + 0.5, n = n - 1 WHERE x = -2"),
            "UPDATE t SET score = score + ?, n = n - ? WHERE x = ?"
        );
        assert_eq!(pg("select t1.c2 from t1"), "select t1.c2 from t1");
        assert_eq!(
            pg("SELECT \"Name\", E'it\\'s', X'ff', $$body 'x'$$, $t$a$t$ FROM x"),
            "SELECT \"Name\", ?, ?, ?, ? FROM x"
        );
        assert_eq!(pg("SELECT $1, $2::int"), "SELECT $1, $2::int");
        assert_eq!(pg("SELECT 0xDEAD, .5, 1e-3"), "SELECT ?, ?, ?");
    }

    #[test]
    fn mysql_strings_and_comments() {
        assert_eq!(
            my("SELECT * FROM `t` WHERE a = \"x\\\"y\" # secret 1\n AND b = 'it\\'s' /* 2 */"),
            "SELECT * FROM `t` WHERE a = ? AND b = ?"
        );
        assert_eq!(
            my("SELECT * FROM t WHERE id IN (?, ?, ?)"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            pg("SELECT 1 -- trailing 'comment'\n, 2 /* a /* nested */ b */"),
            "SELECT ?, ?"
        );
    }

    #[test]
    fn in_lists_with_expressions_stay() {
        assert_eq!(
            pg("SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE v = 1)"),
            "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE v = ?)"
        );
        assert_eq!(pg("WHERE x IN ($1, $2)"), "WHERE x IN ($1, $2)");
    }

    #[test]
    fn unterminated_and_hostile_input_is_bounded() {
        assert_eq!(pg("SELECT 'unterminated"), "SELECT ?");
        assert_eq!(pg("SELECT $tag$ never closed"), "SELECT ?");
        assert_eq!(pg("/* never closed"), "");
        let long = format!("SELECT {}", "a, ".repeat(10_000));
        let out = obfuscate_sql(&long, Dialect::Postgres, 100);
        assert!(out.len() <= 100 + '…'.len_utf8() && out.ends_with('…'));
        let many = format!("SELECT * FROM t WHERE x IN ({}1)", "1, ".repeat(100_000));
        assert_eq!(pg(&many), "SELECT * FROM t WHERE x IN (?)");
        assert_eq!(pg("é 'ü' ü€"), "é ? ü€");
    }

    #[test]
    fn operations() {
        assert_eq!(sql_operation("  select 1").as_deref(), Some("SELECT"));
        assert_eq!(
            sql_operation("/* x */ (SELECT 1)").as_deref(),
            Some("SELECT")
        );
        assert_eq!(
            sql_operation("WITH a AS (..) INSERT").as_deref(),
            Some("WITH")
        );
        assert_eq!(sql_operation("-- only a comment"), None);
        assert_eq!(sql_operation("123"), None);
    }
}

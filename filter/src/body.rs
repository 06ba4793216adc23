//! Request body rewrite: replace the top-level `model` of an OpenAI-style JSON body.
//!
//! The body is validated by a full JSON scan but not rebuilt: the new model is
//! spliced in at the byte offsets of the old value, so every other byte (key order,
//! number formatting, whitespace) reaches the provider as the client sent it.
//!
//! The scanner is our own rather than serde_json's because it sits on the hot path of
//! every request: it materialises nothing, and skips the long strings that make up a
//! prompt eight bytes at a time. It accepts exactly what serde_json accepts (a
//! differential test holds it to that).

use std::fmt;
use std::ops::Range;

/// Nesting deeper than this is refused, as serde_json's `Value` parser does, so a hostile body cannot
/// exhaust the stack.
const MAX_DEPTH: u32 = 127;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not well-formed JSON: what was wrong and at which byte.
    NotJson(String),
    /// Well-formed JSON, but not an object.
    NotObject,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::NotJson(m) => write!(f, "request body is not valid JSON: {m}"),
            BodyError::NotObject => f.write_str("request body must be a JSON object"),
        }
    }
}

/// Where the top-level `model` sits in a validated body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSlots {
    /// Byte ranges of every top-level `model` value (duplicates are all replaced).
    values: Vec<Range<usize>>,
    /// Offset just past the opening `{`, where a missing `model` is inserted.
    open_brace_end: usize,
    /// Whether the object has any member (decides the comma on insertion).
    has_members: bool,
}

/// Validates that `body` is one JSON object and finds its top-level `model`.
pub fn inspect(body: &[u8]) -> Result<ModelSlots, BodyError> {
    let mut s = Scanner { b: body, i: 0 };
    s.skip_ws();
    if s.peek() != Some(b'{') {
        // Tell "valid JSON, wrong kind" from "not JSON at all".
        s.value(0).map_err(BodyError::NotJson)?;
        s.end().map_err(BodyError::NotJson)?;
        return Err(BodyError::NotObject);
    }
    let slots = s.top_level().map_err(BodyError::NotJson)?;
    s.end().map_err(BodyError::NotJson)?;
    Ok(slots)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in every byte of `w` that needs a closer look inside a string: a
/// quote, a backslash, a control character or a non-ASCII byte. The lowest set bit is
/// exact (the borrow tricks can only add false bits above a true one), so it locates
/// the first such byte.
#[inline]
fn attention_mask(w: u64) -> u64 {
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    ((quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash)
        | (w.wrapping_sub(ONES * 0x20) & !w)
        | w)
        & HIGHS
}

/// How many bytes from the start of `rest` are plain printable ASCII (no quote,
/// backslash, control or non-ASCII byte), looked at eight bytes at a time.
#[inline]
fn plain_prefix(rest: &[u8]) -> usize {
    let mut n = 0;
    // Sixteen bytes a round: two independent words keep the pipeline busy.
    let mut pairs = rest.chunks_exact(16);
    for pair in &mut pairs {
        let (a, b) = pair.split_at(8);
        let ma = attention_mask(u64::from_le_bytes(a.try_into().unwrap_or([0x80; 8])));
        let mb = attention_mask(u64::from_le_bytes(b.try_into().unwrap_or([0x80; 8])));
        if ma | mb != 0 {
            let first = if ma != 0 {
                ma.trailing_zeros()
            } else {
                64 + mb.trailing_zeros()
            };
            return n + (first / 8) as usize;
        }
        n += 16;
    }
    let tail = pairs.remainder();
    for chunk in tail.chunks_exact(8) {
        let mask = attention_mask(u64::from_le_bytes(chunk.try_into().unwrap_or([0x80; 8])));
        if mask != 0 {
            return n + (mask.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        match self.peek() {
            None => Err(format!("{what}, but the body ends at byte {}", self.i)),
            Some(c) if c.is_ascii_graphic() => {
                Err(format!("{what}, found '{}' at byte {}", c as char, self.i))
            }
            Some(c) => Err(format!("{what}, found byte 0x{c:02x} at byte {}", self.i)),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.skip_ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("expected the end of the body after the JSON value")
        }
    }

    fn eat(&mut self, c: u8, what: &str) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    /// The top-level object, recording where `model` values sit.
    fn top_level(&mut self) -> Result<ModelSlots, String> {
        self.i += 1; // '{'
        let open_brace_end = self.i;
        let mut values = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(ModelSlots {
                values,
                open_brace_end,
                has_members: false,
            });
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.eat(b':', "expected ':' after an object key")?;
            self.skip_ws();
            let start = self.i;
            self.value(1)?;
            if self.key_is_model(key) {
                values.push(start..self.i);
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(ModelSlots {
                        values,
                        open_brace_end,
                        has_members: true,
                    });
                }
                _ => return self.err("expected ',' or '}' in the object"),
            }
        }
    }

    /// Whether the key whose raw bytes (quotes excluded) span `key` reads "model".
    fn key_is_model(&self, key: Range<usize>) -> bool {
        let raw = &self.b[key];
        if !raw.contains(&b'\\') {
            return raw == b"model";
        }
        // An escaped spelling such as "mod\u0065l": decode it (keys are short).
        let mut quoted = Vec::with_capacity(raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == "model")
    }

    fn value(&mut self, depth: u32) -> Result<(), String> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(|_| ()),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => self.err("expected a JSON value"),
        }
    }

    fn object(&mut self, depth: u32) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return self.err("nesting deeper than 127 levels");
        }
        self.i += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.string()?;
            self.skip_ws();
            self.eat(b':', "expected ':' after an object key")?;
            self.skip_ws();
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or '}' in the object"),
            }
        }
    }

    fn array(&mut self, depth: u32) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return self.err("nesting deeper than 127 levels");
        }
        self.i += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or ']' in the array"),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), String> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("expected true, false or null")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), String> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("expected a digit"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("expected a digit after the decimal point");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("expected a digit in the exponent");
            }
        }
        Ok(())
    }

    /// A string; returns the range of its raw contents (quotes excluded).
    fn string(&mut self) -> Result<Range<usize>, String> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let start = self.i;
        loop {
            // Fast path: the plain ASCII run that makes up most of a prompt.
            self.i += plain_prefix(&self.b[self.i..]);
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    let range = start..self.i;
                    self.i += 1;
                    return Ok(range);
                }
                Some(b'\\') => self.escape()?,
                Some(0..=0x1f) => return self.err("control character in a string"),
                Some(0x80..=0xff) => self.utf8()?,
                Some(_) => self.i += 1,
            }
        }
    }

    fn escape(&mut self) -> Result<(), String> {
        self.i += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 1;
                Ok(())
            }
            Some(b'u') => {
                self.i += 1;
                let code = self.hex4()?;
                if (0xD800..0xDC00).contains(&code) {
                    // A high surrogate must be followed by an escaped low one.
                    if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                        return self.err("unpaired surrogate in a \\u escape");
                    }
                    self.i += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return self.err("unpaired surrogate in a \\u escape");
                    }
                } else if (0xDC00..0xE000).contains(&code) {
                    return self.err("unpaired surrogate in a \\u escape");
                }
                Ok(())
            }
            _ => self.err("invalid escape in a string"),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut code = 0u32;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return self.err("expected four hex digits in a \\u escape"),
            };
            code = code * 16 + u32::from(digit);
            self.i += 1;
        }
        Ok(code)
    }

    /// One UTF-8 encoded character (RFC 3629: no overlong forms, no surrogates).
    fn utf8(&mut self) -> Result<(), String> {
        let lead = self.b[self.i];
        let (extra, lo, hi) = match lead {
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return self.err("invalid UTF-8"),
        };
        let Some(rest) = self.b.get(self.i + 1..self.i + 1 + extra) else {
            return self.err("invalid UTF-8");
        };
        let second_ok = (lo..=hi).contains(&rest[0]);
        if !second_ok || rest[1..].iter().any(|&c| c & 0xC0 != 0x80) {
            return self.err("invalid UTF-8");
        }
        self.i += 1 + extra;
        Ok(())
    }
}

/// The edit that sets the top-level `model` to `model_json` (an already encoded
/// JSON string, quotes included), as a prefix replacement: the first `.0` bytes of
/// the body become `.1`, the rest stays. Envoy's body buffer can replace a prefix in
/// place, so bytes after the last `model` are never copied. `slots` must come from
/// `inspect(body)`.
pub fn model_edit(body: &[u8], slots: &ModelSlots, model_json: &str) -> (usize, Vec<u8>) {
    let Some(last) = slots.values.last() else {
        let end = slots.open_brace_end;
        let mut out = Vec::with_capacity(end + model_json.len() + 9);
        out.extend_from_slice(&body[..end]);
        out.extend_from_slice(b"\"model\":");
        out.extend_from_slice(model_json.as_bytes());
        if slots.has_members {
            out.push(b',');
        }
        return (end, out);
    };
    let mut out = Vec::with_capacity(last.end + model_json.len());
    let mut at = 0;
    for range in &slots.values {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(model_json.as_bytes());
        at = range.end;
    }
    (last.end, out)
}

/// The whole body with its top-level `model` set to `model_json` (see [`model_edit`]).
pub fn with_model(body: &[u8], slots: &ModelSlots, model_json: &str) -> Vec<u8> {
    let (replaced, mut out) = model_edit(body, slots, model_json);
    out.extend_from_slice(&body[replaced..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(body: &str, model: &str) -> String {
        let slots = inspect(body.as_bytes()).unwrap();
        let json = serde_json::to_string(model).unwrap();
        String::from_utf8(with_model(body.as_bytes(), &slots, &json)).unwrap()
    }

    #[test]
    fn replaces_only_the_top_level_model_and_keeps_every_other_byte() {
        let body = r#"{"model": "", "messages": [{"role":"user","content":"What is 2+2?","model":"inner"}], "temperature": 0.70}"#;
        assert_eq!(
            rewrite(body, "gpt-4o-mini"),
            r#"{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"What is 2+2?","model":"inner"}], "temperature": 0.70}"#
        );
    }

    #[test]
    fn replaces_non_string_and_escaped_key_models() {
        assert_eq!(rewrite(r#"{"model":null}"#, "m"), r#"{"model":"m"}"#);
        assert_eq!(
            rewrite(r#"{"mod\u0065l":{"a":1},"x":1}"#, "m"),
            r#"{"mod\u0065l":"m","x":1}"#
        );
        assert_eq!(
            rewrite(r#"{"model":"a","model":"b"}"#, "m"),
            r#"{"model":"m","model":"m"}"#
        );
    }

    #[test]
    fn inserts_model_when_absent() {
        assert_eq!(
            rewrite(r#"{"messages":[]}"#, "m"),
            r#"{"model":"m","messages":[]}"#
        );
        assert_eq!(rewrite(" { } ", "m"), r#" {"model":"m" } "#);
    }

    #[test]
    fn edit_replaces_only_the_prefix_up_to_the_model() {
        let body = br#"{"model":"old","messages":[{"content":"long tail"}]}"#;
        let slots = inspect(body).unwrap();
        let (replaced, prefix) = model_edit(body, &slots, "\"new\"");
        assert_eq!(replaced, br#"{"model":"old""#.len());
        assert_eq!(prefix, br#"{"model":"new""#);
    }

    #[test]
    fn depth_limit_matches_serde_json() {
        for depth in [125, 126, 127, 128, 129, 130] {
            let body = format!("{{\"a\":{}1{}}}", "[".repeat(depth), "]".repeat(depth));
            let ours = inspect(body.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<serde_json::Value>(&body).is_ok();
            assert_eq!(ours, theirs, "depth {depth}");
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = inspect(br#"{"model": "x",, }"#).unwrap_err().to_string();
        assert_eq!(
            e,
            "request body is not valid JSON: expected a string, found ',' at byte 14"
        );
        let e = inspect(br#"{"model": "x""#).unwrap_err().to_string();
        assert!(e.ends_with("but the body ends at byte 13"), "{e}");
    }

    /// Deterministic xorshift, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// serde_json's verdict: Ok(true) for an object, Ok(false) for another value, Err
    /// for not JSON. Parsed into a `Value`, which checks every string's UTF-8 and
    /// surrogates (ignoring a value would not).
    fn reference(body: &[u8]) -> Result<bool, ()> {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Err(_) => Err(()),
            Ok(_) => Ok(body.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{')),
        }
    }

    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        let seeds: [&[u8]; 6] = [
            br#"{"messages":[{"role":"user","content":"What is 2+2? \u00e9\n"}],"model":"gpt-4o","temperature":0.7}"#,
            br#"{"model": null, "n": -1.5e+10, "stop": ["\ud83d\ude00", "x"], "tools": {"a": [true, false, {}]}}"#,
            "{\"content\":\"h\u{e9}llo \u{1F642} \u{4e16}\u{754c}\",\"model\":\"m\"}".as_bytes(),
            br#"[1, 2, {"model": 3}]"#,
            br#"  {"mod\u0065l" : "x" , "a" : 0 }  "#,
            br#"{"a":"abcdefghijklmnopqrstuvwxyz0123456789","b":"\"quoted\" and \\ backslash"}"#,
        ];
        let alphabet: &[u8] = b"{}[]:,\"\\u0123456789abcdefABCDEFtrunlse.-+eE \t\n\x00\x1f\x7f\x80\xc3\xa9\xed\xa0\xf0\x9f";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut checked = 0;
        for round in 0..20_000 {
            let mut body = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(body.len() + 1);
                match rng.below(3) {
                    0 if at < body.len() => {
                        body.remove(at);
                    }
                    1 if at < body.len() => body[at] = alphabet[rng.below(alphabet.len())],
                    _ => body.insert(at, alphabet[rng.below(alphabet.len())]),
                }
            }
            let ours = match inspect(&body) {
                Ok(_) => Ok(true),
                Err(BodyError::NotObject) => Ok(false),
                Err(BodyError::NotJson(_)) => Err(()),
            };
            assert_eq!(
                ours,
                reference(&body),
                "disagree on {:?}",
                String::from_utf8_lossy(&body)
            );
            if ours == Ok(true) {
                // The rewrite must give a valid object with the new model and every
                // other top-level member unchanged.
                let out = with_model(&body, &inspect(&body).unwrap(), "\"new-model\"");
                let before: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&body).unwrap();
                let mut after: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&out).unwrap();
                assert_eq!(
                    after.remove("model"),
                    Some(serde_json::Value::from("new-model"))
                );
                let mut before = before;
                before.remove("model");
                assert_eq!(before, after);
                checked += 1;
            }
        }
        assert!(checked > 1_000, "only {checked} valid mutants");
    }

    #[test]
    fn escapes_the_new_model_name() {
        assert_eq!(rewrite(r#"{"model":"x"}"#, "a\"b"), r#"{"model":"a\"b"}"#);
    }

    #[test]
    fn keeps_unicode_and_large_bodies_intact() {
        let content = "é✓🙂".repeat(20_000);
        let body =
            format!(r#"{{"messages":[{{"role":"user","content":"{content}"}}],"model":"old"}}"#);
        let out = rewrite(&body, "new");
        assert_eq!(out, body.replace(r#""model":"old""#, r#""model":"new""#));
    }

    #[test]
    fn refuses_what_is_not_one_json_object() {
        // (body, whether it is well-formed JSON that is just not an object)
        let cases: [(&[u8], bool); 8] = [
            (b"", false),
            (b"hello", false),
            (b"{\"model\":", false),
            (b"{\"a\":1} {}", false),
            (b"{\"a\":\xff}", false),
            (b"[1,2]", true),
            (b"\"model\"", true),
            (b"42", true),
        ];
        for (body, well_formed) in cases {
            let e = inspect(body).unwrap_err();
            let ok = if well_formed {
                e == BodyError::NotObject
            } else {
                matches!(e, BodyError::NotJson(_))
            };
            assert!(ok, "{:?} gave {e:?}", String::from_utf8_lossy(body));
        }
    }
}

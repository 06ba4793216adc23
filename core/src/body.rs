//! Request body rewrite: replace the top-level `model` of an OpenAI-style JSON body.
//!
//! The body is validated by a full JSON scan but not rebuilt: the new model is
//! spliced in at the byte offsets of the old value, so every other byte (key order,
//! number formatting, whitespace) reaches the provider as the client sent it.
//!
//! The scan is `json.rs`'s: it materialises nothing and skips the long strings of a
//! prompt many bytes at a time, since it runs on every request.

use std::fmt;
use std::ops::Range;

use crate::json::{self, Scanner};

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
    /// Whether the request asks for a streamed answer (top-level `"stream": true`;
    /// the last one counts, as in the providers' JSON parsers).
    pub stream: bool,
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
    let slots = top_level(&mut s).map_err(BodyError::NotJson)?;
    s.end().map_err(BodyError::NotJson)?;
    Ok(slots)
}

fn top_level(s: &mut Scanner<'_>) -> Result<ModelSlots, String> {
    s.i += 1; // '{'
    let open_brace_end = s.i;
    let mut values = Vec::new();
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
        return Ok(ModelSlots {
            values,
            open_brace_end,
            has_members: false,
            stream: false,
        });
    }
    let mut stream = false;
    loop {
        s.skip_ws();
        let key = s.string()?;
        s.skip_ws();
        s.eat(b':', "expected ':' after an object key")?;
        s.skip_ws();
        let start = s.i;
        s.value(1)?;
        if key_is(s, key.clone(), b"model") {
            values.push(start..s.i);
        } else if key_is(s, key, b"stream") {
            stream = &s.b[start..s.i] == b"true";
        }
        s.skip_ws();
        match s.peek() {
            Some(b',') => s.i += 1,
            Some(b'}') => {
                s.i += 1;
                return Ok(ModelSlots {
                    values,
                    open_brace_end,
                    has_members: true,
                    stream,
                });
            }
            _ => return s.err("expected ',' or '}' in the object"),
        }
    }
}

/// Whether the key whose raw bytes (quotes excluded) span `key` reads `name`.
fn key_is(s: &Scanner<'_>, key: Range<usize>, name: &[u8]) -> bool {
    let raw = &s.b[key];
    if !raw.contains(&b'\\') {
        return raw == name;
    }
    // An escaped spelling such as "mod\u0065l": decode it (keys are short).
    json::decode_string(raw).is_some_and(|k| k.as_bytes() == name)
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
/// The compression a body that failed the JSON check starts like (gzip, zstd, zlib),
/// for a clearer refusal than "not JSON at byte 0".
pub fn compression_of(body: &[u8]) -> Option<&'static str> {
    match body {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..] => Some("deflate"),
        _ => None,
    }
}

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
    fn a_streamed_request_is_told_by_its_top_level_stream_member() {
        let stream = |body: &str| inspect(body.as_bytes()).unwrap().stream;
        assert!(stream(r#"{"model":"m","stream":true}"#));
        assert!(stream(r#"{"stre\u0061m" : true, "messages":[]}"#));
        assert!(!stream(r#"{"model":"m","stream":false}"#));
        assert!(!stream(r#"{"model":"m","stream":"true"}"#));
        assert!(!stream(r#"{"model":"m","options":{"stream":true}}"#));
        assert!(
            !stream(r#"{"stream":true,"stream":false}"#),
            "the last one counts"
        );
        assert!(!stream("{}"));
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
    fn compressed_bodies_are_told_by_their_first_bytes() {
        assert_eq!(compression_of(&[0x1f, 0x8b, 8, 0]), Some("gzip"));
        assert_eq!(compression_of(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some("zstd"));
        assert_eq!(compression_of(&[0x78, 0x9c, 1]), Some("deflate"));
        assert_eq!(compression_of(b"x{\"model\""), None);
        assert_eq!(compression_of(b""), None);
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

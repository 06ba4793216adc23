//! Request body rewrite: replace the top-level `model` of an OpenAI-style JSON body.
//!
//! The body is validated by a full JSON parse, but not rebuilt: the new model is
//! spliced in at the byte offsets of the old value, so every other byte (key order,
//! number formatting, whitespace) reaches the provider as the client sent it.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not well-formed JSON (the parser's message says where).
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
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = de
        .deserialize_map(TopLevel {
            base: body.as_ptr() as usize,
        })
        .map_err(|e| {
            if e.is_data() {
                BodyError::NotObject
            } else {
                BodyError::NotJson(e.to_string())
            }
        })?;
    de.end().map_err(|e| BodyError::NotJson(e.to_string()))?;
    let open = body
        .iter()
        .position(|&b| b == b'{')
        .ok_or(BodyError::NotObject)?;
    Ok(ModelSlots {
        values: found.0,
        open_brace_end: open + 1,
        has_members: found.1,
    })
}

/// The body with its top-level `model` set to `model_json` (an already encoded
/// JSON string, quotes included). `slots` must come from `inspect(body)`.
pub fn with_model(body: &[u8], slots: &ModelSlots, model_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + model_json.len() + 10);
    if slots.values.is_empty() {
        out.extend_from_slice(&body[..slots.open_brace_end]);
        out.extend_from_slice(b"\"model\":");
        out.extend_from_slice(model_json.as_bytes());
        if slots.has_members {
            out.push(b',');
        }
        out.extend_from_slice(&body[slots.open_brace_end..]);
        return out;
    }
    let mut at = 0;
    for range in &slots.values {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(model_json.as_bytes());
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// Visits the top-level object, keeping the offsets of `model` values. Values are
/// borrowed as raw JSON, so nothing below the top level is materialised.
struct TopLevel {
    base: usize,
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = (Vec<Range<usize>>, bool);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::new();
        let mut has_members = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            has_members = true;
            let value: &'de RawValue = map.next_value()?;
            if key == "model" {
                let raw = value.get();
                let start = raw.as_ptr() as usize - self.base;
                values.push(start..start + raw.len());
            }
        }
        Ok((values, has_members))
    }
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

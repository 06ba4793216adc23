//! A small JSON scanner and value parser. Our own rather than serde_json, for two
//! measured reasons: on the request path it validates a body without materialising
//! anything and skips the long strings of a prompt sixteen bytes at a time (about
//! twice serde_json's speed in wasm); for the configuration it keeps the `.wasm` small
//! (serde_json with derived deserializers cost over 100 KB of it). It accepts exactly
//! what serde_json's `Value` parser accepts; a differential test in `body.rs` holds it
//! to that.

use std::ops::Range;

/// Nesting deeper than this is refused, as serde_json's `Value` parser does, so a hostile body cannot
/// exhaust the stack.
const MAX_DEPTH: u32 = 127;

/// A position in a JSON text.
pub struct Scanner<'a> {
    pub b: &'a [u8],
    pub i: usize,
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
/// backslash, control or non-ASCII byte). In the shipped `.wasm` (built with SIMD)
/// sixteen bytes are compared at once; elsewhere eight-byte words are used.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline]
fn plain_prefix(rest: &[u8]) -> usize {
    use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128_load, v128_or};
    let quote = u8x16_splat(b'"');
    let backslash = u8x16_splat(b'\\');
    let space = u8x16_splat(0x20);
    let mut n = 0;
    for chunk in rest.chunks_exact(16) {
        // SAFETY: `chunk` is exactly 16 readable bytes, and wasm loads need no alignment.
        let v = unsafe { v128_load(chunk.as_ptr().cast()) };
        let special = v128_or(
            v128_or(u8x16_eq(v, quote), u8x16_eq(v, backslash)),
            u8x16_lt(v, space),
        );
        // The bitmask takes each byte's high bit: the special bytes, and non-ASCII ones.
        let mask = u8x16_bitmask(special) | u8x16_bitmask(v);
        if mask != 0 {
            return n + mask.trailing_zeros() as usize;
        }
        n += 16;
    }
    n + plain_prefix_swar(&rest[n..])
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline]
fn plain_prefix(rest: &[u8]) -> usize {
    plain_prefix_swar(rest)
}

/// [`plain_prefix`] with eight-byte words (SWAR), for targets without SIMD and for the
/// tail shorter than a SIMD block.
#[inline]
fn plain_prefix_swar(rest: &[u8]) -> usize {
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
    pub fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub fn err<T>(&self, what: &str) -> Result<T, String> {
        match self.peek() {
            None => Err(format!("{what}, but the body ends at byte {}", self.i)),
            Some(c) if c.is_ascii_graphic() => {
                Err(format!("{what}, found '{}' at byte {}", c as char, self.i))
            }
            Some(c) => Err(format!("{what}, found byte 0x{c:02x} at byte {}", self.i)),
        }
    }

    pub fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    pub fn end(&mut self) -> Result<(), String> {
        self.skip_ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("expected nothing after the JSON value")
        }
    }

    pub fn eat(&mut self, c: u8, what: &str) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    /// The top-level object, recording where `model` values sit.
    pub fn value(&mut self, depth: u32) -> Result<(), String> {
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
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let mut int_digits = 1;
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                int_digits = self.digits();
            }
            _ => return self.err("expected a digit"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("expected a digit after the decimal point");
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("expected a digit in the exponent");
            }
        }
        // serde_json refuses a number too large for an f64 (found by `make fuzz`:
        // `7e7777` passed here). Only an exponent or over 300 integer digits can be.
        if (exponent || int_digits > 300) && too_large_for_f64(&self.b[start..self.i]) {
            self.i = start;
            return self.err("number out of range");
        }
        Ok(())
    }

    /// A string; returns the range of its raw contents (quotes excluded).
    pub fn string(&mut self) -> Result<Range<usize>, String> {
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

/// Decodes the raw contents of a string the scanner has validated (quotes
/// excluded): escapes resolved, surrogate pairs joined. `None` if it is not valid.
pub fn decode_string(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    if !text.contains('\\') {
        return Some(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hex = |chars: &mut std::str::Chars<'_>| -> Option<u32> {
                    let digits: String = chars.by_ref().take(4).collect();
                    if digits.len() != 4 {
                        return None;
                    }
                    u32::from_str_radix(&digits, 16).ok()
                };
                let code = hex(&mut chars)?;
                if (0xD800..0xDC00).contains(&code) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let low = hex(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))?
                } else {
                    char::from_u32(code)?
                }
            }
            _ => return None,
        };
        out.push(decoded);
    }
    Some(out)
}

/// `text` as a JSON string literal, quotes included.
/// `quote(text)`, or `null` for none.
pub fn quote_or_null(text: Option<&str>) -> String {
    text.map(quote).unwrap_or_else(|| "null".to_string())
}

pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[(c as usize) >> 4] as char);
                out.push(HEX[(c as usize) & 15] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A parsed JSON value, for the plugin configuration. Numbers keep their text so
/// the reader decides what range and kind it accepts; objects keep member order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    /// How an error message names this kind of value.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Parses one JSON text into a [`Value`]. Errors say what is wrong and at which byte.
pub fn parse(text: &[u8]) -> Result<Value, String> {
    let mut s = Scanner { b: text, i: 0 };
    s.skip_ws();
    let v = s.parse_value(0)?;
    s.end()?;
    Ok(v)
}

impl Scanner<'_> {
    fn parse_value(&mut self, depth: u32) -> Result<Value, String> {
        let start = self.i;
        match self.peek() {
            Some(b'{') => {
                if depth + 1 > MAX_DEPTH {
                    return self.err("nesting deeper than 127 levels");
                }
                self.i += 1;
                let mut members = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(members));
                }
                loop {
                    self.skip_ws();
                    let key_at = self.i;
                    let key = self.string()?;
                    let key = decode_string(&self.b[key])
                        .ok_or_else(|| format!("bad string at byte {key_at}"))?;
                    self.skip_ws();
                    self.eat(b':', "expected ':' after an object key")?;
                    self.skip_ws();
                    let v = self.parse_value(depth + 1)?;
                    members.push((key, v));
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(members));
                        }
                        _ => return self.err("expected ',' or '}' in the object"),
                    }
                }
            }
            Some(b'[') => {
                if depth + 1 > MAX_DEPTH {
                    return self.err("nesting deeper than 127 levels");
                }
                self.i += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.parse_value(depth + 1)?);
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return self.err("expected ',' or ']' in the array"),
                    }
                }
            }
            Some(b'"') => {
                let raw = self.string()?;
                decode_string(&self.b[raw])
                    .map(Value::String)
                    .ok_or_else(|| format!("bad string at byte {start}"))
            }
            Some(b't') => self.literal(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                let text = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("0");
                Ok(Value::Number(text.to_string()))
            }
            _ => self.err("expected a JSON value"),
        }
    }
}

/// 10^289 to 10^308: the powers of ten by which a u64 significand can overflow an f64
/// (below 10^289 the product stays under 1.8e19 x 1e288).
const POW10_HIGH: [f64; 20] = [
    1e289, 1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299, 1e300, 1e301,
    1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
];

/// Whether serde_json refuses a well-formed JSON number as "number out of range".
/// Follows its float parsing step by step (without its `float_roundtrip` feature): a
/// u64 significand of the leading digits (integer digits past overflow raise the
/// exponent, fraction digits past it are dropped), times a power of ten. So it agrees
/// with serde_json even at the boundary, where its rounding differs from a correctly
/// rounded parse, and needs no float parser (18 KB more .wasm).
fn too_large_for_f64(number: &[u8]) -> bool {
    let text = number.strip_prefix(b"-").unwrap_or(number);
    let would_overflow =
        |s: u64, d: u64| s >= u64::MAX / 10 && (s > u64::MAX / 10 || d > u64::MAX % 10);
    let mut i = 0;
    let mut significand: u64 = 0;
    let mut exponent: i32 = 0;
    let mut long = false;
    while let Some(c @ b'0'..=b'9') = text.get(i).copied() {
        let d = u64::from(c - b'0');
        if long || would_overflow(significand, d) {
            long = true;
            exponent = exponent.saturating_add(1);
        } else {
            significand = significand * 10 + d;
        }
        i += 1;
    }
    if text.get(i) == Some(&b'.') {
        i += 1;
        let mut dropping = false;
        while let Some(c @ b'0'..=b'9') = text.get(i).copied() {
            let d = u64::from(c - b'0');
            if dropping || would_overflow(significand, d) {
                dropping = true;
            } else {
                significand = significand * 10 + d;
                exponent -= 1;
            }
            i += 1;
        }
    }
    if let Some(b'e' | b'E') = text.get(i) {
        i += 1;
        let positive = match text.get(i) {
            Some(b'-') => {
                i += 1;
                false
            }
            Some(b'+') => {
                i += 1;
                true
            }
            _ => true,
        };
        let mut exp: i32 = 0;
        while let Some(c @ b'0'..=b'9') = text.get(i).copied() {
            let d = i32::from(c - b'0');
            if exp >= i32::MAX / 10 && (exp > i32::MAX / 10 || d > i32::MAX % 10) {
                // serde_json: an exponent beyond i32 is out of range unless it makes
                // the number zero.
                return significand != 0 && positive;
            }
            exp = exp * 10 + d;
            i += 1;
        }
        exponent = if positive {
            exponent.saturating_add(exp)
        } else {
            exponent.saturating_sub(exp)
        };
    }
    if significand == 0 || exponent < 289 {
        return false;
    }
    match POW10_HIGH.get((exponent - 289) as usize) {
        Some(pow) => (significand as f64 * pow).is_infinite(),
        None => true, // beyond 10^308
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn numbers_beyond_an_f64_are_refused_like_serde_json_does() {
        let long_ones = "1".repeat(309);
        let long_twos = format!("2{}", "0".repeat(308));
        for n in [
            "1e308",
            "1.7976931348623157e308",
            "1.8e308",
            "1e309",
            "-1e309",
            "0e99999",
            "0.0000001e315",
            "10e308",
            "1e-400",
            "7e7777",
            "1.7976931348623158e308",
            "17976931348623158e292",
            "1797693134862315708e290",
            "1e2147483648",
            "0e2147483648",
            "1e-2147483649",
            long_ones.as_str(),
            long_twos.as_str(),
        ] {
            let ours = too_large_for_f64(n.as_bytes());
            let theirs = serde_json::from_str::<serde_json::Value>(n).is_err();
            assert_eq!(ours, theirs, "{n}");
        }
    }

    use super::*;

    #[test]
    fn parses_values_and_keeps_member_order() {
        let v =
            parse(br#" {"b": [1, -2.5e3, true, null], "a": "x\u00e9\ud83d\ude00\n"} "#).unwrap();
        assert_eq!(
            v,
            Value::Object(vec![
                (
                    "b".into(),
                    Value::Array(vec![
                        Value::Number("1".into()),
                        Value::Number("-2.5e3".into()),
                        Value::Bool(true),
                        Value::Null
                    ])
                ),
                ("a".into(), Value::String("xé😀\n".into())),
            ])
        );
    }

    #[test]
    fn parse_refuses_what_serde_json_refuses() {
        for bad in [
            &b"{"[..],
            b"{\"a\" 1}",
            b"[1,]",
            b"01",
            b"\"\\ud800\"",
            b"{} x",
            b"tru",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(serde_json::from_slice::<serde_json::Value>(bad).is_err());
        }
    }

    #[test]
    fn quote_round_trips_through_serde_json() {
        for text in [
            "plain",
            "a\"b\\c",
            "line\nbreak\ttab\r",
            "\u{1}\u{1f}\u{7f}",
            "é😀",
        ] {
            let quoted = quote(text);
            assert_eq!(
                serde_json::from_str::<String>(&quoted).unwrap(),
                text,
                "{quoted}"
            );
            assert_eq!(
                decode_string(&quoted.as_bytes()[1..quoted.len() - 1]).as_deref(),
                Some(text)
            );
        }
    }

    #[test]
    fn decode_string_resolves_escapes() {
        assert_eq!(decode_string(br#"mod\u0065l"#).as_deref(), Some("model"));
        assert_eq!(
            decode_string(br#"a\"b\\c\/d\b\f\n\r\t"#).as_deref(),
            Some("a\"b\\c/d\u{8}\u{c}\n\r\t")
        );
        assert_eq!(decode_string(br#"\ud83d\ude00"#).as_deref(), Some("😀"));
        assert_eq!(decode_string(br#"\ud83d"#), None);
        assert_eq!(decode_string(br#"\x"#), None);
    }
}

//! Parsing of the configuration's duration strings (`"500ms"`, `"1.5s"`, `"2m"`,
//! `"1m30s"`) into whole milliseconds. Pure; no knowledge of which field is parsed.
//! Integer arithmetic only: no float parsing code in the `.wasm` for this.

/// A week is far beyond any sensible cooldown or timeout; refusing it catches unit typos.
const MAX_MS: u64 = 7 * 24 * 3_600_000;

/// Parses a duration string into milliseconds.
///
/// Accepted: one or more `<number><unit>` terms, the number a non-negative decimal
/// and the unit one of `ms`, `s`, `m`, `h`. Fractions finer than a millisecond are
/// rounded to the nearest one. Anything else is an error that says why.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let shown = format!("\"{}\"", text.escape_default());
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; expected e.g. \"500ms\", \"1.5s\", \"60s\", \"2m\"".into());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_us: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[start..i];
        if number.is_empty() {
            return Err(format!(
                "bad duration {shown}: expected a number at position {start}"
            ));
        }
        // Microseconds of one unit, so a fraction down to 1/1000 of a millisecond is exact.
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_us: u128 = match &s[unit_start..i] {
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "" => {
                return Err(format!(
                    "bad duration {shown}: missing unit after {number} (use ms, s, m or h)"
                ))
            }
            other => {
                return Err(format!(
                    "bad duration {shown}: unknown unit \"{}\" (use ms, s, m or h)",
                    other.escape_default()
                ))
            }
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || fraction.contains('.')
            || (number.contains('.') && fraction.is_empty())
        {
            return Err(format!("bad duration {shown}: {number} is not a number"));
        }
        // Digits beyond what fits are a duration far over the limit anyway.
        let whole: u128 = whole.parse().unwrap_or(u128::MAX / 4);
        let mut value = whole.saturating_mul(unit_us);
        let mut scale = unit_us;
        for digit in fraction.bytes().take(12) {
            scale /= 10;
            value = value.saturating_add(u128::from(digit - b'0') * scale);
        }
        total_us = total_us.saturating_add(value);
    }
    let total_ms = total_us.saturating_add(500) / 1_000;
    if total_ms > u128::from(MAX_MS) {
        return Err(format!("bad duration {shown}: longer than 168h"));
    }
    Ok(total_ms as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn accepts_the_documented_forms() {
        let cases = [
            ("500ms", 500),
            ("1.5s", 1_500),
            ("60s", 60_000),
            ("2m", 120_000),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            (" 0s ", 0),
            ("0.25s", 250),
            ("0.0005s", 1),
            ("1.25ms", 1),
            ("168h", 604_800_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration_ms(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_malformed_durations_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("60", "missing unit"),
            ("10 s", "missing unit"),
            ("5d", "unknown unit"),
            ("-5s", "expected a number"),
            ("1..5s", "not a number"),
            (".5s", "not a number"),
            ("5.s", "not a number"),
            ("s", "expected a number"),
            ("200h", "longer than 168h"),
            (
                "99999999999999999999999999999999999999999h",
                "longer than 168h",
            ),
        ];
        for (text, reason) in cases {
            let err = parse_duration_ms(text).unwrap_err();
            assert!(err.contains(reason), "{text:?} gave {err:?}");
        }
    }
}

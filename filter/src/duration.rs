//! Parsing of the configuration's duration strings (`"500ms"`, `"1.5s"`, `"2m"`,
//! `"1m30s"`) into whole milliseconds. Pure; no knowledge of which field is parsed.

/// Parses a duration string into milliseconds.
///
/// Accepted: one or more `<number><unit>` terms, the number a non-negative decimal
/// and the unit one of `ms`, `s`, `m`, `h`. Anything else is an error that says why.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; expected e.g. \"500ms\", \"1.5s\", \"60s\", \"2m\"".into());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: f64 = 0.0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[start..i];
        if number.is_empty() {
            return Err(format!(
                "bad duration {text:?}: expected a number at position {start}"
            ));
        }
        let value: f64 = number
            .parse()
            .map_err(|_| format!("bad duration {text:?}: {number:?} is not a number"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor = match &s[unit_start..i] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "" => {
                return Err(format!(
                    "bad duration {text:?}: missing unit after {number:?} (use ms, s, m or h)"
                ))
            }
            other => {
                return Err(format!(
                    "bad duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        total += value * factor;
    }
    // A week is far beyond any sensible cooldown or timeout; refusing it catches unit typos.
    const MAX_MS: f64 = 7.0 * 24.0 * 3_600_000.0;
    if !total.is_finite() || total > MAX_MS {
        return Err(format!("bad duration {text:?}: longer than 168h"));
    }
    Ok(total.round() as u64)
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
            ("s", "expected a number"),
            ("200h", "longer than 168h"),
        ];
        for (text, reason) in cases {
            let err = parse_duration_ms(text).unwrap_err();
            assert!(err.contains(reason), "{text:?} gave {err:?}");
        }
    }
}

//! Parsing of `Retry-After` into a delay, with `now` passed in. Pure parsing: what a
//! delay means for a provider's health is decided in `health.rs`.

use std::time::{Duration, UNIX_EPOCH};

/// Parses a `Retry-After` value (RFC 9110: delta-seconds or an HTTP-date) into a
/// delay in milliseconds from `now_ms` (Unix epoch milliseconds).
///
/// A date in the past gives 0. A value that is neither form gives `None`, so the
/// caller falls back to its default cooldown. Huge numbers saturate rather than
/// overflow; the caller caps them.
pub fn parse_retry_after(value: &str, now_ms: u64) -> Option<u64> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than u64 holds is still "a very long time", not garbage.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(secs.saturating_mul(1_000));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    let when_ms = when
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    let when_ms = u64::try_from(when_ms).unwrap_or(u64::MAX);
    Some(when_ms.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::parse_retry_after;

    // Sun, 06 Nov 1994 08:49:37 GMT, the RFC's example date.
    const RFC_EXAMPLE_MS: u64 = 784_111_777_000;

    #[test]
    fn parses_delta_seconds_and_dates() {
        let now = RFC_EXAMPLE_MS - 30_000;
        let cases: [(&str, Option<u64>); 14] = [
            ("0", Some(0)),
            ("1", Some(1_000)),
            ("60", Some(60_000)),
            (" 120 ", Some(120_000)),
            ("99999999999999999999999", Some(u64::MAX)),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(30_000)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(30_000)),
            ("Sun Nov  6 08:49:37 1994", Some(30_000)),
            ("Sat, 05 Nov 1994 08:49:37 GMT", Some(0)),
            ("", None),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("Sun, 32 Nov 1994 08:49:37 GMT", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
    }
}

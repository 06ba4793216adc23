//! How long a provider asks to be left alone: `Retry-After` and the providers' own
//! rate-limit headers, parsed with `now` passed in. Pure parsing: what a delay does to
//! a provider's health is decided in `health.rs`.

use std::time::{Duration, UNIX_EPOCH};

use crate::duration::parse_duration_ms;

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
    Some(
        u64::try_from(when_ms)
            .unwrap_or(u64::MAX)
            .saturating_sub(now_ms),
    )
}

/// How a reset header states its time.
#[derive(Clone, Copy)]
enum ResetFormat {
    /// OpenAI: a Go-style duration, `"1s"`, `"6m0s"`, `"20ms"`.
    Duration,
    /// Anthropic: an RFC 3339 instant.
    Rfc3339,
    /// `x-ratelimit-reset`: seconds from now, or a Unix time in seconds.
    SecondsOrEpoch,
}

/// Each limit a provider reports: its "remaining" header and its "reset" header.
const LIMITS: [(&str, &str, ResetFormat); 7] = [
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        ResetFormat::Duration,
    ),
    (
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        ResetFormat::Duration,
    ),
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        ResetFormat::Rfc3339,
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
        ResetFormat::Rfc3339,
    ),
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
        ResetFormat::Rfc3339,
    ),
    (
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
        ResetFormat::Rfc3339,
    ),
    (
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        ResetFormat::SecondsOrEpoch,
    ),
];

/// Response headers as the host gives them: lower-case names, raw values.
pub type Headers = [(String, Vec<u8>)];

fn get<'h>(headers: &'h Headers, name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::trim)
}

/// The delay a failing response (429, 5xx) asks for, from the best evidence in it:
/// an explicit millisecond hint (`retry-after-ms`, Azure's `x-ms-retry-after-ms`),
/// then `Retry-After`, then the reset time of the limits it reports as spent, then
/// the latest reset time it reports at all. `None` when it says nothing usable.
pub fn failure_delay(headers: &Headers, now_ms: u64) -> Option<u64> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = get(headers, name).and_then(parse_millis) {
            return Some(ms);
        }
    }
    if let Some(d) = get(headers, "retry-after").and_then(|v| parse_retry_after(v, now_ms)) {
        return Some(d);
    }
    spent_limits_reset(headers, now_ms).or_else(|| {
        LIMITS
            .iter()
            .filter_map(|(_, reset, format)| parse_reset(get(headers, reset)?, *format, now_ms))
            .max()
    })
}

/// For a successful response: `Some(delay)` when it reports a limit with nothing
/// remaining (delay until that limit resets, `None` inside when it gives no usable
/// reset time); `None` when no limit is spent.
pub fn quota_spent(headers: &Headers, now_ms: u64) -> Option<Option<u64>> {
    let spent = LIMITS
        .iter()
        .any(|(remaining, _, _)| get(headers, remaining).is_some_and(is_zero));
    spent.then(|| spent_limits_reset(headers, now_ms))
}

/// The latest reset among the limits reported as spent (all must have reset before
/// a request can go through).
fn spent_limits_reset(headers: &Headers, now_ms: u64) -> Option<u64> {
    LIMITS
        .iter()
        .filter(|(remaining, _, _)| get(headers, remaining).is_some_and(is_zero))
        .filter_map(|(_, reset, format)| parse_reset(get(headers, reset)?, *format, now_ms))
        .max()
}

fn is_zero(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b == b'0')
}

fn parse_reset(value: &str, format: ResetFormat, now_ms: u64) -> Option<u64> {
    match format {
        ResetFormat::Duration => parse_duration_ms(value).ok(),
        ResetFormat::Rfc3339 => parse_rfc3339_ms(value).map(|at| at.saturating_sub(now_ms)),
        ResetFormat::SecondsOrEpoch => {
            // Below 10^9 a value is a count of seconds; from there a Unix time in
            // seconds (10^9 s is 2001-09-09); from 10^12 one in milliseconds.
            let v = parse_millis(value)?;
            Some(if v >= 1_000_000_000_000 {
                v.saturating_sub(now_ms)
            } else if v >= 1_000_000_000 {
                v.saturating_mul(1_000).saturating_sub(now_ms)
            } else {
                v.saturating_mul(1_000)
            })
        }
    }
}

/// A non-negative decimal number (`"1500"`, `"1500.5"`), rounded down; anything else
/// (signs, exponents, words) is `None`. Too many digits saturate.
fn parse_millis(value: &str) -> Option<u64> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(whole.parse::<u64>().unwrap_or(u64::MAX))
}

/// An RFC 3339 instant (`2026-11-24T15:04:05Z`, with optional fraction and offset) as
/// Unix milliseconds.
/// Days in `month` (1-12) of `year`, by the Gregorian calendar.
fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

pub fn parse_rfc3339_ms(value: &str) -> Option<u64> {
    let b = value.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = b.get(range)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &value[start..i.min(start + 3)];
        millis = digits.parse::<u64>().ok()? * 10u64.pow(3 - digits.len() as u32);
    }
    let offset_secs: i64 = match b.get(i..) {
        Some(b"Z" | b"z") => 0,
        Some([sign @ (b'+' | b'-'), ..]) if b.len() == i + 6 && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = (h * 3_600 + m * 60) as i64;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3_600 + minute * 60 + second) as i64 - offset_secs;
    u64::try_from(secs)
        .ok()
        .map(|s| s.saturating_mul(1_000).saturating_add(millis))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    // Sun, 06 Nov 1994 08:49:37 GMT, the RFC's example date.
    const RFC_EXAMPLE_MS: u64 = 784_111_777_000;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn parses_retry_after_delta_seconds_and_dates() {
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

    #[test]
    fn parses_rfc3339() {
        let cases: [(&str, Option<u64>); 11] = [
            ("1994-11-06T08:49:37Z", Some(RFC_EXAMPLE_MS)),
            ("1994-11-06t08:49:37z", Some(RFC_EXAMPLE_MS)),
            ("1994-11-06T08:49:37.5Z", Some(RFC_EXAMPLE_MS + 500)),
            ("1994-11-06T08:49:37.123456Z", Some(RFC_EXAMPLE_MS + 123)),
            ("1994-11-06T09:49:37+01:00", Some(RFC_EXAMPLE_MS)),
            ("1994-11-06T07:49:37-01:00", Some(RFC_EXAMPLE_MS)),
            ("2000-02-29T00:00:00Z", Some(951_782_400_000)),
            ("1994-13-06T08:49:37Z", None),
            ("1994-11-06T08:49:37", None),
            ("1969-12-31T23:59:59Z", None),
            ("1994-11-06T08:49:37.Z", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_rfc3339_ms(value), want, "{value:?}");
        }
    }

    #[test]
    fn impossible_dates_are_rejected() {
        for value in [
            "2026-02-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-00T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(value), None, "{value:?}");
        }
        for value in [
            "2024-02-29T00:00:00Z",
            "2000-02-29T00:00:00Z",
            "2026-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339_ms(value).is_some(), "{value:?}");
        }
    }

    #[test]
    fn failure_delay_takes_the_best_evidence() {
        let now = RFC_EXAMPLE_MS;
        /// Response headers, and the delay they should give.
        type Case<'a> = (Vec<(&'a str, &'a str)>, Option<u64>);
        let cases: Vec<Case<'_>> = vec![
            (vec![], None),
            (vec![("retry-after", "7")], Some(7_000)),
            (
                vec![("retry-after", "7"), ("retry-after-ms", "1500")],
                Some(1_500),
            ),
            (
                vec![("x-ms-retry-after-ms", "250.9"), ("retry-after", "1")],
                Some(250),
            ),
            (
                vec![("retry-after-ms", "-5"), ("retry-after", "3")],
                Some(3_000),
            ),
            // OpenAI: the spent limit's reset counts, not the other one.
            (
                vec![
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "1s"),
                    ("x-ratelimit-remaining-tokens", "5000"),
                    ("x-ratelimit-reset-tokens", "6m0s"),
                ],
                Some(1_000),
            ),
            (
                vec![
                    ("x-ratelimit-reset-tokens", "20ms"),
                    ("x-ratelimit-reset-requests", "1.5s"),
                ],
                Some(1_500),
            ),
            // Anthropic: RFC 3339 resets.
            (
                vec![
                    ("anthropic-ratelimit-tokens-remaining", "0"),
                    ("anthropic-ratelimit-tokens-reset", "1994-11-06T08:50:37Z"),
                ],
                Some(60_000),
            ),
            // x-ratelimit-reset: seconds, epoch seconds, epoch milliseconds.
            (
                vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30")],
                Some(30_000),
            ),
            // Garbage and the past never panic; the past is 0.
            (
                vec![
                    ("retry-after", "soon"),
                    ("x-ratelimit-reset-requests", "forever"),
                ],
                None,
            ),
            (
                vec![("anthropic-ratelimit-requests-reset", "1970-01-01T00:00:00Z")],
                Some(0),
            ),
            (vec![("retry-after", "\u{1F642}")], None),
            (
                vec![("x-ratelimit-reset", "99999999999999999999999999")],
                Some(u64::MAX - RFC_EXAMPLE_MS),
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(failure_delay(&headers(&pairs), now), want, "{pairs:?}");
        }
    }

    #[test]
    fn x_ratelimit_reset_reads_seconds_or_a_unix_time() {
        let now = 1_700_000_000_000; // 2023
        for (value, want) in [
            ("30", 30_000),
            ("1700000010", 10_000),
            ("1700000010000", 10_000),
            ("1600000000", 0),
        ] {
            let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", value)]);
            assert_eq!(failure_delay(&h, now), Some(want), "{value}");
        }
    }

    #[test]
    fn quota_spent_only_when_a_limit_is_at_zero() {
        let now = RFC_EXAMPLE_MS;
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "2s"),
        ]);
        assert_eq!(quota_spent(&h, now), Some(Some(2_000)));
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "12"),
            ("x-ratelimit-reset-requests", "2s"),
        ]);
        assert_eq!(quota_spent(&h, now), None);
        let h = headers(&[("anthropic-ratelimit-requests-remaining", "0")]);
        assert_eq!(quota_spent(&h, now), Some(None));
        let h = headers(&[
            ("x-ratelimit-remaining-tokens", "00"),
            ("x-ratelimit-reset-tokens", "bogus"),
        ]);
        assert_eq!(quota_spent(&h, now), Some(None));
        assert_eq!(
            quota_spent(&headers(&[("x-ratelimit-remaining-tokens", "")]), now),
            None
        );
        assert_eq!(
            quota_spent(&headers(&[("x-ratelimit-remaining-tokens", "-0")]), now),
            None
        );
    }
}

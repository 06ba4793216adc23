//! The health view: every provider's breaker state as JSON, for operators. Pure: the
//! registered providers (`registry.rs`), their records and the time come in as
//! arguments.

use crate::health::{HealthRecord, State};
use crate::json::{quote, quote_or_null};
use crate::registry::Registry;

fn state_name(state: State) -> &'static str {
    match state {
        State::Healthy => "healthy",
        State::Cooling => "cooling",
        State::HalfOpen => "half_open",
        State::Probing => "probing",
    }
}

/// `{"now": ..., "providers": [{"name", "cluster", "group", "state", ...}],
/// "conflicts": [...]}`. Instants are RFC 3339 (UTC) or null; `cooling_for_ms` is what
/// is left of a cooldown; `conflicts` lists providers two configurations define
/// differently (see `registry.rs`).
pub fn health_json(registry: &Registry, records: &[HealthRecord], now_ms: u64) -> String {
    let mut out = format!("{{\"now\":{},\"providers\":[", quote(&rfc3339(now_ms)));
    for (i, p) in registry.entries.iter().enumerate() {
        let r = records.get(i).copied().unwrap_or_default();
        let state = r.state(now_ms);
        let instant = |ms: u64| {
            if ms == 0 {
                "null".to_string()
            } else {
                quote(&rfc3339(ms))
            }
        };
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"name\":{},\"cluster\":{},\"model\":{},\"group\":{},\"state\":\"{}\",\
             \"cooling_until\":{},\"cooling_for_ms\":{},\"probe_claimed_until\":{},\
             \"last_failure\":{},\"last_reason\":\"{}\",\"consecutive_failures\":{},\
             \"cooldowns_in_a_row\":{}}}",
            quote(&p.name),
            quote(&p.cluster),
            quote_or_null(p.model.as_deref()),
            p.group,
            state_name(state),
            if state == State::Cooling {
                instant(r.cooling_until_ms)
            } else {
                "null".into()
            },
            r.cooling_until_ms.saturating_sub(now_ms),
            if state == State::Probing {
                instant(r.probe_until_ms)
            } else {
                "null".into()
            },
            instant(r.last_failure_ms),
            r.reason.as_str(),
            r.failures,
            r.cooldowns,
        ));
    }
    out.push_str("],\"conflicts\":[");
    let conflicts: Vec<String> = registry.conflicts.iter().map(|c| quote(&c.line)).collect();
    out.push_str(&conflicts.join(","));
    out.push_str("]}");
    out
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1_000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm, the inverse of `retry_after::days_from_civil`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Reason;
    use crate::retry_after::parse_rfc3339_ms;

    #[test]
    fn rfc3339_round_trips() {
        for ms in [
            0,
            951_782_400_000,
            784_111_777_123,
            1_795_000_000_999,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_rfc3339_ms(&rfc3339(ms)), Some(ms), "{}", rfc3339(ms));
        }
        assert_eq!(rfc3339(784_111_777_000), "1994-11-06T08:49:37.000Z");
    }

    #[test]
    fn view_shows_each_providers_state() {
        let json = r#"{"groups":[{"providers":[{"name":"p","cluster":"c","openai":{"model":"m"}}]},
                                  {"providers":[{"name":"f","cluster":"d"}]}]}"#;
        let config = crate::config::Config::parse(json.as_bytes(), &|_| None).unwrap();
        let now = 784_111_777_000;
        let mut registry = Registry::default();
        registry.merge(&config, now);
        let records = [
            HealthRecord {
                cooling_until_ms: now + 5_000,
                cooldowns: 1,
                reason: Reason::Status,
                last_failure_ms: now,
                ..HealthRecord::default()
            },
            HealthRecord::default(),
        ];
        let v: serde_json::Value =
            serde_json::from_str(&health_json(&registry, &records, now)).unwrap();
        let p = &v["providers"][0];
        assert_eq!(p["name"], "p");
        assert_eq!(p["model"], "m");
        assert_eq!(p["state"], "cooling");
        assert_eq!(p["cooling_until"], "1994-11-06T08:49:42.000Z");
        assert_eq!(p["cooling_for_ms"], 5_000);
        assert_eq!(p["last_reason"], "status");
        assert_eq!(p["last_failure"], "1994-11-06T08:49:37.000Z");
        let f = &v["providers"][1];
        assert_eq!(
            (f["state"].as_str(), f["group"].as_u64()),
            (Some("healthy"), Some(1))
        );
        assert!(f["model"].is_null() && f["last_failure"].is_null());
        assert_eq!(v["conflicts"], serde_json::json!([]));
    }
}

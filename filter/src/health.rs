//! A provider's health as stored in shared data, and the cooldown rule. Pure: the
//! store and the clock are someone else's.
//!
//! Times are absolute Unix milliseconds because shared data has no TTL and is read
//! by every worker VM: an expiry instant means the same thing to all of them.

use crate::config::Failover;

/// Encoding version; a record with another version is treated as unreadable.
const VERSION: u8 = 1;
const ENCODED_LEN: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthRecord {
    /// The provider is skipped until this instant (Unix ms); 0 = never failed.
    pub cooling_until_ms: u64,
}

impl HealthRecord {
    pub fn is_cooling(&self, now_ms: u64) -> bool {
        self.cooling_until_ms > now_ms
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = VERSION;
        out[1..].copy_from_slice(&self.cooling_until_ms.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<HealthRecord> {
        if bytes.len() != ENCODED_LEN || bytes[0] != VERSION {
            return None;
        }
        let mut until = [0u8; 8];
        until.copy_from_slice(&bytes[1..]);
        Some(HealthRecord {
            cooling_until_ms: u64::from_le_bytes(until),
        })
    }

    /// The record after a failure that asks for cooling until `until_ms`. Racing
    /// workers may report failures with different delays; the later end wins, so no
    /// report can shorten a cooldown another worker has just set.
    pub fn after_failure(self, until_ms: u64) -> HealthRecord {
        HealthRecord {
            cooling_until_ms: self.cooling_until_ms.max(until_ms),
        }
    }
}

/// How long a failed provider cools down: `Retry-After` when the response had a
/// usable one, else the configured default, never beyond `maxCooldown`.
pub fn cooldown_ms(retry_after_ms: Option<u64>, failover: &Failover) -> u64 {
    retry_after_ms
        .unwrap_or(failover.default_cooldown_ms)
        .min(failover.max_cooldown_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn failover(default: &str, max: &str) -> Failover {
        let json = format!(
            r#"{{"groups":[{{"providers":[{{"name":"a","cluster":"c"}}]}}],
                "failover":{{"defaultCooldown":"{default}","maxCooldown":"{max}"}}}}"#
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap().failover
    }

    #[test]
    fn record_round_trips_and_rejects_foreign_bytes() {
        let r = HealthRecord {
            cooling_until_ms: 1_700_000_000_123,
        };
        assert_eq!(HealthRecord::decode(&r.encode()), Some(r));
        assert_eq!(HealthRecord::decode(b""), None);
        assert_eq!(HealthRecord::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(HealthRecord::decode(&[1, 0, 0]), None);
    }

    #[test]
    fn cooling_ends_exactly_at_the_deadline() {
        let r = HealthRecord {
            cooling_until_ms: 1_000,
        };
        assert!(r.is_cooling(999));
        assert!(!r.is_cooling(1_000));
        assert!(!HealthRecord::default().is_cooling(0));
    }

    #[test]
    fn cooldown_uses_retry_after_else_default_capped_by_max() {
        let f = failover("60s", "600s");
        assert_eq!(cooldown_ms(Some(5_000), &f), 5_000);
        assert_eq!(cooldown_ms(None, &f), 60_000);
        assert_eq!(cooldown_ms(Some(0), &f), 0);
        assert_eq!(cooldown_ms(Some(3_600_000), &f), 600_000);
        assert_eq!(cooldown_ms(Some(u64::MAX), &f), 600_000);
    }

    #[test]
    fn later_failure_never_shortens_a_cooldown() {
        let r = HealthRecord {
            cooling_until_ms: 10_000,
        };
        assert_eq!(r.after_failure(5_000).cooling_until_ms, 10_000);
        assert_eq!(r.after_failure(20_000).cooling_until_ms, 20_000);
    }
}

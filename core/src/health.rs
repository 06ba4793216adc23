//! A provider's health as stored in shared data: a small circuit breaker. Pure: the
//! store and the clock are someone else's.
//!
//! ```text
//!  healthy --failure (429, quota, auth at once; 5xx/unreachable after N in a row)--> cooling
//!  cooling --cooldown ends--> half-open --one request claims it--> probing
//!  probing --success--> healthy          probing --failure--> cooling (backed off)
//!  probing --claim expires (probe never answered)--> half-open
//! ```
//!
//! Times are absolute Unix milliseconds because shared data has no TTL and is read
//! by every worker VM: an instant means the same thing to all of them.

use crate::config::Failover;

/// Encoding version; a record with another version is treated as unreadable.
const VERSION: u8 = 2;
const ENCODED_LEN: usize = 1 + 8 + 8 + 4 + 4 + 1 + 8;

/// Why a provider was last put into cooldown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reason {
    #[default]
    None,
    /// It answered a status from `onStatus`.
    Status,
    /// It could not be reached (refused, reset, timed out).
    Unreachable,
    /// A successful answer said its quota was spent.
    Proactive,
    /// No response headers within `firstByteTimeout`.
    Timeout,
    /// Its stream broke off (no terminal event, or reset mid-way).
    BrokenStream,
    /// 429, a rate limit.
    RateLimited,
    /// Another 5xx from `onStatus`.
    ServerError,
    /// Out of quota or credit (error class `quota`).
    Quota,
    /// It refused the injected key (error class `auth`).
    Auth,
    /// Overloaded (Anthropic's 529, an "overloaded" 503).
    Overloaded,
    /// A stream that fell silent after its first events (`streamIdleTimeout`), or
    /// whose first event did not come after its headers (`firstTokenTimeout`).
    Stall,
}

impl Reason {
    fn code(self) -> u8 {
        match self {
            Reason::None => 0,
            Reason::Status => 1,
            Reason::Unreachable => 2,
            Reason::Proactive => 3,
            Reason::Timeout => 4,
            Reason::BrokenStream => 5,
            Reason::RateLimited => 6,
            Reason::ServerError => 7,
            Reason::Quota => 8,
            Reason::Auth => 9,
            Reason::Overloaded => 10,
            Reason::Stall => 11,
        }
    }

    fn from_code(code: u8) -> Option<Reason> {
        Some(match code {
            0 => Reason::None,
            1 => Reason::Status,
            2 => Reason::Unreachable,
            3 => Reason::Proactive,
            4 => Reason::Timeout,
            5 => Reason::BrokenStream,
            6 => Reason::RateLimited,
            7 => Reason::ServerError,
            8 => Reason::Quota,
            9 => Reason::Auth,
            10 => Reason::Overloaded,
            11 => Reason::Stall,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::Status => "status",
            Reason::Unreachable => "connection",
            Reason::Proactive => "proactive",
            Reason::Timeout => "timeout",
            Reason::BrokenStream => "broken_stream",
            Reason::RateLimited => "rate_limited",
            Reason::ServerError => "server_error",
            Reason::Quota => "quota",
            Reason::Auth => "auth",
            Reason::Overloaded => "overloaded",
            Reason::Stall => "stall",
        }
    }
}

/// What a provider's answer was, as far as its health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 429: the provider says it is rate limited; acts at once.
    RateLimited,
    /// A 5xx from `onStatus`: counts toward `consecutiveFailures`.
    ServerError,
    /// Another status from `onStatus` (a 4xx the operator listed): counts toward
    /// `consecutiveFailures`.
    Status,
    /// Overloaded (error class `overloaded`): counts toward `consecutiveFailures`.
    Overloaded,
    /// Out of quota or credit (error class `quota`): cools for `maxCooldown` at once.
    Quota,
    /// The injected key was refused (error class `auth`): cools for `maxCooldown` at once.
    Auth,
    /// A stream that stalled after its headers: counts toward `consecutiveFailures`.
    Stall,
    /// Refused, reset or timed out: counts toward `consecutiveFailures`.
    Unreachable,
    /// No response headers within `firstByteTimeout`: counts toward `consecutiveFailures`.
    Timeout,
    /// A stream that ended without its terminal event, or was reset mid-way: counts
    /// toward `consecutiveFailures`.
    BrokenStream,
    /// A 2xx whose rate-limit headers say the quota is spent; acts at once.
    QuotaSpent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Healthy,
    /// Skipped until `cooling_until_ms`.
    Cooling,
    /// The cooldown is over; the next request to claim it probes the provider.
    HalfOpen,
    /// A probe is under way (claimed until `probe_until_ms`).
    Probing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthRecord {
    /// End of the current or last cooldown (Unix ms); 0 when healthy.
    pub cooling_until_ms: u64,
    /// End of the claim of an in-flight probe; 0 when none.
    pub probe_until_ms: u64,
    /// Consecutive 5xx/unreachable failures not yet enough for a cooldown.
    pub failures: u32,
    /// Cooldowns in a row without a success: the backoff exponent.
    pub cooldowns: u32,
    pub reason: Reason,
    /// When the provider last failed (Unix ms); 0 never. For the health view.
    pub last_failure_ms: u64,
}

impl HealthRecord {
    pub fn state(&self, now_ms: u64) -> State {
        if self.cooling_until_ms > now_ms {
            State::Cooling
        } else if self.cooling_until_ms == 0 {
            State::Healthy
        } else if self.probe_until_ms > now_ms {
            State::Probing
        } else {
            State::HalfOpen
        }
    }

    /// Whether a request may go to this provider without claiming anything. A record
    /// that never failed needs no clock to say so.
    pub fn is_clear(&self) -> bool {
        self.cooling_until_ms == 0
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = VERSION;
        out[1..9].copy_from_slice(&self.cooling_until_ms.to_le_bytes());
        out[9..17].copy_from_slice(&self.probe_until_ms.to_le_bytes());
        out[17..21].copy_from_slice(&self.failures.to_le_bytes());
        out[21..25].copy_from_slice(&self.cooldowns.to_le_bytes());
        out[25] = self.reason.code();
        out[26..34].copy_from_slice(&self.last_failure_ms.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<HealthRecord> {
        if bytes.len() != ENCODED_LEN || bytes[0] != VERSION {
            return None;
        }
        let u64_at = |i: usize| bytes[i..i + 8].try_into().ok().map(u64::from_le_bytes);
        let u32_at = |i: usize| bytes[i..i + 4].try_into().ok().map(u32::from_le_bytes);
        Some(HealthRecord {
            cooling_until_ms: u64_at(1)?,
            probe_until_ms: u64_at(9)?,
            failures: u32_at(17)?,
            cooldowns: u32_at(21)?,
            reason: Reason::from_code(bytes[25])?,
            last_failure_ms: u64_at(26)?,
        })
    }

    /// Claims the probe of a half-open provider until `now + probeTimeout`; `None`
    /// when there is nothing to claim (someone else holds it, or it is not half-open).
    pub fn claim_probe(self, now_ms: u64, failover: &Failover) -> Option<HealthRecord> {
        (self.state(now_ms) == State::HalfOpen).then(|| HealthRecord {
            probe_until_ms: now_ms.saturating_add(failover.probe_timeout_ms),
            ..self
        })
    }

    /// Gives back a probe claim that will not be used (the request was refused before
    /// reaching the provider), if the record still holds that very claim.
    pub fn release_probe(self, claim_until_ms: u64) -> Option<HealthRecord> {
        (self.probe_until_ms == claim_until_ms && claim_until_ms != 0).then_some(HealthRecord {
            probe_until_ms: 0,
            ..self
        })
    }

    /// The record after a good answer: healthy, counters reset. `None` when it is
    /// healthy already, so the common case writes nothing to shared data.
    pub fn after_success(self) -> Option<HealthRecord> {
        let healed = HealthRecord {
            last_failure_ms: self.last_failure_ms,
            reason: self.reason,
            ..HealthRecord::default()
        };
        (self != healed).then_some(healed)
    }

    /// The record after a failure. `evidence_ms` is how long the provider asked to be
    /// left alone (Retry-After and friends), if it said.
    pub fn after_failure(
        self,
        failure: Failure,
        evidence_ms: Option<u64>,
        now_ms: u64,
        failover: &Failover,
    ) -> HealthRecord {
        let state = self.state(now_ms);
        let counted = matches!(
            failure,
            Failure::ServerError
                | Failure::Status
                | Failure::Overloaded
                | Failure::Stall
                | Failure::Unreachable
                | Failure::Timeout
                | Failure::BrokenStream
        );
        // 5xx and connection failures are often transient: below the threshold they
        // are only counted. 429 and a spent quota are the provider's own word.
        if counted && state == State::Healthy && self.failures + 1 < failover.consecutive_failures {
            return HealthRecord {
                failures: self.failures + 1,
                last_failure_ms: now_ms,
                ..self
            };
        }
        // Failures reported by requests that were in flight together open one
        // cooldown, not one each: only a new cooldown grows the backoff.
        let cooldowns = if state == State::Cooling {
            self.cooldowns
        } else {
            self.cooldowns.saturating_add(1)
        };
        // Billing and keys do not heal in a minute, whatever a header says.
        let delay = match failure {
            Failure::Quota | Failure::Auth => failover.max_cooldown_ms,
            _ => cooldown_ms(evidence_ms, cooldowns, failover),
        };
        HealthRecord {
            // The later end wins, so no report can shorten a cooldown another worker set.
            cooling_until_ms: self
                .cooling_until_ms
                .max(now_ms.saturating_add(delay).max(1)),
            probe_until_ms: 0,
            failures: 0,
            cooldowns,
            reason: match failure {
                Failure::RateLimited => Reason::RateLimited,
                Failure::ServerError => Reason::ServerError,
                Failure::Status => Reason::Status,
                Failure::Overloaded => Reason::Overloaded,
                Failure::Quota => Reason::Quota,
                Failure::Auth => Reason::Auth,
                Failure::Stall => Reason::Stall,
                Failure::Unreachable => Reason::Unreachable,
                Failure::Timeout => Reason::Timeout,
                Failure::BrokenStream => Reason::BrokenStream,
                Failure::QuotaSpent => Reason::Proactive,
            },
            last_failure_ms: now_ms,
        }
    }
}

/// How long a cooldown lasts: what the provider asked for when it said (never
/// beyond `maxCooldown`), else `defaultCooldown` doubled for each earlier cooldown in
/// a row, never beyond `maxBackoff`: a provider that says nothing is probed again
/// soon, so it gets its traffic back soon after it heals.
pub fn cooldown_ms(evidence_ms: Option<u64>, cooldowns_in_a_row: u32, failover: &Failover) -> u64 {
    match evidence_ms {
        Some(delay) => delay.min(failover.max_cooldown_ms),
        None => {
            let doublings = cooldowns_in_a_row.saturating_sub(1).min(40);
            failover
                .default_cooldown_ms
                .saturating_mul(1u64 << doublings)
                .min(failover.max_backoff_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn failover(extra: &str) -> Failover {
        let json = format!(
            r#"{{"groups":[{{"providers":[{{"name":"a","cluster":"c"}}]}}],
                "failover":{{"defaultCooldown":"10s","maxBackoff":"40s","maxCooldown":"60s","probeTimeout":"5s"{extra}}}}}"#
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap().failover
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn record_round_trips_and_rejects_foreign_bytes() {
        let r = HealthRecord {
            cooling_until_ms: NOW + 5,
            probe_until_ms: NOW + 9,
            failures: 2,
            cooldowns: 3,
            reason: Reason::Proactive,
            last_failure_ms: NOW - 1,
        };
        assert_eq!(HealthRecord::decode(&r.encode()), Some(r));
        assert_eq!(HealthRecord::decode(b""), None);
        let mut v1 = r.encode();
        v1[0] = 1;
        assert_eq!(HealthRecord::decode(&v1), None);
        let mut bad_reason = r.encode();
        bad_reason[25] = 99;
        assert_eq!(HealthRecord::decode(&bad_reason), None);
    }

    #[test]
    fn rate_limit_opens_a_cooldown_at_once_with_retry_after() {
        let f = failover("");
        let r = HealthRecord::default().after_failure(Failure::RateLimited, Some(3_000), NOW, &f);
        assert_eq!(r.state(NOW), State::Cooling);
        assert_eq!(r.cooling_until_ms, NOW + 3_000);
        assert_eq!(r.reason, Reason::RateLimited);
        assert_eq!(r.state(NOW + 3_000), State::HalfOpen);
    }

    #[test]
    fn server_errors_below_threshold_are_only_counted() {
        let f = failover(r#","consecutiveFailures":3"#);
        let r1 = HealthRecord::default().after_failure(Failure::ServerError, None, NOW, &f);
        assert_eq!((r1.state(NOW), r1.failures), (State::Healthy, 1));
        let r2 = r1.after_failure(Failure::Unreachable, None, NOW, &f);
        assert_eq!((r2.state(NOW), r2.failures), (State::Healthy, 2));
        let r3 = r2.after_failure(Failure::ServerError, None, NOW, &f);
        assert_eq!(r3.state(NOW), State::Cooling);
        assert_eq!(r3.failures, 0);
        // A success in between starts the count again.
        let reset = r2.after_success().unwrap();
        assert_eq!(
            reset
                .after_failure(Failure::ServerError, None, NOW, &f)
                .failures,
            1
        );
        // 429 does not wait for the threshold.
        let r = r1.after_failure(Failure::RateLimited, None, NOW, &f);
        assert_eq!(r.state(NOW), State::Cooling);
    }

    #[test]
    fn cooldowns_without_retry_after_double_up_to_max() {
        let f = failover("");
        let mut r = HealthRecord::default();
        let mut now = NOW;
        let mut lengths = vec![];
        for _ in 0..5 {
            r = r.after_failure(Failure::ServerError, None, now, &f);
            lengths.push(r.cooling_until_ms - now);
            now = r.cooling_until_ms; // half-open: the probe fails
            r = r.claim_probe(now, &f).unwrap();
        }
        assert_eq!(lengths, vec![10_000, 20_000, 40_000, 40_000, 40_000]);
        // Retry-After wins over backoff, capped by maxCooldown, not maxBackoff.
        let r1 = r.after_failure(Failure::RateLimited, Some(50_000), now, &f);
        assert_eq!(r1.cooling_until_ms - now, 50_000);
        let r2 = r.after_failure(Failure::RateLimited, Some(1_000), now, &f);
        assert_eq!(r2.cooling_until_ms - now, 1_000);
        let r3 = r.after_failure(Failure::RateLimited, Some(u64::MAX), now, &f);
        assert_eq!(r3.cooling_until_ms - now, 60_000);
        // A success resets the backoff.
        let healed = r.after_success().unwrap();
        assert_eq!(
            healed
                .after_failure(Failure::ServerError, None, now, &f)
                .cooling_until_ms
                - now,
            10_000
        );
    }

    #[test]
    fn simultaneous_failures_open_one_cooldown() {
        let f = failover("");
        let r = HealthRecord::default().after_failure(Failure::RateLimited, None, NOW, &f);
        let again = r.after_failure(Failure::RateLimited, None, NOW + 1, &f);
        assert_eq!(again.cooldowns, 1);
        // ... and the later end wins.
        let shorter = r.after_failure(Failure::RateLimited, Some(1), NOW + 1, &f);
        assert_eq!(shorter.cooling_until_ms, r.cooling_until_ms);
    }

    #[test]
    fn exactly_one_probe_can_be_claimed_and_its_claim_expires() {
        let f = failover("");
        let cooling =
            HealthRecord::default().after_failure(Failure::RateLimited, Some(1_000), NOW, &f);
        assert_eq!(cooling.claim_probe(NOW, &f), None, "still cooling");
        let end = NOW + 1_000;
        let probing = cooling.claim_probe(end, &f).unwrap();
        assert_eq!(probing.state(end), State::Probing);
        assert_eq!(probing.claim_probe(end + 10, &f), None, "already claimed");
        // The probe never answered: after probeTimeout another request may claim it.
        assert_eq!(probing.state(end + 5_000), State::HalfOpen);
        assert!(probing.claim_probe(end + 5_000, &f).is_some());
        // A failed probe reopens the cooldown, backed off.
        let reopened = probing.after_failure(Failure::ServerError, None, end + 10, &f);
        assert_eq!(reopened.state(end + 10), State::Cooling);
        assert_eq!(reopened.cooling_until_ms, end + 10 + 20_000);
        // A good probe closes the breaker (the last failure is kept for the health view).
        let healed = probing.after_success().unwrap();
        assert_eq!(healed.state(end + 10), State::Healthy);
        assert_eq!(
            (healed.cooldowns, healed.failures, healed.probe_until_ms),
            (0, 0, 0)
        );
        assert_eq!(healed.last_failure_ms, NOW);
        assert_eq!(healed.after_success(), None);
    }

    #[test]
    fn healthy_success_writes_nothing() {
        assert_eq!(HealthRecord::default().after_success(), None);
        assert!(HealthRecord::default().is_clear());
    }

    #[test]
    fn quota_spent_cools_down_with_its_reason() {
        let f = failover("");
        let r = HealthRecord::default().after_failure(Failure::QuotaSpent, Some(2_000), NOW, &f);
        assert_eq!(
            (r.state(NOW), r.reason),
            (State::Cooling, Reason::Proactive)
        );
        assert_eq!(r.cooling_until_ms, NOW + 2_000);
    }

    #[test]
    fn quota_and_auth_cool_for_max_cooldown_whatever_the_provider_says() {
        let f = failover("");
        for failure in [Failure::Quota, Failure::Auth] {
            let r = HealthRecord::default().after_failure(failure, Some(2_000), NOW, &f);
            assert_eq!(r.cooling_until_ms, NOW + 60_000, "{failure:?}");
        }
        let r = HealthRecord::default().after_failure(Failure::Quota, None, NOW, &f);
        assert_eq!(
            (r.reason.as_str(), r.cooling_until_ms),
            ("quota", NOW + 60_000)
        );
        let r = HealthRecord::default().after_failure(Failure::Auth, None, NOW, &f);
        assert_eq!(r.reason.as_str(), "auth");
    }

    #[test]
    fn overloaded_and_stalls_are_counted_like_server_errors() {
        let f = failover(r#","consecutiveFailures":2"#);
        for failure in [Failure::Overloaded, Failure::Stall, Failure::Status] {
            let r = HealthRecord::default().after_failure(failure, None, NOW, &f);
            assert_eq!(
                (r.state(NOW), r.failures),
                (State::Healthy, 1),
                "{failure:?}"
            );
            let r = r.after_failure(failure, None, NOW, &f);
            assert_eq!(r.state(NOW), State::Cooling, "{failure:?}");
        }
    }

    /// With the default settings, a provider that fails for `outage` ms (every
    /// request in that time fails) and then heals takes traffic again within 30 s of
    /// healing, when requests come every `every` ms: for every moment it could heal.
    #[test]
    fn with_the_defaults_a_healed_provider_is_back_within_30_seconds() {
        let json = r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}]}"#;
        let f = Config::parse(json.as_bytes(), &|_| None).unwrap().failover;
        for (outage, every) in [
            (60_000u64, 4_000u64),
            (60_000, 1_000),
            (600_000, 4_000),
            (5_000, 4_000),
        ] {
            for offset in (0..every).step_by(250) {
                let healed_at = NOW + outage;
                let mut r = HealthRecord::default();
                let mut t = NOW + offset;
                let back = loop {
                    match r.state(t) {
                        State::Cooling | State::Probing => {}
                        State::Healthy | State::HalfOpen if t >= healed_at => break t,
                        State::Healthy => r = r.after_failure(Failure::ServerError, None, t, &f),
                        State::HalfOpen => {
                            r = r.claim_probe(t, &f).unwrap();
                            r = r.after_failure(Failure::ServerError, None, t, &f);
                        }
                    }
                    t += every;
                };
                assert!(
                    back - healed_at <= 30_000,
                    "outage {outage} ms, a request every {every} ms from +{offset} ms: back {} ms after healing",
                    back - healed_at
                );
            }
        }
    }

    #[test]
    fn a_zero_delay_still_needs_a_probe() {
        let f = failover("");
        let r = HealthRecord::default().after_failure(Failure::RateLimited, Some(0), NOW, &f);
        assert_eq!(r.state(NOW), State::HalfOpen);
    }
}

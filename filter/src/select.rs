//! Which provider serves a request, given the priority groups and each provider's
//! health. Pure: health and time come in as arguments.

use crate::config::Config;
use crate::health::HealthRecord;

/// The provider a request starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A provider that is not cooling down, from the highest-priority group that has one.
    Healthy(usize),
    /// Every provider is cooling down: the one whose cooldown ends first.
    Soonest(usize),
}

impl Choice {
    pub fn index(self) -> usize {
        match self {
            Choice::Healthy(i) | Choice::Soonest(i) => i,
        }
    }
}

/// Picks the provider for a new request. `ticket` is a per-request counter that
/// spreads traffic by weight inside a group.
pub fn first_choice(config: &Config, health: &[HealthRecord], now_ms: u64, ticket: u64) -> Choice {
    match next_choice(config, health, now_ms, &[], ticket) {
        Some(i) => Choice::Healthy(i),
        None => Choice::Soonest(soonest(health)),
    }
}

/// Picks the next provider for a request that already tried the providers marked
/// in `tried`: the first group with an untried provider that is not cooling down.
/// Cooling providers are never picked here: when nothing healthy is left, the
/// client gets the failure it has.
pub fn next_choice(
    config: &Config,
    health: &[HealthRecord],
    now_ms: u64,
    tried: &[bool],
    ticket: u64,
) -> Option<usize> {
    let available = |i: usize| {
        !tried.get(i).copied().unwrap_or(false)
            && !health
                .get(i)
                .copied()
                .unwrap_or_default()
                .is_cooling(now_ms)
    };
    config.groups.iter().find_map(|range| {
        let total: u64 = range
            .clone()
            .filter(|&i| available(i))
            .map(|i| u64::from(config.providers[i].weight))
            .sum();
        if total == 0 {
            return None;
        }
        // Walk the cumulative weights: provider i owns `weight` consecutive tickets.
        let mut point = ticket % total;
        for i in range.clone().filter(|&i| available(i)) {
            let w = u64::from(config.providers[i].weight);
            if point < w {
                return Some(i);
            }
            point -= w;
        }
        None
    })
}

/// Index of the provider whose cooldown ends first (the first one on a tie, so the
/// preferred group wins).
fn soonest(health: &[HealthRecord]) -> usize {
    let mut best = 0;
    for (i, h) in health.iter().enumerate() {
        if h.cooling_until_ms < health[best].cooling_until_ms {
            best = i;
        }
    }
    best
}

/// When every provider is cooling down: whole seconds (rounded up) until the first
/// cooldown ends, for the `Retry-After` of a failure the client gets. `None` while
/// some provider is available.
pub fn retry_after_secs(health: &[HealthRecord], now_ms: u64) -> Option<u64> {
    if health.is_empty() || health.iter().any(|h| !h.is_cooling(now_ms)) {
        return None;
    }
    let first_end = health.iter().map(|h| h.cooling_until_ms).min()?;
    Some((first_end - now_ms).div_ceil(1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn three_groups() -> Config {
        config(
            r#"{"groups":[
              {"providers":[{"name":"p","cluster":"p"}]},
              {"providers":[{"name":"s1","cluster":"s1"},{"name":"s2","cluster":"s2"}]},
              {"providers":[{"name":"t","cluster":"t"}]}]}"#,
        )
    }

    fn cooling(until: u64) -> HealthRecord {
        HealthRecord {
            cooling_until_ms: until,
        }
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn healthy_primary_takes_every_request() {
        let c = three_groups();
        let h = vec![HealthRecord::default(); 4];
        for ticket in 0..10 {
            assert_eq!(first_choice(&c, &h, NOW, ticket), Choice::Healthy(0));
        }
    }

    #[test]
    fn cooling_primary_moves_traffic_to_next_group() {
        let c = three_groups();
        let h = vec![
            cooling(NOW + 1),
            HealthRecord::default(),
            HealthRecord::default(),
            HealthRecord::default(),
        ];
        let picks: Vec<usize> = (0..4)
            .map(|t| first_choice(&c, &h, NOW, t).index())
            .collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
    }

    #[test]
    fn primary_returns_when_its_cooldown_ends() {
        let c = three_groups();
        let h = vec![
            cooling(NOW),
            HealthRecord::default(),
            HealthRecord::default(),
            HealthRecord::default(),
        ];
        assert_eq!(first_choice(&c, &h, NOW, 0), Choice::Healthy(0));
        assert_eq!(first_choice(&c, &h, NOW - 1, 0), Choice::Healthy(1));
    }

    #[test]
    fn all_cooling_picks_the_soonest_to_recover() {
        let c = three_groups();
        let h = vec![
            cooling(NOW + 50),
            cooling(NOW + 90),
            cooling(NOW + 20),
            cooling(NOW + 20),
        ];
        assert_eq!(first_choice(&c, &h, NOW, 7), Choice::Soonest(2));
        assert_eq!(retry_after_secs(&h, NOW), Some(1));
        let h = vec![cooling(NOW + 5_001); 4];
        assert_eq!(retry_after_secs(&h, NOW), Some(6));
        let h = vec![
            cooling(NOW + 5_001),
            HealthRecord::default(),
            cooling(NOW + 1),
            cooling(NOW + 1),
        ];
        assert_eq!(retry_after_secs(&h, NOW), None);
    }

    #[test]
    fn next_choice_skips_tried_and_cooling_across_groups() {
        let c = three_groups();
        let healthy = vec![HealthRecord::default(); 4];
        assert_eq!(
            next_choice(&c, &healthy, NOW, &[true, false, false, false], 0),
            Some(1)
        );
        assert_eq!(
            next_choice(&c, &healthy, NOW, &[true, true, false, false], 0),
            Some(2)
        );
        assert_eq!(
            next_choice(&c, &healthy, NOW, &[true, true, true, false], 0),
            Some(3)
        );
        assert_eq!(
            next_choice(&c, &healthy, NOW, &[true, true, true, true], 0),
            None
        );
        let h = vec![
            cooling(NOW + 1),
            cooling(NOW + 1),
            cooling(NOW + 1),
            HealthRecord::default(),
        ];
        assert_eq!(
            next_choice(&c, &h, NOW, &[true, false, false, false], 0),
            Some(3)
        );
        let h = vec![cooling(NOW + 1); 4];
        assert_eq!(
            next_choice(&c, &h, NOW, &[true, false, false, false], 0),
            None
        );
    }

    #[test]
    fn weights_split_a_group_in_proportion() {
        let c = config(
            r#"{"groups":[{"providers":[
              {"name":"a","cluster":"a","weight":3},{"name":"b","cluster":"b","weight":1}]}]}"#,
        );
        let h = vec![HealthRecord::default(); 2];
        let mut counts = [0; 2];
        for ticket in 0..400 {
            counts[first_choice(&c, &h, NOW, ticket).index()] += 1;
        }
        assert_eq!(counts, [300, 100]);
        // With `a` cooling, `b` takes everything.
        let h = vec![cooling(NOW + 1), HealthRecord::default()];
        for ticket in 0..8 {
            assert_eq!(first_choice(&c, &h, NOW, ticket), Choice::Healthy(1));
        }
    }
}

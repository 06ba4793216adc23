//! Which provider serves a request, given the priority groups and each provider's
//! health. Pure: health and time come in as arguments.

use crate::config::Config;
use crate::health::{HealthRecord, State};

/// Provider health as one request sees it. Records are read lazily, at most once
/// each, so a request whose first choice is healthy reads one record; the clock is
/// only read when some record has a cooldown to compare with.
pub trait HealthView {
    fn record(&mut self, index: usize) -> HealthRecord;
    fn now_ms(&mut self) -> u64;

    fn state(&mut self, index: usize) -> State {
        let r = self.record(index);
        if r.is_clear() {
            State::Healthy
        } else {
            r.state(self.now_ms())
        }
    }

    /// Whether a request may go there: healthy, or half-open (the request then has to
    /// claim the probe, see `health.rs`).
    fn is_available(&mut self, index: usize) -> bool {
        matches!(self.state(index), State::Healthy | State::HalfOpen)
    }

    /// When the provider can next be tried: the end of its cooldown, or of the claim
    /// of the probe under way.
    fn next_available_at(&mut self, index: usize) -> u64 {
        let r = self.record(index);
        r.cooling_until_ms.max(r.probe_until_ms)
    }
}

/// Picks the next provider for a request that already tried the providers marked
/// in `tried`: the first group with an untried provider that is not cooling down.
/// Cooling providers are never picked here: when nothing healthy is left, the
/// client gets the failure it has.
pub fn next_choice(
    config: &Config,
    view: &mut dyn HealthView,
    tried: &[bool],
    ticket: u64,
) -> Option<usize> {
    let mut available = |i: usize| !tried.get(i).copied().unwrap_or(false) && view.is_available(i);
    for range in &config.groups {
        if range.len() == 1 {
            // The common shape (one provider per group) needs no weight arithmetic.
            if available(range.start) {
                return Some(range.start);
            }
            continue;
        }
        let mut total: u64 = 0;
        let mut candidates = [false; 64];
        for (slot, i) in range.clone().enumerate() {
            let ok = available(i);
            if let Some(c) = candidates.get_mut(slot) {
                *c = ok;
            }
            if ok {
                total += u64::from(config.providers[i].weight);
            }
        }
        if total == 0 {
            continue;
        }
        // Walk the cumulative weights: provider i owns `weight` consecutive tickets.
        let mut point = ticket % total;
        for (slot, i) in range.clone().enumerate() {
            if !candidates.get(slot).copied().unwrap_or(false) {
                continue;
            }
            let w = u64::from(config.providers[i].weight);
            if point < w {
                return Some(i);
            }
            point -= w;
        }
    }
    None
}

/// Index of the provider whose cooldown ends first (the first one on a tie, so the
/// preferred group wins).
pub fn soonest(config: &Config, view: &mut dyn HealthView) -> usize {
    let mut best = 0;
    let mut best_until = u64::MAX;
    for i in 0..config.providers.len() {
        let until = view.next_available_at(i);
        if until < best_until {
            best = i;
            best_until = until;
        }
    }
    best
}

/// When every provider is cooling down: whole seconds (rounded up) until the first
/// cooldown ends, for the `Retry-After` of a failure the client gets. `None` while
/// some provider is available.
pub fn retry_after_secs(config: &Config, view: &mut dyn HealthView) -> Option<u64> {
    let mut first_end = u64::MAX;
    for i in 0..config.providers.len() {
        if view.is_available(i) {
            return None;
        }
        first_end = first_end.min(view.next_available_at(i));
    }
    if first_end == u64::MAX {
        return None;
    }
    Some(first_end.saturating_sub(view.now_ms()).div_ceil(1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed set of records and a fixed time.
    struct Fixed<'a> {
        records: &'a [HealthRecord],
        now_ms: u64,
    }

    impl HealthView for Fixed<'_> {
        fn record(&mut self, index: usize) -> HealthRecord {
            self.records.get(index).copied().unwrap_or_default()
        }
        fn now_ms(&mut self) -> u64 {
            self.now_ms
        }
    }

    /// The provider a request starts with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Choice {
        /// A provider that is not cooling down, from the highest-priority group that has one.
        Healthy(usize),
        /// Every provider is cooling down (or being probed): the one that can be tried
        /// again first.
        Soonest(usize),
    }

    impl Choice {
        fn index(self) -> usize {
            match self {
                Choice::Healthy(i) | Choice::Soonest(i) => i,
            }
        }
    }

    /// The provider a new request starts with, as `attempt::plan` picks it: the next
    /// choice, else the soonest.
    fn first_choice(config: &Config, view: &mut dyn HealthView, ticket: u64) -> Choice {
        match next_choice(config, view, &[], ticket) {
            Some(i) => Choice::Healthy(i),
            None => Choice::Soonest(soonest(config, view)),
        }
    }

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
            ..HealthRecord::default()
        }
    }

    const NOW: u64 = 1_000_000;

    /// The records as seen at `NOW`.
    fn at(records: &[HealthRecord]) -> Fixed<'_> {
        Fixed {
            records,
            now_ms: NOW,
        }
    }

    #[test]
    fn healthy_primary_takes_every_request() {
        let c = three_groups();
        let h = vec![HealthRecord::default(); 4];
        for ticket in 0..10 {
            assert_eq!(first_choice(&c, &mut at(&h), ticket), Choice::Healthy(0));
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
            .map(|t| first_choice(&c, &mut at(&h), t).index())
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
        assert_eq!(first_choice(&c, &mut at(&h), 0), Choice::Healthy(0));
        assert_eq!(
            first_choice(
                &c,
                &mut Fixed {
                    records: &h,
                    now_ms: NOW - 1
                },
                0
            ),
            Choice::Healthy(1)
        );
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
        assert_eq!(first_choice(&c, &mut at(&h), 7), Choice::Soonest(2));
        assert_eq!(retry_after_secs(&c, &mut at(&h)), Some(1));
        let h = vec![cooling(NOW + 5_001); 4];
        assert_eq!(retry_after_secs(&c, &mut at(&h)), Some(6));
        let h = vec![
            cooling(NOW + 5_001),
            HealthRecord::default(),
            cooling(NOW + 1),
            cooling(NOW + 1),
        ];
        assert_eq!(retry_after_secs(&c, &mut at(&h)), None);
    }

    #[test]
    fn next_choice_skips_tried_and_cooling_across_groups() {
        let c = three_groups();
        let healthy = vec![HealthRecord::default(); 4];
        assert_eq!(
            next_choice(&c, &mut at(&healthy), &[true, false, false, false], 0),
            Some(1)
        );
        assert_eq!(
            next_choice(&c, &mut at(&healthy), &[true, true, false, false], 0),
            Some(2)
        );
        assert_eq!(
            next_choice(&c, &mut at(&healthy), &[true, true, true, false], 0),
            Some(3)
        );
        assert_eq!(
            next_choice(&c, &mut at(&healthy), &[true, true, true, true], 0),
            None
        );
        let h = vec![
            cooling(NOW + 1),
            cooling(NOW + 1),
            cooling(NOW + 1),
            HealthRecord::default(),
        ];
        assert_eq!(
            next_choice(&c, &mut at(&h), &[true, false, false, false], 0),
            Some(3)
        );
        let h = vec![cooling(NOW + 1); 4];
        assert_eq!(
            next_choice(&c, &mut at(&h), &[true, false, false, false], 0),
            None
        );
    }

    /// Counts the records a selection reads.
    struct Counting<'a> {
        inner: Fixed<'a>,
        reads: usize,
        clock_reads: usize,
    }

    impl HealthView for Counting<'_> {
        fn record(&mut self, index: usize) -> HealthRecord {
            self.reads += 1;
            self.inner.record(index)
        }
        fn now_ms(&mut self) -> u64 {
            self.clock_reads += 1;
            self.inner.now_ms
        }
    }

    #[test]
    fn healthy_primary_costs_one_read_and_no_clock() {
        let c = three_groups();
        let h = vec![HealthRecord::default(); 4];
        let mut view = Counting {
            inner: Fixed {
                records: &h,
                now_ms: NOW,
            },
            reads: 0,
            clock_reads: 0,
        };
        assert_eq!(first_choice(&c, &mut view, 3), Choice::Healthy(0));
        assert_eq!((view.reads, view.clock_reads), (1, 0));
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
            counts[first_choice(&c, &mut at(&h), ticket).index()] += 1;
        }
        assert_eq!(counts, [300, 100]);
        // With `a` cooling, `b` takes everything.
        let h = vec![cooling(NOW + 1), HealthRecord::default()];
        for ticket in 0..8 {
            assert_eq!(first_choice(&c, &mut at(&h), ticket), Choice::Healthy(1));
        }
    }
}

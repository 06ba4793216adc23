//! The provider registry: which providers the routing configurations of this VM
//! have, published in shared data so that the health view and the health gauges read
//! the routing configuration itself instead of a copy of it. Pure: the store and the
//! time come in.
//!
//! A provider is registered by name by the first routing configuration that has it.
//! A later configuration that names the same provider differently (another cluster,
//! model or group) does not replace it: the difference is kept as a conflict, logged
//! and shown by the view, and that configuration publishes no gauge for it.
//!
//! Every entry and conflict carries when a live configuration last published it. Each
//! routing root publishes again on its tick ([`REFRESH_MS`]), so an entry that no
//! configuration has any more (a reload dropped the provider, the old configuration
//! was released) goes stale after [`STALE_MS`]: the view leaves it out, and the
//! publisher that prunes it sets its gauge to `removed`.

use crate::config::Config;
use crate::json::{self, quote, quote_or_null, Value};
use crate::names::REGISTRY_KEY;
use crate::store::{SharedData, StoreError};

/// Bounded compare-and-swap retries, as for health records.
const MAX_ATTEMPTS: usize = 16;
/// How often a live configuration marks its entries as still its own: one shared-data
/// write per routing root at most this often.
pub const REFRESH_MS: u64 = 2_000;
/// An entry not marked for this long belongs to no live configuration.
pub const STALE_MS: u64 = 5 * REFRESH_MS;

/// One registered provider, as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub cluster: String,
    pub model: Option<String>,
    pub group: usize,
    pub health_key: String,
    /// When a live configuration last published it (Unix ms).
    pub seen_ms: u64,
}

impl Entry {
    /// The same provider definition, whenever it was seen.
    fn same_as(&self, other: &Entry) -> bool {
        (
            &self.name,
            &self.cluster,
            &self.model,
            self.group,
            &self.health_key,
        ) == (
            &other.name,
            &other.cluster,
            &other.model,
            other.group,
            &other.health_key,
        )
    }
}

/// A provider two configurations define differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub line: String,
    pub seen_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub entries: Vec<Entry>,
    pub conflicts: Vec<Conflict>,
}

/// Marks `seen` as seen at `now` when its mark is older than a refresh.
fn refresh(seen: &mut u64, now: u64) {
    if now.saturating_sub(*seen) >= REFRESH_MS {
        *seen = now;
    }
}

fn stale(seen: u64, now: u64) -> bool {
    now.saturating_sub(seen) > STALE_MS
}

impl Registry {
    /// Adds `config`'s providers, seen at `now`; for each, whether this
    /// configuration's provider is the registered one (the same, or newly added).
    pub fn merge(&mut self, config: &Config, now: u64) -> Vec<bool> {
        let mut own = Vec::with_capacity(config.providers.len());
        for p in &config.providers {
            let entry = Entry {
                name: p.name.clone(),
                cluster: p.cluster.clone(),
                model: p.model.clone(),
                group: p.group,
                health_key: p.health_key.clone(),
                seen_ms: now,
            };
            match self.entries.iter_mut().find(|e| e.name == entry.name) {
                None => {
                    self.entries.push(entry);
                    own.push(true);
                }
                Some(e) if e.same_as(&entry) => {
                    refresh(&mut e.seen_ms, now);
                    own.push(true);
                }
                Some(e) => {
                    let model = |m: &Option<String>| m.as_deref().map(quote).unwrap_or_default();
                    let line = format!(
                        "provider {} is configured twice: cluster {} model {} group {} (shown) \
                         and cluster {} model {} group {}",
                        e.name,
                        quote(&e.cluster),
                        model(&e.model),
                        e.group,
                        quote(&entry.cluster),
                        model(&entry.model),
                        entry.group
                    );
                    match self.conflicts.iter_mut().find(|c| c.line == line) {
                        Some(c) => refresh(&mut c.seen_ms, now),
                        None => self.conflicts.push(Conflict { line, seen_ms: now }),
                    }
                    own.push(false);
                }
            }
        }
        own
    }

    /// Drops the entries and conflicts no live configuration published for
    /// [`STALE_MS`]; the names of the providers dropped.
    pub fn prune(&mut self, now: u64) -> Vec<String> {
        // An entry without a time (written by a version before times were kept) is
        // adopted as seen now: it goes stale only if nobody renews it from here.
        for seen in self
            .entries
            .iter_mut()
            .map(|e| &mut e.seen_ms)
            .chain(self.conflicts.iter_mut().map(|c| &mut c.seen_ms))
            .filter(|seen| **seen == 0)
        {
            *seen = now;
        }
        let mut gone = Vec::new();
        self.entries.retain(|e| {
            let keep = !stale(e.seen_ms, now);
            if !keep {
                gone.push(e.name.clone());
            }
            keep
        });
        self.conflicts.retain(|c| !stale(c.seen_ms, now));
        gone
    }

    /// The registry as a reader at `now` sees it: without what went stale (the view
    /// reads between publications, and a view-only instance never publishes).
    pub fn live(mut self, now: u64) -> Registry {
        self.prune(now);
        self
    }

    /// The conflicts' lines.
    pub fn conflict_lines(&self) -> Vec<String> {
        self.conflicts.iter().map(|c| c.line.clone()).collect()
    }

    pub fn encode(&self) -> String {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                format!(
                    "[{},{},{},{},{},{}]",
                    quote(&e.name),
                    quote(&e.cluster),
                    quote_or_null(e.model.as_deref()),
                    e.group,
                    quote(&e.health_key),
                    e.seen_ms
                )
            })
            .collect();
        let conflicts: Vec<String> = self
            .conflicts
            .iter()
            .map(|c| format!("[{},{}]", quote(&c.line), c.seen_ms))
            .collect();
        format!(
            "{{\"providers\":[{}],\"conflicts\":[{}]}}",
            entries.join(","),
            conflicts.join(",")
        )
    }

    /// `encode`'s output back; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Registry> {
        let Value::Object(members) = json::parse(bytes).ok()? else {
            return None;
        };
        let field = |k: &str| members.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let Some(Value::Array(list)) = field("providers") else {
            return None;
        };
        let number = |v: Option<&Value>| match v {
            Some(Value::Number(n)) => n.parse::<u64>().ok(),
            _ => None,
        };
        let mut entries = Vec::new();
        for item in list {
            let Value::Array(f) = item else { return None };
            let text = |i: usize| match f.get(i) {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            let model = match f.get(2)? {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => return None,
            };
            entries.push(Entry {
                name: text(0)?,
                cluster: text(1)?,
                model,
                group: usize::try_from(number(f.get(3))?).ok()?,
                health_key: text(4)?,
                // Missing in what an earlier version wrote: adopted by `prune`.
                seen_ms: number(f.get(5)).unwrap_or(0),
            });
        }
        let mut conflicts = Vec::new();
        if let Some(Value::Array(list)) = field("conflicts") {
            for item in list {
                let (line, f) = match item {
                    Value::Array(f) => match f.first() {
                        Some(Value::String(line)) => (line, f.as_slice()),
                        _ => return None,
                    },
                    // An earlier version's plain line.
                    Value::String(line) => (line, &[][..]),
                    _ => return None,
                };
                conflicts.push(Conflict {
                    line: line.clone(),
                    seen_ms: number(f.get(1)).unwrap_or(0),
                });
            }
        }
        Some(Registry { entries, conflicts })
    }
}

/// Reads the registry (empty when nothing was published yet).
pub fn read(store: &dyn SharedData) -> Registry {
    match store.get(REGISTRY_KEY) {
        Ok((Some(bytes), _)) => Registry::decode(&bytes).unwrap_or_default(),
        _ => Registry::default(),
    }
}

/// What publishing came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Per provider of the configuration, whether it is the registered one (this
    /// configuration publishes its gauge).
    pub own: Vec<bool>,
    /// The conflicts now known.
    pub conflicts: Vec<String>,
    /// Providers no live configuration has any more, dropped by this publication.
    pub dropped: Vec<String>,
}

/// Publishes `config`'s providers at `now` (compare-and-swap, so configurations on
/// several workers never lose each other's), after dropping what went stale. Writes
/// only when something changed: at most once per [`REFRESH_MS`] for a configuration
/// that was published already.
pub fn publish(store: &dyn SharedData, config: &Config, now: u64) -> Result<Published, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let (bytes, cas) = store.get(REGISTRY_KEY)?;
        let mut registry = bytes
            .as_deref()
            .and_then(Registry::decode)
            .unwrap_or_default();
        let before = registry.clone();
        let mut dropped = registry.prune(now);
        let own = registry.merge(config, now);
        // A provider this configuration registers again is not gone.
        dropped.retain(|name| !registry.entries.iter().any(|e| &e.name == name));
        let published = Published {
            own,
            conflicts: registry.conflict_lines(),
            dropped,
        };
        if registry == before {
            return Ok(published);
        }
        match store.set(REGISTRY_KEY, registry.encode().as_bytes(), cas) {
            Ok(()) => return Ok(published),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended(REGISTRY_KEY.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const T0: u64 = 1_000_000;

    fn config(providers: &str) -> Config {
        let json = format!(r#"{{"groups":[{{"providers":[{providers}]}}]}}"#);
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn own(p: Published) -> (Vec<bool>, Vec<String>) {
        (p.own, p.conflicts)
    }

    #[test]
    fn identical_configurations_share_one_entry_per_provider() {
        let store = MemoryStore::default();
        let c = config(
            r#"{"name":"a","cluster":"ca","openai":{"model":"m"}},{"name":"b","cluster":"cb"}"#,
        );
        assert_eq!(
            own(publish(&store, &c, T0).unwrap()),
            (vec![true, true], vec![])
        );
        assert_eq!(
            own(publish(&store, &c, T0).unwrap()),
            (vec![true, true], vec![])
        );
        let r = read(&store);
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[0].model.as_deref(), Some("m"));
        assert_eq!(r.entries[1].health_key, c.providers[1].health_key);
    }

    #[test]
    fn a_differently_configured_copy_is_a_conflict_and_does_not_replace_the_entry() {
        let store = MemoryStore::default();
        let first = config(r#"{"name":"a","cluster":"ca","openai":{"model":"m"}}"#);
        let typo = config(
            r#"{"name":"a","cluster":"ca","openai":{"model":"m-typo"}},{"name":"z","cluster":"cz"}"#,
        );
        publish(&store, &first, T0).unwrap();
        let (own, conflicts) = own(publish(&store, &typo, T0).unwrap());
        assert_eq!(own, vec![false, true]);
        assert_eq!(conflicts.len(), 1);
        assert!(conflicts[0].contains("m-typo"), "{conflicts:?}");
        let r = read(&store);
        assert_eq!(r.entries[0].model.as_deref(), Some("m"));
        assert_eq!(r.conflict_lines(), conflicts);
    }

    #[test]
    fn a_provider_no_live_configuration_publishes_goes_stale_and_is_dropped() {
        let store = MemoryStore::default();
        let old = config(r#"{"name":"a","cluster":"ca"},{"name":"b","cluster":"cb"}"#);
        let new = config(r#"{"name":"b","cluster":"cb"}"#);
        publish(&store, &old, T0).unwrap();
        // The reload: only the new configuration publishes from now on.
        let mut t = T0;
        while t <= T0 + STALE_MS {
            let p = publish(&store, &new, t).unwrap();
            assert!(p.dropped.is_empty(), "{t}: {p:?}");
            assert_eq!(read(&store).live(t).entries.len(), 2, "{t}");
            t += 1_000;
        }
        let p = publish(&store, &new, t).unwrap();
        assert_eq!(p.dropped, vec!["a".to_string()]);
        let r = read(&store);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.entries[0].name, "b");
        // A reader sees it gone even before anybody prunes.
        let mut r = Registry::default();
        r.merge(&old, T0);
        assert!(r.live(T0 + STALE_MS + 1).entries.is_empty());
    }

    #[test]
    fn a_conflict_ends_with_the_configuration_that_made_it_and_the_other_takes_over() {
        let store = MemoryStore::default();
        let first = config(r#"{"name":"a","cluster":"ca"}"#);
        let second = config(r#"{"name":"a","cluster":"other"}"#);
        publish(&store, &first, T0).unwrap();
        assert_eq!(publish(&store, &second, T0).unwrap().own, vec![false]);
        // `first` is released; `second` goes on publishing.
        let p = publish(&store, &second, T0 + STALE_MS + 1).unwrap();
        assert_eq!(p.own, vec![true]);
        assert!(p.conflicts.is_empty());
        // Its entry is re-registered in the same publication: not reported as gone.
        assert!(p.dropped.is_empty());
        assert_eq!(read(&store).entries[0].cluster, "other");
    }

    #[test]
    fn a_published_configuration_writes_at_most_once_per_refresh() {
        let store = MemoryStore::default();
        let c = config(r#"{"name":"a","cluster":"ca"}"#);
        publish(&store, &c, T0).unwrap();
        let (_, cas) = store.get(REGISTRY_KEY).unwrap();
        publish(&store, &c, T0 + REFRESH_MS - 1).unwrap();
        assert_eq!(store.get(REGISTRY_KEY).unwrap().1, cas);
        publish(&store, &c, T0 + REFRESH_MS).unwrap();
        assert_ne!(store.get(REGISTRY_KEY).unwrap().1, cas);
    }

    #[test]
    fn an_earlier_versions_registry_is_read_and_adopted_not_dropped() {
        let store = MemoryStore::default();
        let old = br#"{"providers":[["a","ca",null,0,"hk"]],"conflicts":["a line"]}"#;
        store.set(REGISTRY_KEY, old, None).unwrap();
        let other = config(r#"{"name":"b","cluster":"cb"}"#);
        let p = publish(&store, &other, T0).unwrap();
        assert!(p.dropped.is_empty(), "{p:?}");
        let r = read(&store);
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[0].seen_ms, T0);
        assert_eq!(r.conflicts[0].seen_ms, T0);
    }

    #[test]
    fn encoding_round_trips_and_garbage_reads_as_nothing() {
        let mut r = Registry::default();
        r.merge(
            &config(r#"{"name":"a","cluster":"c\"x","openai":{"model":"m\n"}}"#),
            T0,
        );
        r.conflicts.push(Conflict {
            line: "x \"y\"".into(),
            seen_ms: T0,
        });
        assert_eq!(Registry::decode(r.encode().as_bytes()), Some(r));
        assert_eq!(Registry::decode(b"nope"), None);
        assert_eq!(Registry::decode(b"{\"providers\":[[1]]}"), None);
    }
}

//! The provider registry: which providers the routing configurations of this VM
//! have, published in shared data so that the health view and the health gauges read
//! the routing configuration itself instead of a copy of it. Pure: the store comes in.
//!
//! A provider is registered by name by the first routing configuration that has it.
//! A later configuration that names the same provider differently (another cluster,
//! model or group) does not replace it: the difference is kept as a conflict, logged
//! and shown by the view, and that configuration publishes no gauge for it.

use crate::config::Config;
use crate::json::{self, quote, quote_or_null, Value};
use crate::names::REGISTRY_KEY;
use crate::store::{SharedData, StoreError};

/// Bounded compare-and-swap retries, as for health records.
const MAX_ATTEMPTS: usize = 16;

/// One registered provider, as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub cluster: String,
    pub model: Option<String>,
    pub group: usize,
    pub health_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub entries: Vec<Entry>,
    /// One line per provider configured differently by two configurations.
    pub conflicts: Vec<String>,
}

impl Registry {
    /// Adds `config`'s providers; for each, whether this configuration's provider is
    /// the registered one (the same, or newly added).
    pub fn merge(&mut self, config: &Config) -> Vec<bool> {
        let mut own = Vec::with_capacity(config.providers.len());
        for p in &config.providers {
            let entry = Entry {
                name: p.name.clone(),
                cluster: p.cluster.clone(),
                model: p.model.clone(),
                group: p.group,
                health_key: p.health_key.clone(),
            };
            match self.entries.iter().find(|e| e.name == entry.name) {
                None => {
                    self.entries.push(entry);
                    own.push(true);
                }
                Some(e) if *e == entry => own.push(true),
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
                    if !self.conflicts.contains(&line) {
                        self.conflicts.push(line);
                    }
                    own.push(false);
                }
            }
        }
        own
    }

    pub fn encode(&self) -> String {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                format!(
                    "[{},{},{},{},{}]",
                    quote(&e.name),
                    quote(&e.cluster),
                    quote_or_null(e.model.as_deref()),
                    e.group,
                    quote(&e.health_key)
                )
            })
            .collect();
        let conflicts: Vec<String> = self.conflicts.iter().map(|c| quote(c)).collect();
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
            let group = match f.get(3)? {
                Value::Number(n) => n.parse().ok()?,
                _ => return None,
            };
            entries.push(Entry {
                name: text(0)?,
                cluster: text(1)?,
                model,
                group,
                health_key: text(4)?,
            });
        }
        let conflicts = match field("conflicts") {
            Some(Value::Array(c)) => c
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
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

/// Publishes `config`'s providers (compare-and-swap, so configurations on several
/// workers never lose each other's). Returns, per provider, whether it is this
/// configuration's, and the conflicts now known.
pub fn publish(
    store: &dyn SharedData,
    config: &Config,
) -> Result<(Vec<bool>, Vec<String>), StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let (bytes, cas) = store.get(REGISTRY_KEY)?;
        let mut registry = bytes
            .as_deref()
            .and_then(Registry::decode)
            .unwrap_or_default();
        let before = registry.clone();
        let own = registry.merge(config);
        if registry == before {
            return Ok((own, registry.conflicts));
        }
        match store.set(REGISTRY_KEY, registry.encode().as_bytes(), cas) {
            Ok(()) => return Ok((own, registry.conflicts)),
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

    fn config(providers: &str) -> Config {
        let json = format!(r#"{{"groups":[{{"providers":[{providers}]}}]}}"#);
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    #[test]
    fn identical_configurations_share_one_entry_per_provider() {
        let store = MemoryStore::default();
        let c = config(
            r#"{"name":"a","cluster":"ca","openai":{"model":"m"}},{"name":"b","cluster":"cb"}"#,
        );
        assert_eq!(publish(&store, &c).unwrap(), (vec![true, true], vec![]));
        assert_eq!(publish(&store, &c).unwrap(), (vec![true, true], vec![]));
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
        publish(&store, &first).unwrap();
        let (own, conflicts) = publish(&store, &typo).unwrap();
        assert_eq!(own, vec![false, true]);
        assert_eq!(conflicts.len(), 1);
        assert!(conflicts[0].contains("m-typo"), "{conflicts:?}");
        let r = read(&store);
        assert_eq!(r.entries[0].model.as_deref(), Some("m"));
        assert_eq!(r.conflicts, conflicts);
    }

    #[test]
    fn encoding_round_trips_and_garbage_reads_as_nothing() {
        let mut r = Registry::default();
        r.merge(&config(
            r#"{"name":"a","cluster":"c\"x","openai":{"model":"m\n"}}"#,
        ));
        r.conflicts.push("x \"y\"".into());
        assert_eq!(Registry::decode(r.encode().as_bytes()), Some(r));
        assert_eq!(Registry::decode(b"nope"), None);
        assert_eq!(Registry::decode(b"{\"providers\":[[1]]}"), None);
    }
}

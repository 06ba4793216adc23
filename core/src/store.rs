//! Provider health in proxy-wasm shared data: a small trait over the host's
//! get/set-with-CAS, the read-modify-write loop, shared data's CAS rule over a map
//! (the native module's store and the tests' in-memory one), and an in-memory store
//! for tests.

use std::collections::HashMap;
use std::fmt;

use crate::health::HealthRecord;

/// How often a compare-and-swap update is retried before giving up. Each retry
/// means another worker wrote in between; that many in a row is a host problem.
const MAX_CAS_ATTEMPTS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Another VM wrote the key after we read it.
    CasMismatch,
    /// The host refused the call.
    Host(String),
    /// Every attempt lost the race.
    Contended(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => f.write_str("shared data changed under us (CAS mismatch)"),
            StoreError::Host(m) => write!(f, "shared data call failed: {m}"),
            StoreError::Contended(k) => {
                write!(
                    f,
                    "gave up updating {k} after {MAX_CAS_ATTEMPTS} CAS conflicts"
                )
            }
        }
    }
}

/// The host's shared key-value store (one per Envoy process and `vm_id`).
pub trait SharedData {
    /// The value and its CAS token, or `(None, None)` when the key is absent.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes `value` if the key's CAS token still equals `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// Reads a provider's health. An absent or unreadable record counts as healthy:
/// the filter fails open rather than starving traffic; unreadable ones are logged.
pub fn read_health(store: &dyn SharedData, key: &str) -> HealthRecord {
    match store.get(key) {
        Ok((Some(bytes), _)) => HealthRecord::decode(&bytes).unwrap_or_else(|| {
            log::warn!(
                "llm-failover: unreadable health record under {key}; treating it as healthy"
            );
            HealthRecord::default()
        }),
        Ok((None, _)) => HealthRecord::default(),
        Err(e) => {
            log::warn!("llm-failover: reading {key}: {e}; treating it as healthy");
            HealthRecord::default()
        }
    }
}

/// Creates the record if it does not exist yet, so that later updates always carry
/// a CAS token: two VMs racing to create a key with `cas = None` could lose one write.
pub fn ensure_exists(store: &dyn SharedData, key: &str) -> Result<(), StoreError> {
    match store.get(key)? {
        (Some(_), _) => Ok(()),
        (None, _) => store.set(key, &HealthRecord::default().encode(), None),
    }
}

/// Read-modify-write of one provider's record with compare-and-swap, retried when
/// another worker wrote first, so concurrent failures are all applied.
pub fn update_health(
    store: &dyn SharedData,
    key: &str,
    change: impl Fn(HealthRecord) -> HealthRecord,
) -> Result<HealthRecord, StoreError> {
    update_health_if(store, key, |h| Some(change(h)))?.ok_or(StoreError::Contended(key.to_string()))
}

/// Like [`update_health`], but `change` may decline (`None`): then nothing is written
/// and `Ok(None)` comes back. The decision is made on the freshest record, so of
/// several workers racing to claim a probe exactly one gets `Some`.
pub fn update_health_if(
    store: &dyn SharedData,
    key: &str,
    change: impl Fn(HealthRecord) -> Option<HealthRecord>,
) -> Result<Option<HealthRecord>, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = store.get(key)?;
        let current = bytes
            .as_deref()
            .and_then(HealthRecord::decode)
            .unwrap_or_default();
        let Some(next) = change(current) else {
            return Ok(None);
        };
        match store.set(key, &next.encode(), cas) {
            Ok(()) => return Ok(Some(next)),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended(key.to_string()))
}

/// Read-modify-write of a plain value (not a health record) with compare-and-swap;
/// gives back what was written. `change` gets the current value, if any.
pub fn update_value(
    store: &dyn SharedData,
    key: &str,
    change: impl Fn(Option<&[u8]>) -> Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = store.get(key)?;
        let next = change(bytes.as_deref());
        match store.set(key, &next, cas) {
            Ok(()) => return Ok(next),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended(key.to_string()))
}

/// Creates a plain value if it does not exist yet (see [`ensure_exists`]).
pub fn ensure_value(store: &dyn SharedData, key: &str, initial: &[u8]) -> Result<(), StoreError> {
    match store.get(key)? {
        (Some(_), _) => Ok(()),
        (None, _) => store.set(key, initial, None),
    }
}

/// Shared data kept by the gateway itself: each key's value and CAS.
pub type Entries = HashMap<String, (Vec<u8>, u32)>;

/// A read of `key` with its CAS, as proxy-wasm's shared data answers it.
pub fn read_entry(entries: &Entries, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    match entries.get(key) {
        Some((value, cas)) => (Some(value.clone()), Some(*cas)),
        None => (None, None),
    }
}

/// A write with proxy-wasm's CAS rule: refused if `cas` is not the key's current one
/// (a key not written yet takes any); each write bumps the key's CAS.
pub fn write_entry(
    entries: &mut Entries,
    key: &str,
    value: &[u8],
    cas: Option<u32>,
) -> Result<(), StoreError> {
    let current = entries.get(key).map(|(_, c)| *c);
    if let (Some(want), Some(have)) = (cas, current) {
        if want != have {
            return Err(StoreError::CasMismatch);
        }
    }
    let next = current.unwrap_or(0).wrapping_add(1);
    entries.insert(key.to_string(), (value.to_vec(), next));
    Ok(())
}

/// In-memory shared data with Envoy's CAS semantics, for tests.
#[cfg(test)]
pub mod memory {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    pub struct MemoryStore {
        pub data: RefCell<Entries>,
    }

    impl MemoryStore {
        /// How many writes were made, over all keys (each bumps its key's CAS).
        pub fn writes(&self) -> u32 {
            self.data.borrow().values().map(|(_, cas)| *cas).sum()
        }
    }

    impl SharedData for MemoryStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            Ok(read_entry(&self.data.borrow(), key))
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            write_entry(&mut self.data.borrow_mut(), key, value, cas)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryStore;
    use super::*;
    use std::cell::Cell;

    /// A store where another "worker" writes between our read and our write,
    /// `races` times, as a second VM would.
    struct RacingStore {
        inner: MemoryStore,
        races: Cell<u32>,
        rival_until: u64,
    }

    impl SharedData for RacingStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.races.get() > 0 {
                self.races.set(self.races.get() - 1);
                let (bytes, rival_cas) = self.inner.get(key)?;
                let rival = bytes
                    .as_deref()
                    .and_then(HealthRecord::decode)
                    .unwrap_or_default();
                self.inner.set(
                    key,
                    &HealthRecord {
                        cooling_until_ms: rival.cooling_until_ms.max(self.rival_until),
                        ..rival
                    }
                    .encode(),
                    rival_cas,
                )?;
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn racing_failures_are_both_applied() {
        let store = RacingStore {
            inner: MemoryStore::default(),
            races: Cell::new(3),
            rival_until: 90_000,
        };
        ensure_exists(&store.inner, "k").unwrap();
        // Our failure asks for less time than the rival's: the rival's must survive.
        let r = update_health(&store, "k", |h| HealthRecord {
            cooling_until_ms: h.cooling_until_ms.max(30_000),
            ..h
        })
        .unwrap();
        assert_eq!(r.cooling_until_ms, 90_000);
        assert_eq!(read_health(&store, "k").cooling_until_ms, 90_000);
    }

    #[test]
    fn endless_contention_is_an_error_not_a_loop() {
        let store = RacingStore {
            inner: MemoryStore::default(),
            races: Cell::new(1_000),
            rival_until: 1,
        };
        ensure_exists(&store.inner, "k").unwrap();
        let e = update_health(&store, "k", |h| HealthRecord {
            cooling_until_ms: h.cooling_until_ms.max(5),
            ..h
        })
        .unwrap_err();
        assert_eq!(e, StoreError::Contended("k".into()));
    }

    #[test]
    fn only_one_of_racing_claims_wins() {
        // Two workers read the same free record; the second one's CAS fails, it
        // re-reads, sees the claim and declines.
        let store = MemoryStore::default();
        ensure_exists(&store, "k").unwrap();
        let claim = |h: HealthRecord| {
            (h.probe_until_ms == 0).then_some(HealthRecord {
                probe_until_ms: 7,
                ..h
            })
        };
        assert!(update_health_if(&store, "k", claim).unwrap().is_some());
        assert_eq!(update_health_if(&store, "k", claim).unwrap(), None);
    }

    #[test]
    fn missing_or_garbage_records_read_as_healthy() {
        let store = MemoryStore::default();
        assert_eq!(read_health(&store, "absent"), HealthRecord::default());
        store.set("junk", b"xyz", None).unwrap();
        assert_eq!(read_health(&store, "junk"), HealthRecord::default());
    }

    #[test]
    fn ensure_exists_keeps_an_existing_record() {
        let store = MemoryStore::default();
        let rec = HealthRecord {
            cooling_until_ms: 42,
            ..HealthRecord::default()
        };
        store.set("k", &rec.encode(), None).unwrap();
        ensure_exists(&store, "k").unwrap();
        assert_eq!(read_health(&store, "k"), rec);
    }
}

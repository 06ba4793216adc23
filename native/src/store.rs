//! Shared data for the native module: one store in process memory, shared by every
//! worker (a native module is one copy in Envoy's process), with the same
//! compare-and-swap contract as proxy-wasm's shared data.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use llm_failover_core::store::StoreError;

type Entries = HashMap<String, (Vec<u8>, u32)>;

fn entries() -> &'static Mutex<Entries> {
    static STORE: OnceLock<Mutex<Entries>> = OnceLock::new();
    STORE.get_or_init(|| Mutex::new(HashMap::new()))
}

pub fn get(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
    let map = entries()
        .lock()
        .map_err(|_| StoreError::Host("the shared store's lock is poisoned".to_string()))?;
    Ok(match map.get(key) {
        Some((value, cas)) => (Some(value.clone()), Some(*cas)),
        None => (None, None),
    })
}

pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
    let mut map = entries()
        .lock()
        .map_err(|_| StoreError::Host("the shared store's lock is poisoned".to_string()))?;
    let current = map.get(key).map(|(_, c)| *c);
    if let (Some(want), Some(have)) = (cas, current) {
        if want != have {
            return Err(StoreError::CasMismatch);
        }
    }
    let next = current.unwrap_or(0).wrapping_add(1);
    map.insert(key.to_string(), (value.to_vec(), next));
    Ok(())
}

//! Shared data for the native module: one store in process memory, shared by every
//! worker (a native module is one copy in Envoy's process), with the same
//! compare-and-swap contract as proxy-wasm's shared data.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use llm_failover_core::store::{read_entry, write_entry, Entries, StoreError};

fn entries() -> Result<MutexGuard<'static, Entries>, StoreError> {
    static STORE: OnceLock<Mutex<Entries>> = OnceLock::new();
    STORE
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| StoreError::Host("the shared store's lock is poisoned".to_string()))
}

pub fn get(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
    let entries = entries()?;
    Ok(read_entry(&entries, key))
}

pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
    let mut entries = entries()?;
    write_entry(&mut entries, key, value, cas)
}

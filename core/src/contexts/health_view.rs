//! The health view (`healthPath`): a request for it is answered by the filter with
//! every published provider's health, read from shared data.

use crate::config::Config;
use crate::health::HealthRecord;
use crate::host::Host;
use crate::{registry, store, view};

/// Whether `path` asks for the view `config` serves (the query is ignored).
pub fn asked_for(config: &Config, path: Option<&[u8]>) -> bool {
    let Some(want) = &config.health_path else {
        return false;
    };
    let path = path.and_then(|p| std::str::from_utf8(p).ok()).unwrap_or("");
    path.split('?').next() == Some(want.as_str())
}

/// Answers with the view: what the routing configurations published (the
/// registry), not this configuration's copy, so one view serves every listener.
pub fn serve(h: &mut impl Host) {
    let now = h.now_ms();
    // Without the providers no live configuration has any more (`registry.rs`).
    let registry = registry::read(&*h).live(now);
    let records: Vec<HealthRecord> = registry
        .entries
        .iter()
        .map(|p| store::read_health(&*h, &p.health_key))
        .collect();
    let body = view::health_json(&registry, &records, now);
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("cache-control".to_string(), "no-store".to_string()),
    ];
    h.send_response(200, &headers, body.as_bytes());
}

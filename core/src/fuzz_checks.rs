//! What the fuzz targets (`fuzz/`, `make fuzz`) check, one function per target, so
//! the committed corpus also runs as regression tests in `make test` (below). Each
//! panics on a property broken; none may panic on any input otherwise.

// Test support: a broken property is reported by panicking, as in a test.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use crate::body::{inspect, with_model, BodyError};
use crate::config::Config;
use crate::retry_after::{failure_delay, parse_retry_after, parse_rfc3339_ms, quota_spent};

/// The configuration parser: never panics; what it accepts is consistent.
pub fn config(data: &[u8]) {
    let env = |name: &str| (name.len() % 2 == 0).then(|| "sk-fuzz".to_string());
    let Ok(c) = Config::parse(data, &env) else {
        return;
    };
    let in_groups: usize = c.groups.iter().map(|g| g.len()).sum();
    assert_eq!(in_groups, c.providers.len());
    assert!(!c.providers.is_empty() || c.health_path.is_some());
    for (i, p) in c.providers.iter().enumerate() {
        assert!(!p.name.is_empty() && (1..=1_000_000).contains(&p.weight));
        assert!(c.groups[p.group].contains(&i));
        assert!(c.providers[..i].iter().all(|q| q.name != p.name));
    }
    assert!(c.max_body_bytes > 0);
}

/// serde_json's verdict on a body: Ok(true) an object, Ok(false) another value, Err not
/// JSON.
fn reference(body: &[u8]) -> Result<bool, ()> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Err(_) => Err(()),
        Ok(_) => Ok(body.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{')),
    }
}

/// The body scanner against serde_json, and the model edit: a valid object with the
/// new model and every other top-level member unchanged.
pub fn body(data: &[u8]) {
    let ours = match inspect(data) {
        Ok(_) => Ok(true),
        Err(BodyError::NotObject) => Ok(false),
        Err(BodyError::NotJson(_)) => Err(()),
    };
    assert_eq!(
        ours,
        reference(data),
        "disagree on {:?}",
        String::from_utf8_lossy(data)
    );
    let Ok(slots) = inspect(data) else { return };
    let out = with_model(data, &slots, "\"fuzz-model\"");
    let mut before: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(data).expect("checked above");
    let mut after: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out).expect("the edit keeps the body JSON");
    assert_eq!(
        after.remove("model"),
        Some(serde_json::Value::from("fuzz-model"))
    );
    before.remove("model");
    assert_eq!(before, after);
}

/// `Retry-After`, the rate-limit headers and RFC 3339: never panic, and a plain UTC
/// RFC 3339 instant that parses is the instant it names (an impossible date such as
/// 31 February must not parse into another day).
pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let now = 1_795_000_000_000;
    let _ = parse_retry_after(&text, now);
    if let Some(ms) = parse_rfc3339_ms(&text) {
        let b = text.as_bytes();
        let plain = b.len() == 20
            && matches!(b[19], b'Z' | b'z')
            && b[17..19] != *b"60"
            && b.iter()
                .take(19)
                .all(|c| c.is_ascii_digit() || b"-:Tt ".contains(c));
        if plain {
            let shown = crate::view::rfc3339(ms);
            let mut want = text[..19].to_string();
            want.replace_range(10..11, "T");
            assert_eq!(&shown[..19], want, "{text:?} parsed as {shown}");
        }
    }
    // Lines of `name: value` as response headers.
    let headers: Vec<(String, Vec<u8>)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec()))
        .collect();
    let _ = failure_delay(&headers, now);
    let _ = quota_spent(&headers, now);
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod corpus {
    //! Every input in `fuzz/corpus/<target>/` (committed; `make fuzz` adds to it).

    use std::path::PathBuf;

    fn run(target: &str, check: fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{target} fails on {}", path.display());
            count += 1;
        }
        assert!(count > 0, "no corpus in {}", dir.display());
    }

    #[test]
    fn config_corpus() {
        run("config", super::config);
    }

    #[test]
    fn body_corpus() {
        run("body", super::body);
    }

    #[test]
    fn headers_corpus() {
        run("headers", super::headers);
    }

    #[test]
    fn the_impossible_date_found_in_review_is_in_the_corpus_and_rejected() {
        super::headers(b"2026-02-31T00:00:00Z");
        assert_eq!(
            crate::retry_after::parse_rfc3339_ms("2026-02-31T00:00:00Z"),
            None
        );
    }
}

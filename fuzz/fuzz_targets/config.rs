//! `make fuzz`: the checks in core/src/fuzz_checks.rs, coverage-guided.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    llm_failover_core::fuzz_checks::config(data);
});

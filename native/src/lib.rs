//! llm-failover as a native Envoy dynamic module (Envoy 1.40, ABI v0.2.0).
//!
//! `abi.rs` declares the part of Envoy's ABI the module uses; `hooks.rs` exports
//! the hooks Envoy resolves, each catching panics; `host.rs` is the core's `Host`
//! over the ABI, `store.rs` shared data in process memory, `failover.rs` the core's
//! contexts per worker, `ticker.rs` the configuration's tick on the main thread,
//! `waker.rs` each request's wake (a due hedge);
//! `spike.rs` the measuring filters issue 18 began with. Built with `panic = "unwind"`
//! (profile `release-native`), so a panic is caught at the hook instead of
//! aborting Envoy.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod abi;
pub mod failover;
pub mod hooks;
pub mod host;
pub mod metrics;
pub mod spike;
pub mod spike_async;
pub mod store;
pub mod ticker;
pub mod waker;

/// The `log` facade's lines (the core logs through it) to Envoy's log.
struct EnvoyLog;

fn level(l: log::Level) -> abi::LogLevel {
    match l {
        log::Level::Error => abi::LogLevel::Error,
        log::Level::Warn => abi::LogLevel::Warn,
        log::Level::Info => abi::LogLevel::Info,
        log::Level::Debug => abi::LogLevel::Debug,
        log::Level::Trace => abi::LogLevel::Trace,
    }
}

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // SAFETY: no arguments to keep alive.
        unsafe { abi::envoy_dynamic_module_callback_log_enabled(level(metadata.level())) }
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            log_line(level(record.level()), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Sends the `log` facade's lines to Envoy (once per process).
pub fn install_logger() {
    static LOGGER: EnvoyLog = EnvoyLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// One line in Envoy's log (`[dynamic_modules]` logger).
pub fn log_line(level: abi::LogLevel, message: &str) {
    // SAFETY: both buffers live for the call.
    unsafe {
        if abi::envoy_dynamic_module_callback_log_enabled(level) {
            abi::envoy_dynamic_module_callback_log_v2(
                level,
                abi::ModuleBuffer::of(message.as_bytes()),
                abi::ModuleBuffer::of(b""),
                0,
            );
        }
    }
}

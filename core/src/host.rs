//! Everything the filters ask of Envoy, as one trait. The wasm crate implements it
//! with proxy-wasm host calls; `mock_host.rs` implements it in memory for the unit
//! tests of the contexts; a native build would implement it over Envoy's
//! dynamic-module ABI. Logging goes through the `log` facade, whose logger the
//! host crate installs.
//!
//! Calls act on the context the callback came for, or on the one
//! [`Host::act_for`] switched to. A host error never reaches the caller as a
//! panic: reads give `None` or empty, writes are logged and dropped (the
//! implementation's concern), so a failing call costs one request at most.

use crate::store::SharedData;

/// What a callback tells Envoy: go on with the stream, or hold it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// The kinds of metric Envoy keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// A header list as Envoy hands it over (values may be any bytes).
pub type HeaderList = Vec<(String, Vec<u8>)>;

/// A request sent outside the routed stream, to `cluster`, answered within
/// `timeout_ms` (a dispatch-mode failover, a hedge, a background probe).
pub struct Call<'a> {
    pub cluster: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Option<&'a [u8]>,
    pub timeout_ms: u64,
}

/// The calls into Envoy. Reads take `&self`; calls that change the stream take
/// `&mut self`. Shared data (the supertrait) and metrics are process-wide and
/// take `&self`, so a store borrow can live beside the other reads.
pub trait Host: SharedData {
    /// Wall-clock now in Unix milliseconds, as Envoy sees it.
    fn now_ms(&self) -> u64;

    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    fn request_headers(&self) -> HeaderList;
    fn set_request_header(&mut self, name: &str, value: &[u8]);
    fn remove_request_header(&mut self, name: &str);
    /// The first `size` bytes of the buffered request body.
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the first `old_len` bytes of the buffered request body with `prefix`.
    fn replace_request_body_prefix(&mut self, old_len: usize, prefix: &[u8]);

    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    fn response_headers(&self) -> HeaderList;
    fn set_response_header(&mut self, name: &str, value: &str);
    fn remove_response_header(&mut self, name: &str);
    /// The response body chunk passing now (its first `size` bytes).
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Appends `data` to the response body chunk passing now (`len` bytes long).
    fn append_response_body(&mut self, len: usize, data: &[u8]);

    /// A property such as `["response", "code_details"]`, or filter state `[name]`.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Sets filter state `wasm.<name>` (the access log and the other filter read it).
    fn set_property(&mut self, name: &str, value: &[u8]);

    /// Sends `call`; its answer comes to the calling context's call-response
    /// callback with the returned token.
    fn dispatch(&mut self, call: &Call<'_>) -> Result<u32, String>;
    /// The answer to a call, inside its callback.
    fn call_response_headers(&self) -> HeaderList;
    fn call_response_body(&self, size: usize) -> Vec<u8>;

    /// Answers the client directly; the routed request, if any, is abandoned.
    fn send_response(&mut self, status: u16, headers: &[(String, String)], body: &[u8]);
    /// Resets the stream of the context acting now; for an upstream filter, that
    /// attempt's connection.
    fn reset_stream(&mut self);
    /// Makes the next calls act for request context `id`; false when it is gone.
    fn act_for(&mut self, id: u32) -> bool;

    /// Asks to have this request's filter woken (`on_wake`) at about `at_ms`. A
    /// host whose root context ticks (proxy-wasm) need not: the root's tick does the
    /// timed work of every request (a due hedge). The native host has no tick and
    /// wakes the request itself.
    fn wake_at(&mut self, _at_ms: u64) {}

    /// Cancels call `token` this request sent, if the host can (its answer then
    /// never comes): whether it did. proxy-wasm cannot (a hedge is cancelled
    /// through the cancel list its upstream filter polls).
    fn cancel_call(&mut self, _token: u32) -> bool {
        false
    }

    /// The plugin configuration's bytes, `None` when empty.
    fn plugin_configuration(&self) -> Option<Vec<u8>>;
    fn set_tick_period_ms(&mut self, ms: u64);

    /// Registers (or finds) a metric; Envoy shows it as `wasmcustom.<name>`.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, by: i64);
    fn record_metric(&self, id: u32, value: u64);

    /// A numeric property Envoy gives as a little-endian u64 (`response.flags`).
    fn property_u64(&self, path: &[&str]) -> Option<u64> {
        self.property(path)
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_le_bytes)
    }

    /// Filter state `name` parsed as a number.
    fn property_number<T: std::str::FromStr>(&self, name: &str) -> Option<T>
    where
        Self: Sized,
    {
        parse_number(self.property(&[name]).as_deref())
    }

    fn set_property_str(&mut self, name: &str, value: &str) {
        self.set_property(name, value.as_bytes());
    }

    /// Whether the upstream filter of an attempt that ended without an answer still
    /// gets its end (`on_done`) with filter state writable. proxy-wasm: yes; Envoy's
    /// dynamic modules: no (see `contexts/unreported.rs`).
    fn reports_attempt_ends(&self) -> bool {
        true
    }
}

/// A header value or property parsed as a number (surrounding blanks allowed).
pub fn parse_number<T: std::str::FromStr>(value: Option<&[u8]>) -> Option<T> {
    std::str::from_utf8(value?).ok()?.trim().parse().ok()
}

/// The value of `name` in a header list.
pub fn header_value<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

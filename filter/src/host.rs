//! The only module that calls into Envoy (`proxy_wasm::hostcalls`). Every call
//! returns a `Result` or an `Option` instead of unwrapping: a host error must cost
//! one request, never the VM.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

use crate::store::{SharedData, StoreError};

/// Wall-clock now in Unix milliseconds, as Envoy sees it.
pub fn now_ms() -> u64 {
    match hostcalls::get_current_time() {
        Ok(t) => t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        Err(s) => {
            log::error!("llm-failover: get_current_time failed: {s:?}");
            0
        }
    }
}

/// Envoy's shared data, one store per process and `vm_id`.
pub struct HostSharedData;

impl SharedData for HostSharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(|s| StoreError::Host(format!("{s:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(s) => Err(StoreError::Host(format!("{s:?}"))),
        }
    }
}

fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

fn log_err<T>(what: &str, r: Result<T, Status>) -> Option<T> {
    r.map_err(|s| log::warn!("llm-failover: {what} failed: {s:?}"))
        .ok()
}

pub fn request_header(name: &str) -> Option<Vec<u8>> {
    header(MapType::HttpRequestHeaders, name)
}

pub fn request_headers() -> Vec<(String, Vec<u8>)> {
    log_err(
        "reading request headers",
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders),
    )
    .unwrap_or_default()
}

pub fn set_request_header(name: &str, value: &str) {
    log_err(
        "setting a request header",
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)),
    );
}

pub fn set_request_header_bytes(name: &str, value: &[u8]) {
    log_err(
        "setting a request header",
        hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value)),
    );
}

pub fn remove_request_header(name: &str) {
    log_err(
        "removing a request header",
        hostcalls::remove_map_value(MapType::HttpRequestHeaders, name),
    );
}

pub fn response_header(name: &str) -> Option<Vec<u8>> {
    header(MapType::HttpResponseHeaders, name)
}

pub fn response_headers() -> Vec<(String, Vec<u8>)> {
    log_err(
        "reading response headers",
        hostcalls::get_map_bytes(MapType::HttpResponseHeaders),
    )
    .unwrap_or_default()
}

pub fn set_response_header(name: &str, value: &str) {
    log_err(
        "setting a response header",
        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)),
    );
}

pub fn request_body(size: usize) -> Option<Vec<u8>> {
    log_err(
        "reading the request body",
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size),
    )
    .flatten()
}

/// The response body chunk passing now.
pub fn response_body(size: usize) -> Option<Vec<u8>> {
    log_err(
        "reading the response body",
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size),
    )
    .flatten()
}

/// Appends `data` to the response body chunk passing now (`len` bytes long).
pub fn append_response_body(len: usize, data: &[u8]) {
    log_err(
        "appending to the response body",
        hostcalls::set_buffer(BufferType::HttpResponseBody, len, 0, data),
    );
}

/// Replaces the first `old_len` bytes of the buffered request body with `prefix`
/// (Envoy drains that many bytes from the front and prepends the new ones).
pub fn replace_request_body_prefix(old_len: usize, prefix: &[u8]) {
    log_err(
        "replacing the request body",
        hostcalls::set_buffer(BufferType::HttpRequestBody, 0, old_len, prefix),
    );
}

/// A property such as `["response", "code_details"]`.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A numeric property Envoy gives as a little-endian u64 (`response.flags`,
/// `upstream.request_attempt_count`).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    property(path)
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_le_bytes)
}

/// Sends the request to `cluster` outside the routed stream; the answer comes to
/// `on_http_call_response` with the returned token.
pub fn dispatch(
    cluster: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, Status> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    hostcalls::dispatch_http_call(
        cluster,
        headers,
        body,
        vec![],
        Duration::from_millis(timeout_ms),
    )
}

pub fn call_response_headers() -> Vec<(String, Vec<u8>)> {
    log_err(
        "reading a call's response headers",
        hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders),
    )
    .unwrap_or_default()
}

pub fn call_response_body(size: usize) -> Vec<u8> {
    log_err(
        "reading a call's response body",
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size),
    )
    .flatten()
    .unwrap_or_default()
}

/// Answers the client directly; the routed request, if any, is abandoned.
pub fn send_response(status: u16, headers: &[(String, String)], body: &[u8]) {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    log_err(
        "sending a local response",
        hostcalls::send_http_response(u32::from(status), headers, Some(body)),
    );
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    log_err(
        "reading the plugin configuration",
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX),
    )
    .flatten()
    .filter(|b| !b.is_empty())
}

/// Replaces the SDK's panic hook with one that says whose panic it was: a panic
/// aborts the VM (Envoy's `FAIL_RELOAD` then restarts it), so this log line is the
/// only trace it leaves.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(
            proxy_wasm::types::LogLevel::Critical,
            &format!("llm-failover panicked, the VM will be reloaded: {info}"),
        );
    }));
}

/// Registers (or finds) a metric; Envoy shows it as `wasmcustom.<name>`.
pub fn define_metric(kind: proxy_wasm::types::MetricType, name: &str) -> Option<u32> {
    log_err("defining a metric", hostcalls::define_metric(kind, name))
}

pub fn increment_metric(id: u32, by: i64) {
    log_err("incrementing a metric", hostcalls::increment_metric(id, by));
}

pub fn record_metric(id: u32, value: u64) {
    log_err("recording a metric", hostcalls::record_metric(id, value));
}

/// Sets a filter-state value Envoy's access log can print as
/// `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub fn set_property(name: &str, value: &str) {
    set_property_bytes(name, value.as_bytes());
}

pub fn set_property_bytes(name: &str, value: &[u8]) {
    log_err(
        "setting a property",
        hostcalls::set_property(vec![name], Some(value)),
    );
}

pub fn set_tick_period_ms(ms: u64) {
    log_err(
        "setting the tick period",
        hostcalls::set_tick_period(Duration::from_millis(ms)),
    );
}

/// Makes the next host calls act on context `id` (a request of this VM) instead of
/// the one the callback came for; false when that context is gone.
pub fn act_for(id: u32) -> bool {
    hostcalls::set_effective_context(id).is_ok()
}

/// Resets the stream of the context acting now (see [`act_for`]); for an upstream
/// filter, that attempt's connection is closed.
pub fn reset_stream() {
    log_err("resetting the stream", hostcalls::reset_http_request());
}

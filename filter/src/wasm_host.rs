//! The proxy-wasm implementation of the core's `Host`: every call into Envoy
//! (`proxy_wasm::hostcalls`) is here. A host error is logged and costs one request
//! at most, never the VM.

use std::time::{Duration, UNIX_EPOCH};

use llm_failover_core::host::{Call, HeaderList, Host, MetricKind};
use llm_failover_core::store::{SharedData, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

/// The host as proxy-wasm gives it: stateless, every call goes to Envoy.
pub struct WasmHost;

fn log_err<T>(what: &str, r: Result<T, Status>) -> Option<T> {
    r.map_err(|s| log::warn!("llm-failover: {what} failed: {s:?}"))
        .ok()
}

fn value(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

fn all(map: MapType, what: &str) -> HeaderList {
    log_err(what, hostcalls::get_map_bytes(map)).unwrap_or_default()
}

fn buffer(kind: BufferType, size: usize, what: &str) -> Option<Vec<u8>> {
    log_err(what, hostcalls::get_buffer(kind, 0, size)).flatten()
}

fn pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

impl SharedData for WasmHost {
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

impl Host for WasmHost {
    fn now_ms(&self) -> u64 {
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

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        value(MapType::HttpRequestHeaders, name)
    }

    fn request_headers(&self) -> HeaderList {
        all(MapType::HttpRequestHeaders, "reading request headers")
    }

    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        log_err(
            "setting a request header",
            hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value)),
        );
    }

    fn remove_request_header(&mut self, name: &str) {
        log_err(
            "removing a request header",
            hostcalls::remove_map_value(MapType::HttpRequestHeaders, name),
        );
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        buffer(
            BufferType::HttpRequestBody,
            size,
            "reading the request body",
        )
    }

    fn replace_request_body_prefix(&mut self, old_len: usize, prefix: &[u8]) {
        // Envoy drains `old_len` bytes from the front and prepends the new ones.
        log_err(
            "replacing the request body",
            hostcalls::set_buffer(BufferType::HttpRequestBody, 0, old_len, prefix),
        );
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        value(MapType::HttpResponseHeaders, name)
    }

    fn response_headers(&self) -> HeaderList {
        all(MapType::HttpResponseHeaders, "reading response headers")
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        log_err(
            "setting a response header",
            hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)),
        );
    }

    fn remove_response_header(&mut self, name: &str) {
        log_err(
            "removing a response header",
            hostcalls::set_map_value(MapType::HttpResponseHeaders, name, None),
        );
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        buffer(
            BufferType::HttpResponseBody,
            size,
            "reading the response body",
        )
    }

    fn append_response_body(&mut self, len: usize, data: &[u8]) {
        log_err(
            "appending to the response body",
            hostcalls::set_buffer(BufferType::HttpResponseBody, len, 0, data),
        );
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        log_err(
            "setting a property",
            hostcalls::set_property(vec![name], Some(value)),
        );
    }

    fn dispatch(&mut self, call: &Call<'_>) -> Result<u32, String> {
        hostcalls::dispatch_http_call(
            call.cluster,
            pairs(call.headers),
            call.body,
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|s| format!("{s:?}"))
    }

    fn call_response_headers(&self) -> HeaderList {
        all(
            MapType::HttpCallResponseHeaders,
            "reading a call's response headers",
        )
    }

    fn call_response_body(&self, size: usize) -> Vec<u8> {
        buffer(
            BufferType::HttpCallResponseBody,
            size,
            "reading a call's response body",
        )
        .unwrap_or_default()
    }

    fn send_response(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        log_err(
            "sending a local response",
            hostcalls::send_http_response(u32::from(status), pairs(headers), Some(body)),
        );
    }

    fn reset_stream(&mut self) {
        log_err("resetting the stream", hostcalls::reset_http_request());
    }

    fn act_for(&mut self, id: u32) -> bool {
        hostcalls::set_effective_context(id).is_ok()
    }

    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        buffer(
            BufferType::PluginConfiguration,
            usize::MAX,
            "reading the plugin configuration",
        )
        .filter(|b| !b.is_empty())
    }

    fn set_tick_period_ms(&mut self, ms: u64) {
        log_err(
            "setting the tick period",
            hostcalls::set_tick_period(Duration::from_millis(ms)),
        );
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        log_err("defining a metric", hostcalls::define_metric(kind, name))
    }

    fn increment_metric(&self, id: u32, by: i64) {
        log_err("incrementing a metric", hostcalls::increment_metric(id, by));
    }

    fn record_metric(&self, id: u32, value: u64) {
        log_err("recording a metric", hostcalls::record_metric(id, value));
    }
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

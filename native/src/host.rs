//! The core's `Host` over Envoy's dynamic-module ABI: one value per hook call,
//! holding Envoy's pointer to the stream (or none, for the configuration's own
//! calls) and what the hook brought (a callout's answer).

use std::time::{SystemTime, UNIX_EPOCH};

use llm_failover_core::host::{Call, HeaderList, Host, MetricKind};
use llm_failover_core::store::{SharedData, StoreError};

use crate::abi::*;
use crate::hooks::bytes;
use crate::metrics::{Families, Registry, Target};
use crate::store;

/// Envoy's attributes the core reads as properties (the ABI's attribute ids).
const RESPONSE_CODE_DETAILS: u32 = 16;
const RESPONSE_FLAGS: u32 = 17;
const UPSTREAM_TRANSPORT_FAILURE_REASON: u32 = 52;
const XDS_CLUSTER_NAME: u32 = 57;

pub struct NativeHost<'a> {
    /// The stream this hook is for; null for the configuration's own calls.
    envoy: FilterEnvoyPtr,
    /// The configuration, for its own calls on the main thread (the tick's gauges,
    /// background probes); null for a stream's hooks.
    config_envoy: ConfigEnvoyPtr,
    /// The tick period the core asked for in `on_configure` (0: none).
    tick_ms: u64,
    /// The filter's name in Envoy's configuration (`plugin_root_id` to the core: the
    /// downstream or the upstream instance).
    filter_name: &'a [u8],
    /// The plugin configuration, for the root's `on_configure`.
    configuration: Option<&'a [u8]>,
    /// A callout's answer while its hook runs.
    call: Option<(HeaderList, Vec<u8>)>,
    /// The configuration's metric families and this worker's metrics of it.
    metrics: Option<(&'a Families, &'a Registry)>,
    /// The core's id of this stream's request (0: none), the one context it acts for.
    context: u32,
    /// When the core asked to have this stream woken (Unix ms), for its filter to
    /// arrange after the hook (`waker.rs`).
    wake_at: Option<u64>,
    /// The streaming calls this hook reset (their reset hook may run inside the
    /// reset, or later: either way it is not an answer).
    cancelled: Vec<u64>,
}

impl<'a> NativeHost<'a> {
    /// The whole body so far: what Envoy buffered for this filter and the chunk
    /// passing now.
    pub fn body_size(&self, request: bool) -> usize {
        if !self.live() {
            return 0;
        }
        let (buffered, received) = body_types(request);
        // SAFETY: `envoy` is the live stream of this hook.
        unsafe {
            envoy_dynamic_module_callback_http_get_body_size(self.envoy, buffered)
                + envoy_dynamic_module_callback_http_get_body_size(self.envoy, received)
        }
    }

    /// For the hooks of stream `envoy`.
    pub fn stream(envoy: FilterEnvoyPtr, filter_name: &'a [u8]) -> Self {
        NativeHost {
            envoy,
            config_envoy: std::ptr::null_mut(),
            tick_ms: 0,
            filter_name,
            configuration: None,
            call: None,
            metrics: None,
            context: 0,
            wake_at: None,
            cancelled: Vec::new(),
        }
    }

    /// The core's id of the request this stream is.
    pub fn for_context(mut self, context: u32) -> Self {
        self.context = context;
        self
    }

    /// The wake the core asked for during this hook, if any.
    pub fn take_wake(&mut self) -> Option<u64> {
        self.wake_at.take()
    }

    /// The calls this hook cancelled.
    pub fn take_cancelled(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.cancelled)
    }

    pub fn with_metrics(mut self, families: &'a Families, registry: &'a Registry) -> Self {
        self.metrics = Some((families, registry));
        self
    }

    /// For the configuration's own calls (no stream): `config_envoy` is null on a
    /// worker (building its root), the configuration on the main thread.
    pub fn configuring(
        config_envoy: ConfigEnvoyPtr,
        filter_name: &'a [u8],
        configuration: &'a [u8],
    ) -> Self {
        NativeHost {
            envoy: std::ptr::null_mut(),
            config_envoy,
            tick_ms: 0,
            filter_name,
            configuration: Some(configuration),
            call: None,
            metrics: None,
            context: 0,
            wake_at: None,
            cancelled: Vec::new(),
        }
    }

    /// The tick period the core asked for (0: none).
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Where a metric is recorded from this hook.
    fn target(&self) -> Target {
        if self.live() {
            Target::Stream(self.envoy)
        } else {
            Target::Config(self.config_envoy)
        }
    }

    /// A callout's answer, for its hook.
    pub fn set_call(&mut self, headers: HeaderList, body: Vec<u8>) {
        self.call = Some((headers, body));
    }

    fn live(&self) -> bool {
        !self.envoy.is_null()
    }

    fn header(&self, which: HeaderType, name: &str) -> Option<Vec<u8>> {
        if !self.live() {
            return None;
        }
        let mut value = EnvoyBuffer::EMPTY;
        let mut count = 0usize;
        // SAFETY: `envoy` is the live stream of this hook; `value` and `count` are ours.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.envoy,
                which,
                ModuleBuffer::of(name.as_bytes()),
                &mut value,
                0,
                &mut count,
            )
        };
        // SAFETY: Envoy lends the value until this hook changes that map or returns.
        found.then(|| unsafe { bytes(value) }.to_vec())
    }

    fn headers(&self, which: HeaderType) -> HeaderList {
        if !self.live() {
            return Vec::new();
        }
        // SAFETY: `envoy` is the live stream of this hook.
        let size =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.envoy, which) };
        let mut out = vec![EnvoyHeader::EMPTY; size];
        // SAFETY: `out` holds exactly the `size` entries Envoy said it has.
        if size == 0
            || !unsafe {
                envoy_dynamic_module_callback_http_get_headers(self.envoy, which, out.as_mut_ptr())
            }
        {
            return Vec::new();
        }
        out.iter().map(header_pair).collect()
    }

    fn set_header(&mut self, which: HeaderType, name: &str, value: &[u8]) {
        if !self.live() {
            return;
        }
        let request = matches!(which, HeaderType::RequestHeader);
        // An empty value removes the header, as the core means it: passed as the null
        // buffer, which is what the ABI documents for a removal.
        let value = if value.is_empty() {
            ModuleBuffer::NULL
        } else {
            ModuleBuffer::of(value)
        };
        // SAFETY: `envoy` is the live stream of this hook; both buffers live for the call
        // (a null one is never read).
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.envoy,
                which,
                ModuleBuffer::of(name.as_bytes()),
                value,
            );
            if request {
                // As proxy-wasm does: a request header change makes Envoy pick the
                // route (and its cluster) again, so filter state set before it (the
                // first attempt's cluster) counts. A no-op in an upstream filter.
                envoy_dynamic_module_callback_http_clear_route_cache(self.envoy);
            }
        }
    }

    fn body(&self, which: BodyType) -> Vec<u8> {
        if !self.live() {
            return Vec::new();
        }
        // SAFETY: `envoy` is the live stream of this hook; the vector holds the count
        // Envoy gave.
        unsafe {
            let n = envoy_dynamic_module_callback_http_get_body_chunks_size(self.envoy, which);
            let mut chunks = vec![EnvoyBuffer::EMPTY; n];
            if n == 0
                || !envoy_dynamic_module_callback_http_get_body_chunks(
                    self.envoy,
                    which,
                    chunks.as_mut_ptr(),
                )
            {
                return Vec::new();
            }
            concat(&chunks)
        }
    }

    /// What Envoy buffered for this filter (a held body) then the chunk passing now,
    /// and the buffered part's length.
    fn whole_body(&self, request: bool) -> (Vec<u8>, usize) {
        let (buffered, received) = body_types(request);
        let mut body = self.body(buffered);
        let held = body.len();
        body.extend(self.body(received));
        (body, held)
    }

    /// The first `size` bytes of the whole body so far (what the core asks for).
    fn body_prefix(&self, request: bool, size: usize) -> Vec<u8> {
        let mut body = self.whole_body(request).0;
        body.truncate(size);
        body
    }

    fn attribute_string(&self, id: u32) -> Option<Vec<u8>> {
        if !self.live() {
            return None;
        }
        let mut value = EnvoyBuffer::EMPTY;
        // SAFETY: `envoy` is the live stream of this hook; `value` is ours.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.envoy, id, &mut value,
            )
        };
        // SAFETY: Envoy lends the value for this hook.
        found.then(|| unsafe { bytes(value) }.to_vec())
    }

    fn attribute_int(&self, id: u32) -> Option<u64> {
        if !self.live() {
            return None;
        }
        let mut value = 0u64;
        // SAFETY: `envoy` is the live stream of this hook; `value` is ours.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(self.envoy, id, &mut value)
        };
        found.then_some(value)
    }
}

fn header_pair(h: &EnvoyHeader) -> (String, Vec<u8>) {
    // SAFETY: Envoy lends both for this hook.
    let (key, value) = unsafe { (bytes(h.key()), bytes(h.value())) };
    (String::from_utf8_lossy(key).into_owned(), value.to_vec())
}

/// The body Envoy buffered for the filter and the chunk passing now, of the request
/// or of the response.
fn body_types(request: bool) -> (BodyType, BodyType) {
    if request {
        (BodyType::BufferedRequestBody, BodyType::ReceivedRequestBody)
    } else {
        (
            BodyType::BufferedResponseBody,
            BodyType::ReceivedResponseBody,
        )
    }
}

/// Headers to lend Envoy (they must outlive the call they are passed to).
fn module_headers(headers: &[(String, String)]) -> Vec<ModuleHeader> {
    headers
        .iter()
        .map(|(n, v)| ModuleHeader::of(n.as_bytes(), v.as_bytes()))
        .collect()
}

/// A header list Envoy lends to a hook, copied.
///
/// # Safety
/// `headers` points at `size` headers, each lent for the hook's length.
pub unsafe fn header_list(headers: *const EnvoyHeader, size: usize) -> HeaderList {
    if headers.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: `headers` is non-null and points at `size` headers (the caller's promise).
    let list = std::slice::from_raw_parts(headers, size);
    list.iter().map(header_pair).collect()
}

/// Body chunks Envoy lends to a hook, joined.
///
/// # Safety
/// `chunks` points at `size` buffers, each lent for the hook's length.
pub unsafe fn joined(chunks: *const EnvoyBuffer, size: usize) -> Vec<u8> {
    if chunks.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: `chunks` is non-null and points at `size` buffers, each readable for the
    // hook (the caller's promise).
    concat(std::slice::from_raw_parts(chunks, size))
}

/// The chunks' bytes in one vector, copied chunk by chunk (a byte-by-byte collect
/// made native-100k twice router-100k's CPU, measured).
///
/// # Safety
/// Each chunk points at `length` readable bytes for the call.
unsafe fn concat(chunks: &[EnvoyBuffer]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.length).sum());
    for c in chunks {
        // SAFETY: each chunk is readable for the call (the caller's promise).
        out.extend_from_slice(bytes(*c));
    }
    out
}

impl SharedData for NativeHost<'_> {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        store::get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        store::set(key, value, cas)
    }
}

impl Host for NativeHost<'_> {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.header(HeaderType::RequestHeader, name)
    }

    fn request_headers(&self) -> HeaderList {
        self.headers(HeaderType::RequestHeader)
    }

    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.set_header(HeaderType::RequestHeader, name, value);
    }

    fn remove_request_header(&mut self, name: &str) {
        self.set_header(HeaderType::RequestHeader, name, b"");
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.body_prefix(true, size))
    }

    fn replace_request_body_prefix(&mut self, old_len: usize, prefix: &[u8]) {
        if !self.live() {
            return;
        }
        let (body, buffered) = self.whole_body(true);
        let received = body.len() - buffered;
        let mut new = prefix.to_vec();
        new.extend_from_slice(body.get(old_len..).unwrap_or(&[]));
        // SAFETY: `envoy` is the live stream of this hook; the buffer lives for the call.
        unsafe {
            envoy_dynamic_module_callback_http_drain_body(
                self.envoy,
                BodyType::BufferedRequestBody,
                buffered,
            );
            envoy_dynamic_module_callback_http_drain_body(
                self.envoy,
                BodyType::ReceivedRequestBody,
                received,
            );
            envoy_dynamic_module_callback_http_append_body(
                self.envoy,
                BodyType::ReceivedRequestBody,
                ModuleBuffer::of(&new),
            );
        }
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.header(HeaderType::ResponseHeader, name)
    }

    fn response_headers(&self) -> HeaderList {
        self.headers(HeaderType::ResponseHeader)
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.set_header(HeaderType::ResponseHeader, name, value.as_bytes());
    }

    fn remove_response_header(&mut self, name: &str) {
        self.set_header(HeaderType::ResponseHeader, name, b"");
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.body_prefix(false, size))
    }

    fn append_response_body(&mut self, _len: usize, data: &[u8]) {
        if !self.live() {
            return;
        }
        // SAFETY: `envoy` is the live stream of this hook; the buffer lives for the call.
        unsafe {
            envoy_dynamic_module_callback_http_append_body(
                self.envoy,
                BodyType::ReceivedResponseBody,
                ModuleBuffer::of(data),
            );
        }
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["plugin_root_id"] => Some(self.filter_name.to_vec()),
            ["response", "code_details"] => self.attribute_string(RESPONSE_CODE_DETAILS),
            ["response", "flags"] => self
                .attribute_int(RESPONSE_FLAGS)
                .map(|f| f.to_le_bytes().to_vec()),
            ["upstream", "transport_failure_reason"] => {
                self.attribute_string(UPSTREAM_TRANSPORT_FAILURE_REASON)
            }
            ["xds", "cluster_name"] => self.attribute_string(XDS_CLUSTER_NAME),
            [name] if self.live() => {
                let mut value = EnvoyBuffer::EMPTY;
                // SAFETY: `envoy` is the live stream of this hook; `value` is ours.
                let found = unsafe {
                    envoy_dynamic_module_callback_http_get_filter_state_bytes(
                        self.envoy,
                        ModuleBuffer::of(name.as_bytes()),
                        &mut value,
                    )
                };
                // SAFETY: Envoy lends the value for this hook.
                found.then(|| unsafe { bytes(value) }.to_vec())
            }
            _ => None,
        }
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        if !self.live() {
            return;
        }
        // SAFETY: `envoy` is the live stream of this hook; both buffers live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.envoy,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            );
        }
    }

    /// From a stream, a streaming call (so that it can be cancelled: a losing
    /// hedge), its answer gathered by the stream's filter (`failover.rs`); from the
    /// configuration on the main thread, a one-shot call (a background probe).
    fn dispatch(&mut self, call: &Call<'_>) -> Result<u32, String> {
        let headers = module_headers(call.headers);
        let mut id = 0u64;
        let (cluster, body) = (
            ModuleBuffer::of(call.cluster.as_bytes()),
            ModuleBuffer::of(call.body.unwrap_or(&[])),
        );
        // SAFETY: `envoy` is the live stream, or `config_envoy` the configuration
        // whose hook runs on the main thread; every buffer lives for the call.
        let result = unsafe {
            if self.live() {
                envoy_dynamic_module_callback_http_filter_start_http_stream(
                    self.envoy,
                    &mut id,
                    cluster,
                    headers.as_ptr(),
                    headers.len(),
                    body,
                    true,
                    call.timeout_ms,
                )
            } else if !self.config_envoy.is_null() {
                envoy_dynamic_module_callback_http_filter_config_http_callout(
                    self.config_envoy,
                    &mut id,
                    cluster,
                    headers.as_ptr(),
                    headers.len(),
                    body,
                    call.timeout_ms,
                )
            } else {
                return Err("no stream or configuration to send a call from".to_string());
            }
        };
        match result {
            0 => u32::try_from(id).map_err(|_| format!("callout id {id} out of range")),
            1 => Err("MissingRequiredHeaders".to_string()),
            2 => Err("ClusterNotFound".to_string()),
            other => Err(format!("CannotCreateRequest ({other})")),
        }
    }

    /// Resets the streaming call (its reset hook runs at once, inside the reset:
    /// the filter knows it from `take_cancelled` and ignores it).
    fn cancel_call(&mut self, token: u32) -> bool {
        if !self.live() {
            return false;
        }
        let id = u64::from(token);
        self.cancelled.push(id);
        // SAFETY: `envoy` is the live stream of this hook; an id Envoy no longer
        // knows is ignored by it.
        unsafe { envoy_dynamic_module_callback_http_filter_reset_http_stream(self.envoy, id) };
        true
    }

    fn call_response_headers(&self) -> HeaderList {
        self.call
            .as_ref()
            .map(|(h, _)| h.clone())
            .unwrap_or_default()
    }

    fn call_response_body(&self, size: usize) -> Vec<u8> {
        let mut body = self
            .call
            .as_ref()
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        body.truncate(size);
        body
    }

    fn send_response(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        if !self.live() {
            return;
        }
        let list = module_headers(headers);
        // SAFETY: `envoy` is the live stream; every buffer lives for the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.envoy,
                u32::from(status),
                list.as_ptr(),
                list.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(b"llm_failover"),
            );
        }
    }

    fn reset_stream(&mut self) {
        if !self.live() {
            return;
        }
        // SAFETY: `envoy` is the live stream of this hook.
        unsafe {
            envoy_dynamic_module_callback_http_filter_reset_stream(
                self.envoy,
                0,
                ModuleBuffer::of(b""),
            );
        }
    }

    /// A native upstream filter whose attempt ended without an answer is destroyed
    /// without completing (measured): `contexts/unreported.rs` covers it.
    fn reports_attempt_ends(&self) -> bool {
        false
    }

    /// A native filter acts only for its own stream (no effective-context switch):
    /// work for another request goes through that request's own hooks.
    fn act_for(&mut self, id: u32) -> bool {
        self.live() && id != 0 && id == self.context
    }

    fn wake_at(&mut self, at_ms: u64) {
        self.wake_at = Some(at_ms);
    }

    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        self.configuration
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
    }

    /// Kept for the configuration's ticker (`ticker.rs`); a worker's root asks too,
    /// and nothing ticks it (the main thread's root does the periodic work).
    fn set_tick_period_ms(&mut self, ms: u64) {
        self.tick_ms = ms;
    }

    /// The families were defined when Envoy created the configuration (the ABI
    /// freezes them afterwards); this finds the core's metric among them.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        self.metrics
            .and_then(|(_, registry)| registry.define(kind, name))
    }

    fn increment_metric(&self, id: u32, by: i64) {
        if let Some((families, registry)) = self.metrics {
            registry.record(families, self.target(), id, u64::try_from(by).unwrap_or(0));
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        if let Some((families, registry)) = self.metrics {
            registry.record(families, self.target(), id, value);
        }
    }
}

//! The hooks Envoy 1.40 resolves in a dynamic module's HTTP filter (all 20 are
//! required, measured: a module missing any is refused with "Failed to resolve
//! symbol"). Each one catches panics: a panic crossing into Envoy is undefined
//! behaviour, and a native module shares Envoy's process.
//!
//! The hooks take Envoy's raw pointers by the ABI's contract (a filter pointer is
//! the one `on_http_filter_new` returned, live until `on_http_filter_destroy`), so
//! they are safe `extern "C"` functions that dereference them.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::*;
use crate::failover::{holds, CallEvent, FailoverConfig, Slot};
use crate::host::{header_list, joined};
use crate::{spike, spike_async};

/// What a `filter_name` makes: the failover filter (`llm_failover` downstream,
/// `llm_failover_upstream` on provider clusters), or a measuring spike.
pub enum ModuleConfig {
    Failover(Box<FailoverConfig>),
    Spike(spike::FilterConfig),
    Async(spike_async::FilterConfig),
}

pub enum ModuleFilter {
    Failover(Box<Slot>, *const FailoverConfig),
    Spike(spike::Filter),
    Async(Box<spike_async::Filter>),
    /// A stream the filter does not act on (its configuration could not be applied
    /// on this worker, or a panic made the filter).
    Passing,
}

/// Runs `f`, or gives `fallback` if it panicked (after logging it).
fn guard<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            crate::log_line(
                LogLevel::Critical,
                &format!(
                    "llm-failover: a panic in {what} was caught; the stream goes on unfiltered"
                ),
            );
            fallback
        }
    }
}

/// The module's filter behind Envoy's pointer to it.
///
/// # Safety
/// `ptr` is what `on_http_filter_new` returned and `on_http_filter_destroy` has not freed.
unsafe fn filter<'a>(ptr: FilterModulePtr) -> &'a mut ModuleFilter {
    // SAFETY: `ptr` came from Box::into_raw in filter_new and is not freed yet (the
    // caller's promise).
    &mut *(ptr as *mut ModuleFilter)
}

/// Runs a failover hook: `f` with the filter and the stream's host.
fn failover<T>(
    f_ptr: FilterModulePtr,
    envoy: FilterEnvoyPtr,
    fallback: T,
    on_spike: impl FnOnce(&mut spike::Filter) -> T,
    f: impl FnOnce(
        &mut llm_failover_core::contexts::root::HttpFilter,
        &mut crate::host::NativeHost<'_>,
    ) -> T,
) -> T {
    // SAFETY: Envoy passes the live filter it got from filter_new.
    match unsafe { filter(f_ptr) } {
        ModuleFilter::Failover(slot, config) => {
            // SAFETY: the configuration outlives its filters.
            slot.run(envoy, unsafe { &**config }, f)
        }
        ModuleFilter::Spike(s) => on_spike(s),
        // (Its request headers are its own hook's; it leaves everything else alone.)
        ModuleFilter::Async(_) | ModuleFilter::Passing => fallback,
    }
}

fn headers_status(hold: bool) -> HeadersStatus {
    if hold {
        HeadersStatus::StopIteration
    } else {
        HeadersStatus::Continue
    }
}

fn body_status(hold: bool) -> BodyStatus {
    if hold {
        BodyStatus::StopIterationAndBuffer
    } else {
        BodyStatus::Continue
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    guard("program_init", (), crate::install_logger);
    ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    guard("config_new", std::ptr::null(), || {
        // SAFETY: Envoy lends both buffers for this call.
        let (name, config) = unsafe { (bytes(name), bytes(config)) };
        let made = match name {
            b"llm_failover" | b"llm_failover_upstream" => {
                FailoverConfig::new(config_envoy, name, config)
                    .map(|c| ModuleConfig::Failover(Box::new(c)))
            }
            _ => match spike_async::FilterConfig::new(name, config) {
                Some(c) => Ok(ModuleConfig::Async(c)),
                None => spike::FilterConfig::new(name, config).map(ModuleConfig::Spike),
            },
        };
        match made {
            Ok(c) => Box::into_raw(Box::new(c)) as ConfigModulePtr,
            Err(e) => {
                // One line that names the field; the null refuses the configuration.
                crate::log_line(LogLevel::Error, &e);
                std::ptr::null()
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ConfigModulePtr) {
    guard("config_destroy", (), || {
        // SAFETY: made by Box::into_raw in config_new, freed once here.
        drop(unsafe { Box::from_raw(config as *mut ModuleConfig) });
    })
}

/// The configuration's tick (`ticker.rs`), on the main thread.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    _event_id: u64,
) {
    guard("config_scheduled", (), || {
        // SAFETY: Envoy passes the live configuration it got from config_new.
        if let ModuleConfig::Failover(c) = unsafe { &*(config as *const ModuleConfig) } {
            c.tick(config_envoy);
        }
    })
}

/// The answer to a call the configuration sent (a background probe), on the main
/// thread.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    callout_id: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard("config_http_callout_done", (), || {
        // SAFETY: Envoy passes the live configuration, and lends the headers and
        // chunks for this hook.
        let (c, headers, body) = unsafe {
            (
                &*(config as *const ModuleConfig),
                header_list(headers, headers_size),
                joined(body_chunks, body_chunks_size),
            )
        };
        if let ModuleConfig::Failover(c) = c {
            let token = u32::try_from(callout_id).unwrap_or(u32::MAX);
            c.answered(config_envoy, token, headers, body);
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    _filter_envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    // Never null (Envoy does not check it): a panic gives a filter that does nothing.
    let made = guard("filter_new", ModuleFilter::Passing, || {
        // SAFETY: the config outlives its filters.
        match unsafe { &*(config as *const ModuleConfig) } {
            ModuleConfig::Failover(c) => match Slot::new(c) {
                Some(slot) => ModuleFilter::Failover(Box::new(slot), &**c as *const FailoverConfig),
                None => ModuleFilter::Passing,
            },
            ModuleConfig::Spike(c) => ModuleFilter::Spike(spike::Filter::new(c)),
            ModuleConfig::Async(c) => ModuleFilter::Async(Box::new(spike_async::Filter::new(c))),
        }
    });
    Box::into_raw(Box::new(made)) as FilterModulePtr
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterModulePtr) {
    guard("filter_destroy", (), || {
        // SAFETY: made by Box::into_raw in filter_new, freed once here.
        drop(unsafe { Box::from_raw(filter as *mut ModuleFilter) });
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    end_of_stream: bool,
) -> HeadersStatus {
    guard("request_headers", HeadersStatus::Continue, || {
        // SAFETY: Envoy passes the live filter it got from filter_new.
        if let ModuleFilter::Async(a) = unsafe { filter(f) } {
            // SAFETY: `envoy` is this hook's live stream.
            return unsafe { a.on_request_headers(envoy) };
        }
        failover(
            f,
            envoy,
            HeadersStatus::Continue,
            // SAFETY: `envoy` is this hook's live stream.
            |s| unsafe { s.on_request_headers(envoy, end_of_stream) },
            |filter, h| headers_status(holds(filter.on_request_headers(h, end_of_stream))),
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    end_of_stream: bool,
) -> BodyStatus {
    guard("request_body", BodyStatus::Continue, || {
        // SAFETY: Envoy passes the live filter it got from filter_new.
        if let ModuleFilter::Async(a) = unsafe { filter(f) } {
            return a.on_request_body();
        }
        failover(
            f,
            envoy,
            BodyStatus::Continue,
            |_| BodyStatus::Continue,
            |filter, h| {
                let size = h.body_size(true);
                body_status(holds(filter.on_request_body(h, size, end_of_stream)))
            },
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _envoy: FilterEnvoyPtr,
    _f: FilterModulePtr,
) -> TrailersStatus {
    TrailersStatus::Continue
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    end_of_stream: bool,
) -> HeadersStatus {
    guard("response_headers", HeadersStatus::Continue, || {
        failover(
            f,
            envoy,
            HeadersStatus::Continue,
            // SAFETY: `envoy` is this hook's live stream.
            |s| unsafe { s.on_response_headers(envoy, end_of_stream) },
            |filter, h| headers_status(holds(filter.on_response_headers(h, end_of_stream))),
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    end_of_stream: bool,
) -> BodyStatus {
    guard("response_body", BodyStatus::Continue, || {
        failover(
            f,
            envoy,
            BodyStatus::Continue,
            |_| BodyStatus::Continue,
            |filter, h| {
                let size = h.body_size(false);
                body_status(holds(filter.on_response_body(h, size, end_of_stream)))
            },
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
) -> TrailersStatus {
    guard("response_trailers", TrailersStatus::Continue, || {
        failover(
            f,
            envoy,
            TrailersStatus::Continue,
            |_| TrailersStatus::Continue,
            |filter, h| {
                filter.on_response_trailers(h);
                TrailersStatus::Continue
            },
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
) {
    guard("stream_complete", (), || {
        // SAFETY: Envoy passes the live filter it got from filter_new.
        if let ModuleFilter::Failover(slot, config) = unsafe { filter(f) } {
            // SAFETY: the configuration outlives its filters.
            slot.complete(envoy, unsafe { &**config });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    callout_id: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard("http_callout_done", (), || {
        // A failed call (reset, too large) comes without headers: the core sees no
        // status, as with proxy-wasm.
        // SAFETY: Envoy lends the headers and chunks for this hook.
        let (headers, body) = unsafe {
            (
                header_list(headers, headers_size),
                joined(body_chunks, body_chunks_size),
            )
        };
        let token = u32::try_from(callout_id).unwrap_or(u32::MAX);
        failover(
            f,
            envoy,
            (),
            |_| {},
            |filter, h| {
                let size = body.len();
                h.set_call(headers, body);
                filter.on_call_response(h, token, size);
            },
        )
    })
}

/// An event of a streaming call (a hedge) to the failover filter that sent it, or
/// a `spike_async` filter's hook.
fn on_call_event(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    what: &str,
    event: impl FnOnce() -> CallEvent,
    spike: impl FnOnce(&mut spike_async::Filter),
) {
    guard(what, (), || {
        // SAFETY: Envoy passes the live filter it got from filter_new.
        match unsafe { filter(f) } {
            // SAFETY: the configuration outlives its filters.
            ModuleFilter::Failover(slot, config) => {
                slot.call_event(envoy, unsafe { &**config }, event())
            }
            ModuleFilter::Async(a) => spike(a),
            ModuleFilter::Spike(_) | ModuleFilter::Passing => {}
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    stream_id: u64,
    headers: *const EnvoyHeader,
    headers_size: usize,
    _end_stream: bool,
) {
    on_call_event(
        envoy,
        f,
        "http_stream_headers",
        // SAFETY: Envoy lends the headers for this hook.
        || CallEvent::Headers(stream_id, unsafe { header_list(headers, headers_size) }),
        // SAFETY: `envoy` is this hook's live stream; Envoy lends the headers.
        |a| unsafe { a.on_stream_headers(envoy, stream_id, headers, headers_size) },
    );
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    stream_id: u64,
    data: *const EnvoyBuffer,
    data_count: usize,
    _end_stream: bool,
) {
    on_call_event(
        envoy,
        f,
        "http_stream_data",
        // SAFETY: Envoy lends the chunks for this hook.
        || CallEvent::Data(stream_id, unsafe { joined(data, data_count) }),
        // SAFETY: Envoy lends the chunks for this hook.
        |a| unsafe { a.on_stream_data(data, data_count) },
    );
}

/// A call's trailers: a hedge's answer is relayed without them (as a proxy-wasm
/// call's is).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: FilterEnvoyPtr,
    _f: FilterModulePtr,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    stream_id: u64,
) {
    on_call_event(
        envoy,
        f,
        "http_stream_complete",
        || CallEvent::Complete(stream_id),
        // SAFETY: `envoy` is this hook's live stream.
        |a| unsafe { a.on_stream_end(envoy, None) },
    );
}

/// Envoy 1.40 gives every call reset the same reason (a local reset).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    stream_id: u64,
    reason: u32,
) {
    on_call_event(
        envoy,
        f,
        "http_stream_reset",
        || CallEvent::Reset(stream_id),
        // SAFETY: `envoy` is this hook's live stream.
        |a| unsafe { a.on_stream_end(envoy, Some(reason)) },
    );
}

/// A wake this stream asked for (`waker.rs`), or a `spike_async` filter's.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    envoy: FilterEnvoyPtr,
    f: FilterModulePtr,
    event_id: u64,
) {
    guard("scheduled", (), || {
        // SAFETY: Envoy passes the live filter it got from filter_new.
        match unsafe { filter(f) } {
            // SAFETY: the configuration outlives its filters.
            ModuleFilter::Failover(slot, config) => {
                slot.run(envoy, unsafe { &**config }, |filter, h| filter.on_wake(h))
            }
            // SAFETY: `envoy` is this hook's live stream.
            ModuleFilter::Async(a) => unsafe { a.on_scheduled(envoy, event_id) },
            ModuleFilter::Spike(_) | ModuleFilter::Passing => {}
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: FilterEnvoyPtr,
    _f: FilterModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: FilterEnvoyPtr,
    _f: FilterModulePtr,
) {
}

/// The bytes of a buffer Envoy lends.
///
/// # Safety
/// `b` points at `b.length` readable bytes for the lifetime the caller picks.
pub unsafe fn bytes<'a>(b: EnvoyBuffer) -> &'a [u8] {
    if b.ptr.is_null() || b.length == 0 {
        return &[];
    }
    // SAFETY: non-null, and `b.length` bytes readable for the lifetime (the caller's
    // promise).
    std::slice::from_raw_parts(b.ptr, b.length)
}

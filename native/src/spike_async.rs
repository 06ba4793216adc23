//! Spikes for what native hedging would stand on (Envoy 1.40, pinned by
//! `tests/e2e/test_native.py`), kept apart from the failover filter:
//!
//! - `wake`: a module thread wakes one stream after a delay: the stream's own
//!   scheduler, committed from that thread, runs `on_http_filter_scheduled` on the
//!   stream's worker (a hedge's timer without proxy-wasm's root tick);
//! - `stream`: a streaming callout from the request's own filter, its answer read
//!   event by event, and (`cancel`) reset by the filter once its headers came (a
//!   losing hedge cancelled without a cancel list).
//!
//! Configuration: words. `wake`: the delay in ms. `stream`: the cluster, the path,
//! and optionally `cancel`.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::abi::*;
use crate::host::{header_list, joined};

/// The event id the `wake` spike commits.
const WAKE_EVENT: u64 = 7;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wake,
    Stream,
}

pub struct FilterConfig {
    kind: Kind,
    words: Vec<String>,
}

impl FilterConfig {
    /// `None` when `name` is not one of these spikes.
    pub fn new(name: &[u8], config: &[u8]) -> Option<Self> {
        let kind = match name {
            b"wake" => Kind::Wake,
            b"stream" => Kind::Stream,
            _ => return None,
        };
        let words = String::from_utf8_lossy(config)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Some(FilterConfig { kind, words })
    }
}

/// Envoy's per-stream scheduler, shared with the waking thread until the filter
/// deletes it (after which the thread finds `None` and commits nothing).
struct Shared(Mutex<Option<SendPtr>>);

struct SendPtr(SchedulerPtr);

// SAFETY: a stream's scheduler exists to be committed from other threads (the ABI:
// "commit: safe from any thread"); the mutex keeps commit and delete apart.
unsafe impl Send for SendPtr {}

pub struct Filter {
    kind: Kind,
    words: Vec<String>,
    wake: Option<(Arc<Shared>, Instant, ThreadId)>,
    status: Vec<u8>,
    body: Vec<u8>,
    answered: bool,
    /// This filter is resetting its own call (`cancel`).
    cancelling: bool,
}

impl Filter {
    pub fn new(config: &FilterConfig) -> Self {
        Filter {
            kind: config.kind,
            words: config.words.clone(),
            wake: None,
            status: Vec::new(),
            body: Vec::new(),
            answered: false,
            cancelling: false,
        }
    }

    fn word(&self, i: usize, default: &str) -> String {
        self.words
            .get(i)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    /// # Safety
    /// `envoy` is the live filter of the hook calling this.
    pub unsafe fn on_request_headers(&mut self, envoy: FilterEnvoyPtr) -> HeadersStatus {
        match self.kind {
            Kind::Wake => {
                // SAFETY: `envoy` is live (the caller's promise), and this is its worker.
                let scheduler = envoy_dynamic_module_callback_http_filter_scheduler_new(envoy);
                if scheduler.is_null() {
                    crate::log_line(LogLevel::Warn, "spike: Envoy gave no stream scheduler");
                    return HeadersStatus::Continue;
                }
                // Taken before the thread starts its wait, so the measured wait is never short.
                let started = Instant::now();
                let shared = Arc::new(Shared(Mutex::new(Some(SendPtr(scheduler)))));
                let delay = self.word(0, "100").parse().unwrap_or(100);
                let theirs = Arc::clone(&shared);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(delay));
                    if let Ok(held) = theirs.0.lock() {
                        if let Some(s) = &*held {
                            // SAFETY: not deleted while the lock is held (Drop takes it).
                            unsafe {
                                envoy_dynamic_module_callback_http_filter_scheduler_commit(
                                    s.0, WAKE_EVENT,
                                )
                            };
                        }
                    }
                });
                self.wake = Some((shared, started, std::thread::current().id()));
                HeadersStatus::StopIteration
            }
            Kind::Stream => {
                let (cluster, path) = (self.word(0, "a"), self.word(1, "/"));
                let pairs = [
                    (":method", "GET"),
                    (":path", path.as_str()),
                    (":authority", "spike"),
                ];
                let headers: Vec<ModuleHeader> = pairs
                    .iter()
                    .map(|(k, v)| ModuleHeader::of(k.as_bytes(), v.as_bytes()))
                    .collect();
                let mut id = 0u64;
                // SAFETY: `envoy` is live (the caller's promise); `id` is ours, and the
                // cluster, headers and body outlive the call.
                let result = envoy_dynamic_module_callback_http_filter_start_http_stream(
                    envoy,
                    &mut id,
                    ModuleBuffer::of(cluster.as_bytes()),
                    headers.as_ptr(),
                    headers.len(),
                    ModuleBuffer::of(b""),
                    true,
                    5_000,
                );
                if result != 0 {
                    // SAFETY: `envoy` is live (the caller's promise).
                    self.reply(envoy, 502, &[("x-callout-init", &result.to_string())], b"");
                }
                // The call's hooks name it by id: nothing to keep.
                HeadersStatus::StopIteration
            }
        }
    }

    /// The request body meanwhile: held with its headers (a body hook answering
    /// Continue would let the held headers go on).
    pub fn on_request_body(&self) -> BodyStatus {
        BodyStatus::StopIterationAndBuffer
    }

    /// # Safety
    /// `envoy` is the live filter of the hook calling this.
    pub unsafe fn on_scheduled(&mut self, envoy: FilterEnvoyPtr, event_id: u64) {
        let Some((_, started, thread)) = &self.wake else {
            return;
        };
        let after = started.elapsed().as_millis().to_string();
        let same = if std::thread::current().id() == *thread {
            "1"
        } else {
            "0"
        };
        let event = event_id.to_string();
        // SAFETY: `envoy` is live (the caller's promise).
        self.reply(
            envoy,
            200,
            &[
                ("x-woke-event", &event),
                ("x-woke-after-ms", &after),
                ("x-same-thread", same),
            ],
            b"",
        );
    }

    /// # Safety
    /// `envoy` is the live filter of the hook calling this; Envoy lends `headers`.
    pub unsafe fn on_stream_headers(
        &mut self,
        envoy: FilterEnvoyPtr,
        stream_id: u64,
        headers: *const EnvoyHeader,
        size: usize,
    ) {
        // SAFETY: Envoy lends `headers` for this hook (the caller's promise).
        self.status = header_list(headers, size)
            .into_iter()
            .find(|(k, _)| k == ":status")
            .map(|(_, v)| v)
            .unwrap_or_default();
        if self.words.get(2).map(String::as_str) == Some("cancel") {
            self.cancelling = true;
            // SAFETY: `envoy` is live and `stream_id` is its call, not yet ended (this
            // is the call's headers hook). Its reset hook runs inside this call.
            envoy_dynamic_module_callback_http_filter_reset_http_stream(envoy, stream_id);
            let status = String::from_utf8_lossy(&self.status).into_owned();
            // SAFETY: `envoy` is live (the caller's promise).
            self.reply(
                envoy,
                200,
                &[("x-callout-status", &status), ("x-cancelled", "1")],
                b"",
            );
        }
    }

    /// # Safety
    /// Envoy lends `data` for the hook.
    pub unsafe fn on_stream_data(&mut self, data: *const EnvoyBuffer, count: usize) {
        // SAFETY: Envoy lends the chunks for this hook (the caller's promise).
        self.body.extend(joined(data, count));
    }

    /// # Safety
    /// `envoy` is the live filter of the hook calling this.
    pub unsafe fn on_stream_end(&mut self, envoy: FilterEnvoyPtr, reset: Option<u32>) {
        if let Some(reason) = reset {
            let inline = if self.cancelling {
                ", inside our own reset"
            } else {
                ""
            };
            crate::log_line(
                LogLevel::Info,
                &format!("spike: http stream reset hook, reason {reason}{inline}"),
            );
        }
        if self.cancelling {
            return;
        }
        let status = String::from_utf8_lossy(&self.status).into_owned();
        let body = std::mem::take(&mut self.body);
        // SAFETY: `envoy` is live (the caller's promise).
        match reset {
            None => self.reply(envoy, 200, &[("x-callout-status", &status)], &body),
            Some(r) => self.reply(envoy, 502, &[("x-callout-reset", &r.to_string())], b""),
        }
    }

    /// A local reply, once.
    ///
    /// # Safety
    /// `envoy` is the live filter of the hook calling this.
    unsafe fn reply(
        &mut self,
        envoy: FilterEnvoyPtr,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        if std::mem::replace(&mut self.answered, true) {
            return;
        }
        let list: Vec<ModuleHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHeader::of(k.as_bytes(), v.as_bytes()))
            .collect();
        // SAFETY: `envoy` is live (the caller's promise); the headers and body outlive
        // the call.
        envoy_dynamic_module_callback_http_send_response(
            envoy,
            status,
            list.as_ptr(),
            list.len(),
            ModuleBuffer::of(body),
            ModuleBuffer::of(b"spike"),
        );
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Some((shared, _, _)) = &self.wake {
            if let Ok(mut held) = shared.0.lock() {
                if let Some(s) = held.take() {
                    // SAFETY: made by scheduler_new for this filter; deleted once, and
                    // the waking thread can no longer reach it.
                    unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(s.0) };
                }
            }
        }
    }
}

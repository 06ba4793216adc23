//! The spike issue 18 asks for first: a filter that reads one request header and
//! sets one response header, to measure what a native filter costs over plain
//! Envoy (`make bench`, row native-spike).

use crate::abi::*;

/// What the spike filter does, by its `filter_name`.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// Reads `:path`, sets a response header.
    #[default]
    Spike,
    /// Nothing: Envoy's own cost of a native filter.
    Noop,
    /// Sets filter state `llm_failover_next` to its configuration's first then second
    /// word (`ca cb`), to see whether a second set replaces the first and what the
    /// route's matcher and the access log read.
    State,
    /// As an upstream filter: turns every answer into the route's retry status and
    /// names its configuration's first word as the next attempt's cluster, to see
    /// whether the router's retry follows filter state an upstream filter set.
    Retry,
}

pub struct FilterConfig {
    kind: Kind,
    words: Vec<Vec<u8>>,
}

impl FilterConfig {
    pub fn new(name: &[u8], config: &[u8]) -> Result<Self, String> {
        let kind = match name {
            b"noop" => Kind::Noop,
            b"state" => Kind::State,
            b"retry" => Kind::Retry,
            _ => Kind::Spike,
        };
        let words = config
            .split(|b| *b == b' ')
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        Ok(FilterConfig { kind, words })
    }
}

#[derive(Default)]
pub struct Filter {
    kind: Kind,
    words: Vec<Vec<u8>>,
    path_len: usize,
}

impl Filter {
    pub fn new(config: &FilterConfig) -> Self {
        Filter {
            kind: config.kind,
            words: config.words.clone(),
            path_len: 0,
        }
    }

    /// # Safety
    /// `envoy` is the live filter of the hook calling this.
    unsafe fn set_state(&self, envoy: FilterEnvoyPtr) {
        for word in &self.words {
            // SAFETY: `envoy` is live (the caller's promise); both buffers live for the call.
            let ok = envoy_dynamic_module_callback_http_set_filter_state_bytes(
                envoy,
                ModuleBuffer::of(b"llm_failover_next"),
                ModuleBuffer::of(word),
            );
            crate::log_line(
                LogLevel::Info,
                &format!(
                    "spike: set llm_failover_next={} -> {ok}",
                    String::from_utf8_lossy(word)
                ),
            );
        }
    }

    /// # Safety
    /// `envoy` is the live filter of the hook calling this.
    pub unsafe fn on_request_headers(
        &mut self,
        envoy: FilterEnvoyPtr,
        _end: bool,
    ) -> HeadersStatus {
        match self.kind {
            Kind::Noop | Kind::Retry => return HeadersStatus::Continue,
            Kind::State => {
                // SAFETY: `envoy` is live (the caller's promise).
                self.set_state(envoy);
                // The route (and its cluster) was picked before this filter ran.
                envoy_dynamic_module_callback_http_clear_route_cluster_cache(envoy);
                return HeadersStatus::Continue;
            }
            Kind::Spike => {}
        }
        let mut value = EnvoyBuffer::EMPTY;
        let mut count = 0usize;
        // SAFETY: `envoy` is live (the caller's promise); `value` and `count` are ours.
        let found = envoy_dynamic_module_callback_http_get_header(
            envoy,
            HeaderType::RequestHeader,
            ModuleBuffer::of(b":path"),
            &mut value,
            0,
            &mut count,
        );
        if found {
            self.path_len = value.length;
        }
        HeadersStatus::Continue
    }

    /// # Safety
    /// `envoy` is the live filter of the hook calling this.
    pub unsafe fn on_response_headers(
        &mut self,
        envoy: FilterEnvoyPtr,
        _end: bool,
    ) -> HeadersStatus {
        match self.kind {
            Kind::Noop => return HeadersStatus::Continue,
            Kind::Retry => {
                // SAFETY: `envoy` is live (the caller's promise); buffers live for the calls.
                self.set_state(envoy);
                envoy_dynamic_module_callback_http_set_header(
                    envoy,
                    HeaderType::ResponseHeader,
                    ModuleBuffer::of(b":status"),
                    ModuleBuffer::of(b"591"),
                );
                return HeadersStatus::Continue;
            }
            Kind::State => {
                let mut value = EnvoyBuffer::EMPTY;
                // SAFETY: `envoy` is live (the caller's promise); `value` is ours, and what
                // Envoy lends in it is copied before the next call.
                let found = envoy_dynamic_module_callback_http_get_filter_state_bytes(
                    envoy,
                    ModuleBuffer::of(b"llm_failover_next"),
                    &mut value,
                );
                let read: Vec<u8> = if found {
                    crate::hooks::bytes(value).to_vec()
                } else {
                    b"none".to_vec()
                };
                envoy_dynamic_module_callback_http_set_header(
                    envoy,
                    HeaderType::ResponseHeader,
                    ModuleBuffer::of(b"x-state"),
                    ModuleBuffer::of(&read),
                );
                return HeadersStatus::Continue;
            }
            Kind::Spike => {}
        }
        let seen: &[u8] = if self.path_len > 0 { b"1" } else { b"0" };
        // SAFETY: `envoy` is live (the caller's promise).
        envoy_dynamic_module_callback_http_set_header(
            envoy,
            HeaderType::ResponseHeader,
            ModuleBuffer::of(b"x-llm-failover-native"),
            ModuleBuffer::of(seen),
        );
        HeadersStatus::Continue
    }
}

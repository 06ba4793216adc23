//! The floors llm-failover is measured against in `make bench`.
//!
//! With no configuration this filter does nothing: every callback continues, the
//! cost any wasm filter pays. With configuration `"routing"` or `"rewrite"` it makes
//! exactly the host calls that llm-failover's contract requires on the normal path,
//! with no logic at all, so the bench shows how much of the filter's cost is the
//! proxy-wasm ABI itself:
//!
//! - `routing`: read one shared-data record (the provider's health), set the cluster
//!   header, read and set `:path` (path override keeping the query), read `:status`,
//!   set `x-llm-provider`.
//! - `rewrite`: the same, but all request headers read in one call (the copy kept for
//!   failover), `content-length` removed, the body buffered, read whole and written
//!   back whole (the model rewrite).

use proxy_wasm::hostcalls as host;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Nothing,
    Routing,
    Rewrite,
}

struct Floor(Mode);

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.0 == Mode::Nothing {
            return Action::Continue;
        }
        let _ = host::get_shared_data("llm_failover.health.v1|up|");
        if self.0 == Mode::Rewrite {
            let _ = host::get_map_bytes(MapType::HttpRequestHeaders);
            let _ = host::remove_map_value(MapType::HttpRequestHeaders, "content-length");
        } else {
            let _ = host::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        }
        let _ = host::set_map_value(
            MapType::HttpRequestHeaders,
            "x-llm-failover-cluster",
            Some("up"),
        );
        let _ = host::set_map_value(
            MapType::HttpRequestHeaders,
            ":path",
            Some("/v1/chat/completions"),
        );
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.0 != Mode::Rewrite {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Ok(Some(body)) = host::get_buffer(BufferType::HttpRequestBody, 0, size) {
            let _ = host::set_buffer(BufferType::HttpRequestBody, 0, size, &body);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.0 != Mode::Nothing {
            let _ = host::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
            let _ = host::set_map_value(MapType::HttpResponseHeaders, "x-llm-provider", Some("up"));
        }
        Action::Continue
    }
}

#[derive(Default)]
struct Root(Option<Mode>);

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = host::get_buffer(BufferType::PluginConfiguration, 0, 64)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.0 = match config.as_slice() {
            b"" => Some(Mode::Nothing),
            b"routing" => Some(Mode::Routing),
            b"rewrite" => Some(Mode::Rewrite),
            _ => None,
        };
        self.0.is_some()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor(self.0.unwrap_or(Mode::Nothing))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::<Root>::default() });
}}

//! proxy-wasm's callbacks, each mapped to the core's handler with the proxy-wasm
//! host: a callback passes its inputs on and maps the `Action` back. No decisions
//! here.

use llm_failover_core::contexts::root::{HttpFilter, Root};
use llm_failover_core::host::Action as CoreAction;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::wasm_host::WasmHost;

fn action(a: CoreAction) -> Action {
    match a {
        CoreAction::Continue => Action::Continue,
        CoreAction::Pause => Action::Pause,
    }
}

#[derive(Default)]
pub struct RootAdapter(Root);

impl Context for RootAdapter {
    fn on_http_call_response(&mut self, token: u32, _: usize, size: usize, _: usize) {
        self.0.on_call_response(&mut WasmHost, token, size);
    }
}

impl RootContext for RootAdapter {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.0.on_configure(&mut WasmHost)
    }

    fn on_tick(&mut self) {
        self.0.on_tick(&mut WasmHost);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FilterAdapter(self.0.new_filter(context_id)?)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A request's filter on the listener, or an attempt's on a provider cluster.
pub struct FilterAdapter(HttpFilter);

impl Context for FilterAdapter {
    fn on_http_call_response(&mut self, token: u32, _: usize, size: usize, _: usize) {
        self.0.on_call_response(&mut WasmHost, token, size);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done(&mut WasmHost)
    }
}

impl HttpContext for FilterAdapter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-panic")]
        #[allow(clippy::panic)]
        if self.0.is_downstream()
            && llm_failover_core::host::Host::request_header(&WasmHost, "x-llm-failover-test-panic")
                .is_some()
        {
            panic!("x-llm-failover-test-panic asked for a panic");
        }
        action(self.0.on_request_headers(&mut WasmHost, end_of_stream))
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_body(&mut WasmHost, size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&mut WasmHost, end_of_stream))
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_body(&mut WasmHost, size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.0.on_response_trailers(&mut WasmHost))
    }

    fn on_log(&mut self) {
        self.0.on_log(&mut WasmHost);
    }
}

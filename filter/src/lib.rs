//! llm-failover as a proxy-wasm filter for Envoy: the core's contexts
//! (`llm_failover_core::contexts`) behind proxy-wasm's callbacks, with the
//! proxy-wasm host (`wasm_host.rs`). Everything the filter decides is in the core
//! crate, tested there through an in-memory host; this crate only adapts.

pub mod adapters;
pub mod wasm_host;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    wasm_host::install_panic_hook();
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::<adapters::RootAdapter>::default()
    });
}}

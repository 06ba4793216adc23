//! The failover filter natively: the core's contexts behind Envoy's hooks.
//!
//! - The configuration is validated when Envoy creates it (main thread), with the
//!   core's parser, so a broken one is refused at load with the wasm build's message.
//! - Each worker thread gets its own core `Root` per configuration (the core's
//!   contexts are single-threaded, as a wasm VM is): built at the first request the
//!   worker sees.
//! - A hook may run while another hook of the same filter is on the stack (Envoy
//!   completes a stream inline, e.g. during a local reply): the filter is then busy,
//!   and the completion runs when the outer hook returns.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use llm_failover_core::config::Config;
use llm_failover_core::contexts::root::{HttpFilter, Root};
use llm_failover_core::host::Action;

use crate::abi::{ConfigEnvoyPtr, FilterEnvoyPtr};
use crate::host::NativeHost;
use crate::metrics::{Families, Registry};

/// A configuration Envoy created: the filter's name (`llm_failover` downstream,
/// `llm_failover_upstream` on the provider clusters) and the plugin configuration.
pub struct FailoverConfig {
    id: usize,
    name: Vec<u8>,
    raw: Vec<u8>,
    families: Families,
}

impl FailoverConfig {
    /// Refuses what the core's parser refuses, with its message.
    pub fn new(envoy: ConfigEnvoyPtr, name: &[u8], raw: &[u8]) -> Result<Self, String> {
        let config =
            Config::parse(raw, &|var| std::env::var(var).ok()).map_err(|e| e.to_string())?;
        config.check_native().map_err(|e| e.to_string())?;
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        Ok(FailoverConfig {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            name: name.to_vec(),
            raw: raw.to_vec(),
            families: Families::define(envoy),
        })
    }
}

thread_local! {
    /// This worker's roots, by configuration id.
    static ROOTS: RefCell<Vec<(usize, Root, Rc<Registry>)>> = const { RefCell::new(Vec::new()) };
    /// This worker's request counter (the core's context ids).
    static CONTEXTS: Cell<u32> = const { Cell::new(0) };
}

/// One stream's filter, and whether a hook of it is running.
pub struct Slot {
    filter: HttpFilter,
    registry: Rc<Registry>,
    busy: bool,
    completed: bool,
}

impl Slot {
    /// The filter for a new stream of `config` on this worker; `None` if the
    /// configuration cannot be applied here (logged).
    pub fn new(config: &FailoverConfig) -> Option<Slot> {
        let context = CONTEXTS.with(|c| {
            let next = c.get().wrapping_add(1);
            c.set(next);
            next
        });
        let (filter, registry) = ROOTS.with(|roots| {
            let mut roots = roots.borrow_mut();
            if !roots.iter().any(|(id, _, _)| *id == config.id) {
                let mut root = Root::default();
                let mut host = NativeHost::configuring(&config.name, &config.raw);
                if !root.on_configure(&mut host) {
                    return None;
                }
                roots.push((config.id, root, Rc::default()));
            }
            roots
                .iter()
                .find(|(id, _, _)| *id == config.id)
                .and_then(|(_, root, registry)| {
                    Some((root.new_filter(context)?, Rc::clone(registry)))
                })
        })?;
        Some(Slot {
            filter,
            registry,
            busy: false,
            completed: false,
        })
    }

    /// Runs `f` on the filter with the stream's host; a completion Envoy asked for
    /// meanwhile runs after it.
    pub fn run<T>(
        &mut self,
        envoy: FilterEnvoyPtr,
        config: &FailoverConfig,
        f: impl FnOnce(&mut HttpFilter, &mut NativeHost<'_>) -> T,
    ) -> T {
        self.busy = true;
        let registry = Rc::clone(&self.registry);
        let mut host =
            NativeHost::stream(envoy, &config.name).with_metrics(&config.families, &registry);
        let out = f(&mut self.filter, &mut host);
        self.busy = false;
        if self.completed {
            self.finish(&mut host);
        }
        out
    }

    /// The stream is complete: the request's log and the attempt's end.
    pub fn complete(&mut self, envoy: FilterEnvoyPtr, config: &FailoverConfig) {
        self.completed = true;
        if !self.busy {
            let registry = Rc::clone(&self.registry);
            let mut host =
                NativeHost::stream(envoy, &config.name).with_metrics(&config.families, &registry);
            self.finish(&mut host);
        }
    }

    fn finish(&mut self, host: &mut NativeHost<'_>) {
        self.completed = false;
        self.filter.on_log(host);
        self.filter.on_done(host);
    }
}

/// Whether the core's answer holds the stream.
pub fn holds(action: Action) -> bool {
    action == Action::Pause
}

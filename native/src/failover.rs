//! The failover filter natively: the core's contexts behind Envoy's hooks.
//!
//! - The configuration is validated when Envoy creates it (main thread), with the
//!   core's parser, so a broken one is refused at load with the wasm build's message.
//! - Each worker thread gets its own core `Root` per configuration (the core's
//!   contexts are single-threaded, as a wasm VM is): built at the first request the
//!   worker sees.
//! - A downstream configuration also has a root on the main thread, ticked by
//!   `ticker.rs`: the health gauges and background probes (the periodic work each
//!   wasm VM does on its tick, done once per process here).
//! - A hook may run while another hook of the same filter is on the stack (Envoy
//!   completes a stream inline, e.g. during a local reply): the filter is then busy,
//!   and the completion runs when the outer hook returns.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_failover_core::config::Config;
use llm_failover_core::contexts::root::{HttpFilter, Root};
use llm_failover_core::host::{Action, HeaderList, Host};

use crate::abi::{ConfigEnvoyPtr, FilterEnvoyPtr};
use crate::host::NativeHost;
use crate::metrics::{self, Families, Registry};
use crate::ticker::Ticker;
use crate::waker::{self, Wake};

/// The upstream instance's filter name (the downstream one is `llm_failover`).
const UPSTREAM_NAME: &[u8] = b"llm_failover_upstream";

/// A configuration Envoy created: the filter's name (`llm_failover` downstream,
/// `llm_failover_upstream` on the provider clusters) and the plugin configuration.
pub struct FailoverConfig {
    /// First, so that it is dropped first: no tick reaches the root being dropped.
    main: Option<Main>,
    id: usize,
    name: Vec<u8>,
    raw: Vec<u8>,
    families: Families,
}

/// A downstream configuration's root on the main thread and what ticks it.
struct Main {
    /// Held for its Drop, which stops the thread before the root goes.
    _ticker: Option<Ticker>,
    root: RefCell<Root>,
    registry: Registry,
    /// Calls answered while the root was busy (Envoy may answer a failed call
    /// inline, inside the tick that sent it): handled when the tick returns.
    late: RefCell<Vec<(u32, HeaderList, Vec<u8>)>>,
}

impl FailoverConfig {
    /// Refuses what the core's parser refuses, with its message.
    pub fn new(envoy: ConfigEnvoyPtr, name: &[u8], raw: &[u8]) -> Result<Self, String> {
        if raw.is_empty() {
            return Err(llm_failover_core::config::EMPTY_CONFIGURATION.to_string());
        }
        Config::parse(raw, &|var| std::env::var(var).ok()).map_err(|e| e.to_string())?;
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let upstream = name == UPSTREAM_NAME;
        Ok(FailoverConfig {
            main: if upstream {
                None
            } else {
                Some(Main::start(envoy, name, raw)?)
            },
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            name: name.to_vec(),
            raw: raw.to_vec(),
            // An upstream configuration's stats would be its cluster's: the downstream
            // filter records its counts (metrics.rs).
            families: if upstream {
                Families::default()
            } else {
                Families::define(envoy)
            },
        })
    }

    /// A tick of the main thread's root (`on_http_filter_config_scheduled`).
    pub fn tick(&self, envoy: ConfigEnvoyPtr) {
        let Some(main) = &self.main else { return };
        let mut host = NativeHost::configuring(envoy, &self.name, &self.raw)
            .with_metrics(&self.families, &main.registry);
        if let Ok(mut root) = main.root.try_borrow_mut() {
            root.on_tick(&mut host);
        }
        let late = std::mem::take(&mut *main.late.borrow_mut());
        for (token, headers, body) in late {
            self.answered(envoy, token, headers, body);
        }
    }

    /// The answer to a call the main thread's root sent (a background probe).
    pub fn answered(&self, envoy: ConfigEnvoyPtr, token: u32, headers: HeaderList, body: Vec<u8>) {
        let Some(main) = &self.main else { return };
        let Ok(mut root) = main.root.try_borrow_mut() else {
            main.late.borrow_mut().push((token, headers, body));
            return;
        };
        let mut host = NativeHost::configuring(envoy, &self.name, &self.raw)
            .with_metrics(&self.families, &main.registry);
        let size = body.len();
        host.set_call(headers, body);
        root.on_call_response(&mut host, token, size);
    }
}

impl Main {
    /// The main thread's root, configured now (so a configuration the core refuses
    /// is refused at load), and its ticker when the core asks for a tick.
    fn start(envoy: ConfigEnvoyPtr, name: &[u8], raw: &[u8]) -> Result<Main, String> {
        let mut root = Root::default();
        let mut host = NativeHost::configuring(envoy, name, raw);
        if !root.on_configure(&mut host) {
            return Err("llm-failover: the configuration was refused (see the line above)".into());
        }
        let ticker = match host.tick_ms() {
            0 => None,
            period => Ticker::start(envoy, period),
        };
        Ok(Main {
            _ticker: ticker,
            root: RefCell::new(root),
            registry: Registry::default(),
            late: RefCell::default(),
        })
    }
}

thread_local! {
    /// This worker's roots, by configuration id.
    static ROOTS: RefCell<Vec<(usize, Root, Rc<Registry>)>> = const { RefCell::new(Vec::new()) };
    /// This worker's request counter (the core's context ids).
    static CONTEXTS: Cell<u32> = const { Cell::new(0) };
}

/// What Envoy says of a streaming call the stream's filter sent (a hedge), copied
/// out of the hook that said it.
pub enum CallEvent {
    Headers(u64, HeaderList),
    Data(u64, Vec<u8>),
    Complete(u64),
    Reset(u64),
}

/// One stream's filter, and whether a hook of it is running.
pub struct Slot {
    filter: HttpFilter,
    registry: Rc<Registry>,
    /// The core's id of this stream's request.
    context: u32,
    busy: bool,
    completed: bool,
    /// Call events that came while a hook ran (Envoy may answer or reset a call
    /// inside the call that started or reset it): handled when the hook is done.
    pending: VecDeque<CallEvent>,
    /// The answers of this stream's calls so far: their headers and body.
    calls: Vec<(u64, HeaderList, Vec<u8>)>,
    /// The calls this filter reset: their reset is no answer.
    cancelled: Vec<u64>,
    /// This stream's scheduler, made at its first wake (`waker.rs`).
    wake: Option<Arc<Wake>>,
}

impl Slot {
    /// The filter for a new stream of `config` on this worker; `None` if the
    /// configuration cannot be applied here (logged).
    pub fn new(config: &FailoverConfig) -> Option<Slot> {
        let context = CONTEXTS.with(|c| {
            // Never 0: the host takes 0 for "no request".
            let next = c.get().wrapping_add(1).max(1);
            c.set(next);
            next
        });
        let (filter, registry) = ROOTS.with(|roots| {
            let mut roots = roots.borrow_mut();
            if !roots.iter().any(|(id, _, _)| *id == config.id) {
                let mut root = Root::default();
                let mut host =
                    NativeHost::configuring(std::ptr::null_mut(), &config.name, &config.raw);
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
            context,
            busy: false,
            completed: false,
            pending: VecDeque::new(),
            calls: Vec::new(),
            cancelled: Vec::new(),
            wake: None,
        })
    }

    /// Runs `f` on the filter with the stream's host; then what Envoy did meanwhile
    /// (call events, the stream's completion) and what the core asked for (a wake).
    pub fn run<T>(
        &mut self,
        envoy: FilterEnvoyPtr,
        config: &FailoverConfig,
        f: impl FnOnce(&mut HttpFilter, &mut NativeHost<'_>) -> T,
    ) -> T {
        self.busy = true;
        let registry = Rc::clone(&self.registry);
        let mut host = NativeHost::stream(envoy, &config.name)
            .with_metrics(&config.families, &registry)
            .for_context(self.context);
        let out = f(&mut self.filter, &mut host);
        loop {
            self.settle(envoy, &mut host);
            if let Some(event) = self.pending.pop_front() {
                self.deliver(&mut host, event);
            } else if std::mem::take(&mut self.completed) {
                self.filter.on_log(&mut host);
                self.filter.on_done(&mut host);
            } else {
                break;
            }
        }
        self.busy = false;
        // The upstream filters' counts since this worker's last downstream hook.
        metrics::flush(&config.families, envoy);
        out
    }

    /// The stream is complete: the request's log and the attempt's end.
    pub fn complete(&mut self, envoy: FilterEnvoyPtr, config: &FailoverConfig) {
        self.completed = true;
        if !self.busy {
            self.run(envoy, config, |_, _| ());
        }
    }

    /// An event of a call this stream sent.
    pub fn call_event(&mut self, envoy: FilterEnvoyPtr, config: &FailoverConfig, e: CallEvent) {
        self.pending.push_back(e);
        if !self.busy {
            self.run(envoy, config, |_, _| ());
        }
    }

    /// What the hook's host gathered: the calls it cancelled and the wake it asked for.
    fn settle(&mut self, envoy: FilterEnvoyPtr, host: &mut NativeHost<'_>) {
        let cancelled = host.take_cancelled();
        if !cancelled.is_empty() {
            self.calls.retain(|(id, _, _)| !cancelled.contains(id));
            self.cancelled.extend(cancelled);
        }
        let Some(at_ms) = host.take_wake() else {
            return;
        };
        if self.wake.is_none() {
            // SAFETY: `envoy` is the live stream of the hook running, on its worker.
            self.wake = unsafe { Wake::new(envoy) };
        }
        let at = Instant::now() + Duration::from_millis(at_ms.saturating_sub(host.now_ms()));
        if !self.wake.as_ref().is_some_and(|w| waker::schedule(w, at)) {
            log::warn!("llm-failover: cannot wake this request at hedgeAfter; it is not hedged");
        }
    }

    /// A call event, to the core once the call's answer is whole (or gone).
    fn deliver(&mut self, host: &mut NativeHost<'_>, event: CallEvent) {
        let id = match &event {
            CallEvent::Headers(id, _)
            | CallEvent::Data(id, _)
            | CallEvent::Complete(id)
            | CallEvent::Reset(id) => *id,
        };
        if let Some(at) = self.cancelled.iter().position(|c| *c == id) {
            if matches!(event, CallEvent::Complete(_) | CallEvent::Reset(_)) {
                self.cancelled.swap_remove(at);
            }
            return;
        }
        let at = self.calls.iter().position(|(c, _, _)| *c == id);
        match (event, at) {
            (CallEvent::Headers(_, headers), Some(at)) => self.calls[at].1 = headers,
            (CallEvent::Headers(_, headers), None) => self.calls.push((id, headers, Vec::new())),
            (CallEvent::Data(_, data), Some(at)) => self.calls[at].2.extend_from_slice(&data),
            (CallEvent::Data(_, data), None) => self.calls.push((id, Vec::new(), data)),
            (ended, at) => {
                let answer = at.map(|at| self.calls.swap_remove(at));
                // A reset call has no answer, even if its headers came (the body
                // broke off): no headers, as a failed call with proxy-wasm.
                let (headers, body) = match (ended, answer) {
                    (CallEvent::Complete(_), Some((_, headers, body))) => (headers, body),
                    _ => (Vec::new(), Vec::new()),
                };
                let token = u32::try_from(id).unwrap_or(u32::MAX);
                let size = body.len();
                host.set_call(headers, body);
                self.filter.on_call_response(host, token, size);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(wake) = &self.wake {
            // The stream ends: its scheduler goes now, on its own worker.
            waker::forget(wake);
        }
    }
}

/// Whether the core's answer holds the stream.
pub fn holds(action: Action) -> bool {
    action == Action::Pause
}

//! The configuration's tick natively. The ABI has no timer: a module thread waits
//! out the period and commits an event to the configuration's scheduler, and Envoy
//! runs `on_http_filter_config_scheduled` on the main thread, where the
//! configuration's own root refreshes the health gauges and sends background
//! probes (proxy-wasm's `on_tick`, once per process instead of once per worker).
//!
//! The configuration pointer is Envoy's, passed on from `config_new` by the ABI's
//! contract.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::abi::*;

/// The event id of a tick (the only event this module schedules).
pub const TICK_EVENT: u64 = 1;

/// Envoy's scheduler, moved to the ticking thread.
struct Scheduler(SchedulerPtr);

// SAFETY: Envoy's configuration scheduler exists to be committed from other threads
// (the ABI: "commit from any thread" posts to the main thread); it is deleted only
// after the thread has been joined.
unsafe impl Send for Scheduler {}

/// A running tick; dropping it stops the thread, then deletes the scheduler.
pub struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    scheduler: SchedulerPtr,
}

impl Ticker {
    /// Ticks `config` every `period_ms`; `None` (logged) if Envoy gives no
    /// scheduler or no thread can be started.
    pub fn start(config: ConfigEnvoyPtr, period_ms: u64) -> Option<Ticker> {
        // SAFETY: `config` is the configuration Envoy is creating (main thread).
        let scheduler =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        if scheduler.is_null() {
            log::error!("llm-failover: Envoy gave no scheduler; no health gauges or probes");
            return None;
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (theirs, sched) = (Arc::clone(&stop), Scheduler(scheduler));
        let spawned = std::thread::Builder::new()
            .name("llm-failover-tick".to_string())
            .spawn(move || run(&theirs, &sched, period_ms));
        match spawned {
            Ok(thread) => Some(Ticker {
                stop,
                thread: Some(thread),
                scheduler,
            }),
            Err(e) => {
                log::error!("llm-failover: cannot start the tick thread: {e}");
                // SAFETY: made above, never committed, deleted once.
                unsafe {
                    envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler)
                };
                None
            }
        }
    }
}

/// Commits a tick every `period_ms` until told to stop.
fn run(stop: &(Mutex<bool>, Condvar), scheduler: &Scheduler, period_ms: u64) {
    let (lock, wake) = stop;
    let Ok(mut stopped) = lock.lock() else { return };
    loop {
        // An early wake-up only makes an early tick, which the root tolerates.
        let Ok((guard, _)) = wake.wait_timeout(stopped, Duration::from_millis(period_ms)) else {
            return;
        };
        stopped = guard;
        if *stopped {
            return;
        }
        // SAFETY: the scheduler lives until this thread has been joined (Drop).
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                scheduler.0,
                TICK_EVENT,
            )
        };
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // SAFETY: the only committer has stopped; deleted exactly once.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.scheduler)
        };
    }
}

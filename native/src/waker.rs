//! Waking one request at a time natively (a due hedge). proxy-wasm's root context
//! ticks every 10 ms and looks at every request; the ABI has no timer, but each
//! stream can have a scheduler of its own whose `commit`, from any thread, runs
//! `on_http_filter_scheduled` on the stream's worker (measured, `spike_async.rs`).
//! One module thread, started at the first wake, keeps the wakes asked for and
//! commits each when its time comes.
//!
//! A stream may end before its wake: its filter deletes the scheduler (under the
//! wake's lock) and the thread then commits nothing.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::abi::*;

/// The event id a wake commits (the only one a stream's scheduler carries).
pub const WAKE_EVENT: u64 = 1;

/// A bound on the wakes of live streams waiting: each is a request past its body and
/// short of its `hedgeAfter`; past it a wake is refused (logged by the caller) and
/// that request is not hedged.
const MAX_WAITING: usize = 65_536;

/// A stream's scheduler, shared by its filter and the waking thread until the
/// filter deletes it.
pub struct Wake(Mutex<Option<Scheduler>>);

struct Scheduler(SchedulerPtr);

// SAFETY: a stream's scheduler exists to be committed from other threads (the ABI:
// commit is safe from any thread); the wake's mutex keeps commit and delete apart.
unsafe impl Send for Scheduler {}

impl Wake {
    /// The scheduler of stream `envoy`; `None` if Envoy gives none.
    ///
    /// # Safety
    /// `envoy` is the live stream of the hook calling this, on its worker thread.
    pub unsafe fn new(envoy: FilterEnvoyPtr) -> Option<Arc<Wake>> {
        // SAFETY: `envoy` is the live stream on its worker (the caller's promise).
        let scheduler = envoy_dynamic_module_callback_http_filter_scheduler_new(envoy);
        (!scheduler.is_null()).then(|| Arc::new(Wake(Mutex::new(Some(Scheduler(scheduler))))))
    }

    fn commit(&self) {
        if let Ok(held) = self.0.lock() {
            if let Some(s) = &*held {
                // SAFETY: not deleted while the lock is held (`release` takes it).
                unsafe {
                    envoy_dynamic_module_callback_http_filter_scheduler_commit(s.0, WAKE_EVENT)
                };
            }
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        self.release();
    }
}

/// Stops a wake from being committed: the stream is ending, and its scheduler is
/// deleted now. Its entry stays in the queue until its time (or a compaction).
pub fn forget(wake: &Wake) {
    if wake.release() {
        if let Some(waker) = WAKER.get().copied().flatten() {
            waker.forgotten.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Wake {
    /// Takes the scheduler out, under the lock (so the waking thread never commits it
    /// afterwards), and deletes it; whether there was one.
    fn release(&self) -> bool {
        let held = match self.0.lock() {
            Ok(mut held) => held.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(s) = held else {
            return false;
        };
        // SAFETY: made by scheduler_new for this stream, deleted once: taken out of the
        // wake under its lock, so never committed afterwards.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(s.0) };
        true
    }

    fn is_live(&self) -> bool {
        self.0.lock().map(|held| held.is_some()).unwrap_or(false)
    }
}

/// A wake in the queue, earliest first.
struct Entry {
    at: Instant,
    seq: u64,
    wake: Arc<Wake>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

struct Waker {
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Streams that ended with a wake (maybe) still queued since the last compaction.
    forgotten: AtomicUsize,
}

static WAKER: OnceLock<Option<&'static Waker>> = OnceLock::new();

fn waker() -> Option<&'static Waker> {
    *WAKER.get_or_init(|| {
        let waker: &'static Waker = Box::leak(Box::new(Waker {
            queue: Mutex::default(),
            changed: Condvar::new(),
            forgotten: AtomicUsize::new(0),
        }));
        let spawned = std::thread::Builder::new()
            .name("llm-failover-wake".to_string())
            .spawn(move || run(waker));
        match spawned {
            Ok(_) => Some(waker),
            Err(e) => {
                log::error!("llm-failover: cannot start the wake thread: {e}; no hedges");
                None
            }
        }
    })
}

/// Has `wake` committed at `at` (or at once if that is past); false when it cannot
/// be (no thread, or too many waiting). The thread is woken only when this wake is
/// the earliest: a steady flow of requests with one `hedgeAfter` costs it nothing.
pub fn schedule(wake: &Arc<Wake>, at: Instant) -> bool {
    let Some(waker) = waker() else {
        return false;
    };
    let Ok(mut queue) = waker.queue.lock() else {
        return false;
    };
    // Most queued wakes belong to streams that ended in time (answered before their
    // hedgeAfter): dropped once they are half the queue.
    let forgotten = waker.forgotten.load(Ordering::Relaxed);
    if queue.heap.len() >= 1024 && forgotten * 2 >= queue.heap.len() {
        queue.heap.retain(|e| e.wake.is_live());
        waker.forgotten.store(0, Ordering::Relaxed);
    }
    if queue.heap.len() >= MAX_WAITING {
        return false;
    }
    let earliest = queue.heap.peek().is_none_or(|e| at < e.at);
    queue.seq = queue.seq.wrapping_add(1);
    let seq = queue.seq;
    queue.heap.push(Entry {
        at,
        seq,
        wake: Arc::clone(wake),
    });
    if earliest {
        waker.changed.notify_one();
    }
    true
}

/// The thread: commits each wake when its time comes, never while holding the queue.
fn run(waker: &Waker) {
    let Ok(mut queue) = waker.queue.lock() else {
        return;
    };
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while queue.heap.peek().is_some_and(|e| e.at <= now) {
            if let Some(e) = queue.heap.pop() {
                due.push(e.wake);
            }
        }
        if !due.is_empty() {
            drop(queue);
            for wake in due {
                wake.commit();
            }
            queue = match waker.queue.lock() {
                Ok(q) => q,
                Err(_) => return,
            };
            continue;
        }
        // Until the earliest wake, or until one earlier is queued (bounded, so a
        // missed notification costs a second at most).
        let wait = queue.heap.peek().map_or(Duration::from_secs(1), |e| {
            e.at.saturating_duration_since(now)
        });
        queue = match waker.changed.wait_timeout(queue, wait) {
            Ok((q, _)) => q,
            Err(_) => return,
        };
    }
}

//! The filter's metrics natively. Envoy's ABI defines metrics only while it creates
//! a configuration, so the families are defined there, with their labels; the
//! core's metric names (`llm_failover.requests.provider.a.status.2xx`) are read back
//! into a family and its label values when the core first uses one.
//!
//! Where they are counted: an upstream filter's configuration belongs to a provider
//! cluster, so its stats would carry `cluster.<name>.` (measured). The upstream
//! filter's counts therefore wait in a per-worker queue and the downstream filter of
//! the same worker records them, under the one name the wasm build uses; the tick's
//! gauges are set by the configuration on the main thread.
//!
//! The pointers here are Envoy's, passed on from a hook by the ABI's contract (the
//! configuration being created or ticking, the live stream).
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;

use llm_failover_core::host::MetricKind;

use crate::abi::*;

/// The families: name (Envoy's stat name), kind, label names in the order the core's
/// names give their values.
const FAMILIES: [(&str, MetricKind, &[&str]); 7] = [
    (
        "llm_failover.requests",
        MetricKind::Counter,
        &["provider", "status_class"],
    ),
    (
        "llm_failover.failovers",
        MetricKind::Counter,
        &["from", "to", "reason"],
    ),
    (
        "llm_failover.hedges",
        MetricKind::Counter,
        &["from", "to", "winner"],
    ),
    (
        "llm_failover.errors",
        MetricKind::Counter,
        &["provider", "class"],
    ),
    (
        "llm_failover.cooldowns",
        MetricKind::Counter,
        &["provider", "reason"],
    ),
    ("llm_failover.health", MetricKind::Gauge, &["provider"]),
    ("llm_failover.failover_time_ms", MetricKind::Histogram, &[]),
];

/// Envoy's ids of the families, for one configuration; none for an upstream
/// configuration, whose counts the downstream filter records.
#[derive(Default)]
pub struct Families {
    ids: Vec<Option<usize>>,
}

impl Families {
    /// Whether counts wait for the downstream filter (see the module comment).
    fn deferred(&self) -> bool {
        self.ids.is_empty()
    }

    /// Defines every family; only valid inside `on_http_filter_config_new`.
    pub fn define(config: ConfigEnvoyPtr) -> Families {
        let ids =
            FAMILIES
                .iter()
                .map(|(name, kind, labels)| {
                    let names: Vec<ModuleBuffer> = labels
                        .iter()
                        .map(|l| ModuleBuffer::of(l.as_bytes()))
                        .collect();
                    let mut id = 0usize;
                    // SAFETY: `config` is the configuration Envoy is creating; every buffer
                    // lives for the call.
                    let (name, labels) = (ModuleBuffer::of(name.as_bytes()), names.as_ptr());
                    let result =
                        unsafe {
                            match kind {
                        MetricKind::Counter => {
                            envoy_dynamic_module_callback_http_filter_config_define_counter(
                                config, name, labels, names.len(), &mut id,
                            )
                        }
                        MetricKind::Gauge => {
                            envoy_dynamic_module_callback_http_filter_config_define_gauge(
                                config, name, labels, names.len(), &mut id,
                            )
                        }
                        MetricKind::Histogram => {
                            envoy_dynamic_module_callback_http_filter_config_define_histogram(
                                config, name, labels, names.len(), &mut id,
                            )
                        }
                    }
                        };
                    (result == 0).then_some(id)
                })
                .collect();
        Families { ids }
    }
}

/// Where a value is recorded: on a live stream (Envoy's filter-level calls) or by
/// the configuration itself, outside any stream (the config-level twins).
#[derive(Clone, Copy)]
pub enum Target {
    Stream(FilterEnvoyPtr),
    Config(ConfigEnvoyPtr),
}

/// A metric the core asked for: its family and label values.
struct Metric {
    family: usize,
    kind: MetricKind,
    labels: Vec<String>,
}

/// One worker's metrics of one configuration, by the core's id (its index).
#[derive(Default)]
pub struct Registry {
    metrics: RefCell<Vec<Metric>>,
}

impl Registry {
    /// The core's id for `name`, or `None` when it is not one of the families.
    pub fn define(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let (family, fam) = FAMILIES.iter().enumerate().find(|(_, (f, k, _))| {
            *k == kind && (name == *f || name.starts_with(&format!("{f}.")))
        })?;
        let rest = name.strip_prefix(fam.0)?.trim_start_matches('.');
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').collect()
        };
        // Pairs of (segment, value): the values, in the family's label order.
        let labels: Vec<String> = parts
            .chunks(2)
            .filter_map(|p| p.get(1))
            .map(|v| v.to_string())
            .collect();
        if labels.len() != fam.2.len() {
            return None;
        }
        let mut metrics = self.metrics.borrow_mut();
        metrics.push(Metric {
            family,
            kind,
            labels,
        });
        u32::try_from(metrics.len() - 1).ok()
    }

    /// Adds `value` to metric `id` (a counter's increment, a gauge's value, a
    /// histogram's sample): now, or, for an upstream configuration, when the
    /// downstream filter of this worker next runs.
    pub fn record(&self, families: &Families, target: Target, id: u32, value: u64) {
        let metrics = self.metrics.borrow();
        let Some(m) = metrics.get(id as usize) else {
            return;
        };
        if families.deferred() {
            PENDING.with(|pending| {
                let mut pending = pending.borrow_mut();
                if pending.len() < PENDING_LIMIT {
                    pending.push(Pending {
                        family: m.family,
                        kind: m.kind,
                        labels: m.labels.clone(),
                        value,
                    });
                } else if !DROPPING.replace(true) {
                    // Said once per worker: counts are being lost, and why.
                    log::error!(
                        "llm-failover: {PENDING_LIMIT} upstream counts wait for a downstream \
                         llm_failover filter on this worker and none has run; further counts \
                         are dropped (is the upstream filter on a cluster whose routes lack \
                         the downstream one?)"
                    );
                }
            });
            return;
        }
        emit(families, target, m.family, m.kind, &m.labels, value);
    }
}

/// An upstream filter's count, waiting for a downstream filter of its worker.
struct Pending {
    family: usize,
    kind: MetricKind,
    labels: Vec<String>,
    value: u64,
}

/// Beyond this many waiting counts (an upstream filter on a route without the
/// downstream one), new ones are not kept: the queue cannot grow without bound.
const PENDING_LIMIT: usize = 4096;

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// Whether this worker has said that it drops counts.
    static DROPPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records the upstream filters' waiting counts on stream `envoy` of a downstream
/// configuration.
pub fn flush(families: &Families, envoy: FilterEnvoyPtr) {
    if families.deferred() {
        return;
    }
    let waiting = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    DROPPING.with(|d| d.set(false));
    for p in waiting {
        emit(
            families,
            Target::Stream(envoy),
            p.family,
            p.kind,
            &p.labels,
            p.value,
        );
    }
}

fn emit(
    families: &Families,
    target: Target,
    family: usize,
    kind: MetricKind,
    labels: &[String],
    value: u64,
) {
    let Some(Some(family_id)) = families.ids.get(family) else {
        return;
    };
    let values: Vec<ModuleBuffer> = labels
        .iter()
        .map(|l| ModuleBuffer::of(l.as_bytes()))
        .collect();
    let (id, ptr, len) = (*family_id, values.as_ptr(), values.len());
    // SAFETY: the target is the live stream of the hook, or the configuration whose
    // hook runs; every buffer lives for the call.
    unsafe {
        match (target, kind) {
            (Target::Stream(e), _) if e.is_null() => 0,
            (Target::Config(c), _) if c.is_null() => 0,
            (Target::Stream(e), MetricKind::Counter) => {
                envoy_dynamic_module_callback_http_filter_increment_counter(e, id, ptr, len, value)
            }
            (Target::Stream(e), MetricKind::Gauge) => {
                envoy_dynamic_module_callback_http_filter_set_gauge(e, id, ptr, len, value)
            }
            (Target::Stream(e), MetricKind::Histogram) => {
                envoy_dynamic_module_callback_http_filter_record_histogram_value(
                    e, id, ptr, len, value,
                )
            }
            (Target::Config(c), MetricKind::Counter) => {
                envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    c, id, ptr, len, value,
                )
            }
            (Target::Config(c), MetricKind::Gauge) => {
                envoy_dynamic_module_callback_http_filter_config_set_gauge(c, id, ptr, len, value)
            }
            (Target::Config(c), MetricKind::Histogram) => {
                envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                    c, id, ptr, len, value,
                )
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stand-in for one of Envoy's recording functions was given: which, id,
    /// label values, value.
    type Recorded = (&'static str, usize, Vec<String>, u64);

    thread_local! {
        static RECORDED: RefCell<Vec<Recorded>> = const { RefCell::new(Vec::new()) };
    }

    /// # Safety
    /// `values` points at `len` buffers of readable bytes.
    unsafe fn note(
        which: &'static str,
        id: usize,
        values: *const ModuleBuffer,
        len: usize,
        v: u64,
    ) -> u32 {
        // SAFETY: `values` holds `len` buffers, each `length` readable bytes (the
        // caller's promise: `emit` lends its label values for the call).
        let labels = std::slice::from_raw_parts(values, len)
            .iter()
            .map(|b| {
                String::from_utf8_lossy(std::slice::from_raw_parts(b.ptr, b.length)).into_owned()
            })
            .collect();
        RECORDED.with(|r| r.borrow_mut().push((which, id, labels, v)));
        0
    }

    /// Stand-ins for the six functions `emit` calls (Envoy's binary defines them; the
    /// test executable has none, and the compiler may take their addresses).
    macro_rules! stand_in {
        ($($name:ident($target:ty) => $which:literal;)*) => {$(
            #[no_mangle]
            unsafe extern "C" fn $name(
                _: $target,
                id: usize,
                values: *const ModuleBuffer,
                len: usize,
                v: u64,
            ) -> u32 {
                // SAFETY: called only by `emit`, with its label values lent for the call.
                note($which, id, values, len, v)
            }
        )*};
    }

    stand_in! {
        envoy_dynamic_module_callback_http_filter_increment_counter(FilterEnvoyPtr) => "counter";
        envoy_dynamic_module_callback_http_filter_set_gauge(FilterEnvoyPtr) => "gauge";
        envoy_dynamic_module_callback_http_filter_record_histogram_value(FilterEnvoyPtr) => "histogram";
        envoy_dynamic_module_callback_http_filter_config_increment_counter(ConfigEnvoyPtr) => "config counter";
        envoy_dynamic_module_callback_http_filter_config_set_gauge(ConfigEnvoyPtr) => "config gauge";
        envoy_dynamic_module_callback_http_filter_config_record_histogram_value(ConfigEnvoyPtr) => "config histogram";
    }

    /// A downstream configuration whose families got Envoy's ids 10, 11, ...
    fn downstream() -> Families {
        Families {
            ids: (0..FAMILIES.len()).map(|i| Some(10 + i)).collect(),
        }
    }

    fn stream() -> FilterEnvoyPtr {
        std::ptr::NonNull::<u8>::dangling().as_ptr().cast()
    }

    fn pending() -> usize {
        PENDING.with(|p| p.borrow().len())
    }

    #[test]
    fn a_core_metric_name_is_read_back_into_its_family_and_label_values() {
        let r = Registry::default();
        let id = r
            .define(
                MetricKind::Counter,
                "llm_failover.requests.provider.a.status.2xx",
            )
            .unwrap();
        let metrics = r.metrics.borrow();
        let m = &metrics[id as usize];
        assert_eq!(
            (m.family, m.labels.clone()),
            (0, vec!["a".into(), "2xx".into()])
        );
    }

    #[test]
    fn a_name_of_no_family_or_with_the_wrong_labels_is_not_defined() {
        let r = Registry::default();
        assert_eq!(
            r.define(MetricKind::Counter, "llm_failover.other.provider.a"),
            None
        );
        // A family's name with a label too few, or of another kind.
        assert_eq!(
            r.define(MetricKind::Counter, "llm_failover.requests.provider.a"),
            None
        );
        assert_eq!(
            r.define(
                MetricKind::Gauge,
                "llm_failover.requests.provider.a.status.2xx"
            ),
            None
        );
        assert!(r
            .define(MetricKind::Histogram, "llm_failover.failover_time_ms")
            .is_some());
    }

    #[test]
    fn an_upstream_configurations_counts_wait_for_a_downstream_filter_and_are_bounded() {
        let upstream = Families::default();
        let r = Registry::default();
        let id = r
            .define(
                MetricKind::Counter,
                "llm_failover.cooldowns.provider.a.reason.quota",
            )
            .unwrap();
        let before = pending();
        r.record(&upstream, Target::Stream(std::ptr::null_mut()), id, 1);
        assert_eq!(pending(), before + 1);
        for _ in 0..PENDING_LIMIT + 10 {
            r.record(&upstream, Target::Stream(std::ptr::null_mut()), id, 1);
        }
        assert_eq!(pending(), PENDING_LIMIT);
        assert!(DROPPING.with(std::cell::Cell::get), "the drop is said");
        // A deferred configuration never takes them; a downstream one records them
        // all, on its stream, with its own ids.
        flush(&upstream, stream());
        assert_eq!(pending(), PENDING_LIMIT);
        RECORDED.with(|r| r.borrow_mut().clear());
        flush(&downstream(), stream());
        assert_eq!(pending(), 0);
        RECORDED.with(|r| {
            let r = r.borrow();
            assert_eq!(r.len(), PENDING_LIMIT);
            assert_eq!(
                r[0],
                ("counter", 14, vec!["a".to_string(), "quota".to_string()], 1)
            );
        });
    }

    #[test]
    fn the_ticks_gauge_is_set_by_the_configuration_outside_any_stream() {
        let r = Registry::default();
        let id = r
            .define(MetricKind::Gauge, "llm_failover.health.provider.b")
            .unwrap();
        RECORDED.with(|r| r.borrow_mut().clear());
        let config: ConfigEnvoyPtr = std::ptr::NonNull::<u8>::dangling().as_ptr().cast();
        r.record(&downstream(), Target::Config(config), id, 2);
        // Nothing is recorded without a target.
        r.record(&downstream(), Target::Stream(std::ptr::null_mut()), id, 3);
        RECORDED.with(|r| {
            assert_eq!(
                *r.borrow(),
                vec![("config gauge", 15, vec!["b".to_string()], 2)]
            );
        });
    }
}

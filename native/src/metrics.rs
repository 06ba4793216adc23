//! The filter's metrics natively. Envoy's ABI defines metrics only while it creates
//! a configuration, so the families are defined there, with their labels; the
//! core's metric names (`llm_failover.requests.provider.a.status.2xx`) are read back
//! into a family and its label values when the core first uses one.
//!
//! The pointers here are Envoy's, passed on from a hook by the ABI's contract (the
//! configuration being created, the live stream).
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

/// Envoy's ids of the families, for one configuration.
#[derive(Default)]
pub struct Families {
    ids: Vec<Option<usize>>,
}

impl Families {
    /// Defines every family; only valid inside `on_http_filter_config_new`.
    pub fn define(config: ConfigEnvoyPtr) -> Families {
        let ids = FAMILIES
            .iter()
            .map(|(name, kind, labels)| {
                let names: Vec<ModuleBuffer> = labels
                    .iter()
                    .map(|l| ModuleBuffer::of(l.as_bytes()))
                    .collect();
                let mut id = 0usize;
                // SAFETY: `config` is the configuration Envoy is creating; every buffer
                // lives for the call.
                let result = unsafe {
                    let define = match kind {
                        MetricKind::Counter => {
                            envoy_dynamic_module_callback_http_filter_config_define_counter
                        }
                        MetricKind::Gauge => {
                            envoy_dynamic_module_callback_http_filter_config_define_gauge
                        }
                        MetricKind::Histogram => {
                            envoy_dynamic_module_callback_http_filter_config_define_histogram
                        }
                    };
                    define(
                        config,
                        ModuleBuffer::of(name.as_bytes()),
                        names.as_ptr(),
                        names.len(),
                        &mut id,
                    )
                };
                (result == 0).then_some(id)
            })
            .collect();
        Families { ids }
    }
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
    /// histogram's sample) on stream `envoy`.
    pub fn record(&self, families: &Families, envoy: FilterEnvoyPtr, id: u32, value: u64) {
        if envoy.is_null() {
            return;
        }
        let metrics = self.metrics.borrow();
        let Some(m) = metrics.get(id as usize) else {
            return;
        };
        let Some(Some(family_id)) = families.ids.get(m.family) else {
            return;
        };
        let values: Vec<ModuleBuffer> = m
            .labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        // SAFETY: `envoy` is the live stream of the hook; every buffer lives for the call.
        unsafe {
            let record = match m.kind {
                MetricKind::Counter => envoy_dynamic_module_callback_http_filter_increment_counter,
                MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_set_gauge,
                MetricKind::Histogram => {
                    envoy_dynamic_module_callback_http_filter_record_histogram_value
                }
            };
            record(envoy, *family_id, values.as_ptr(), values.len(), value);
        }
    }
}

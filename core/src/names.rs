//! Every name the filter shares with Envoy and with `render`: request and response
//! headers, filter-state keys, shared-data keys, clusters, statuses and root ids. The
//! contexts and `render` import them from here, so a wiring and the filter cannot
//! drift apart.

// Request headers.

/// Dispatch mode: the request header the route's `cluster_header` reads, unless
/// `clusterHeader` names another.
pub const DEFAULT_CLUSTER_HEADER: &str = "x-llm-failover-cluster";

/// Router mode: set on a request that asks for a streamed answer, once its body was
/// read (the request headers are held until then), so that render's route for
/// streamed requests (its own per-try timeouts) takes it. Never from a client.
pub const STREAMED_HEADER: &str = "x-llm-failover-streamed";

/// The request header that marks a dispatched hedge, with its id and provider index
/// (`<id>.<index>`); the hedge's upstream filter takes it off.
pub const HEDGE_HEADER: &str = "x-llm-failover-hedge";

/// Marks a probe for the upstream filter (`<provider index>`); removed there, and a
/// client's is removed by the route (render) and ignored when it names a provider of
/// another cluster.
pub const PROBE_HEADER: &str = "x-llm-failover-probe";

/// A header on a failing answer turned into [`RETRY_STATUS`]: the seconds Envoy's
/// router waits before the next attempt (`rate_limited_retry_back_off`, render; the
/// `retryWithin` wait). Never reaches the client: the router drops a retried answer.
pub const WAIT_HEADER: &str = "x-llm-failover-retry-in";

// Per-request control (README "Per-request control"): request headers a trusted
// caller sets; the downstream filter removes every one of them from every request,
// trusted or not, so none reaches a provider.

/// The shared secret that makes a request's control headers count (`control.secret`).
pub const CONTROL_SECRET_HEADER: &str = "x-llm-failover-secret";
/// `off`: no other provider for this request (its own `retries` still apply).
pub const CONTROL_FALLBACK_HEADER: &str = "x-llm-failover-fallback";
/// A subset of the configured providers, in the order to ask them (`a,b`).
pub const CONTROL_PROVIDERS_HEADER: &str = "x-llm-failover-providers";
/// This request's `firstByteTimeout`, within `control.firstByteTimeout`'s bounds.
pub const CONTROL_FIRST_BYTE_HEADER: &str = "x-llm-failover-first-byte-timeout";
/// This request's `hedgeAfter` (or `off`), within `control.hedgeAfter`'s bounds.
pub const CONTROL_HEDGE_HEADER: &str = "x-llm-failover-hedge-after";
/// Every control header, the secret first.
pub const CONTROL_HEADERS: [&str; 5] = [
    CONTROL_SECRET_HEADER,
    CONTROL_FALLBACK_HEADER,
    CONTROL_PROVIDERS_HEADER,
    CONTROL_FIRST_BYTE_HEADER,
    CONTROL_HEDGE_HEADER,
];
/// Envoy's router takes a per-try timeout from this request header: the filter sets
/// it for a request's own `firstByteTimeout`.
pub const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
/// Request headers with which a client could steer Envoy's router: its timeouts (whose
/// expiry counts against a provider's health), its retries and its hedging. Envoy
/// removes them from requests it treats as external, and keeps them where it trusts
/// the client (`use_remote_address` with internal addresses, as in a mesh); the filter
/// removes them from every request it routes. `x-envoy-max-retries` the filter sets
/// itself in router mode.
pub const ROUTER_REQUEST_HEADERS: [&str; 10] = [
    PER_TRY_TIMEOUT_HEADER,
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-max-retries",
];

/// On an answer after more than one attempt: each provider asked, in order, with
/// why it failed (an error class) or the status it answered with
/// (`primary=rate_limited, fallback=200`). Names and classes only: never a body.
pub const TRIED_HEADER: &str = "x-llm-failover-tried";

/// Names the provider whose answer the client got.
pub const PROVIDER_HEADER: &str = "x-llm-provider";

// Filter state (`wasm.<name>` in Envoy: the access log, the route's cluster specifier).

/// An attempt in flight whose end the host does not report (`contexts/unreported.rs`):
/// its plan position and start (`1.0:1700000000000`), `-` once it has an answer.
pub const OPEN_KEY: &str = "llm_failover_open";

/// The plan the downstream filter hands to each attempt's upstream filter (`plan.rs`).
pub const PLAN_KEY: &str = "llm_failover_plan";

/// The client's own values of the headers a provider rewrites (`plan.rs`).
pub const CLIENT_HEADERS_KEY: &str = "llm_failover_client";

/// The providers asked, in order, when a request failed over, for the access log.
pub const TRIED_KEY: &str = "llm_failover_tried";

/// How many attempts a request that failed over made, for the access log.
pub const ATTEMPTS_KEY: &str = "llm_failover_attempts";

/// The reason of a request's first failover, for the access log.
pub const REASON_KEY: &str = "llm_failover_reason";

/// Why each attempt that failed over failed (error classes, comma-separated, in the
/// order of the plan path), for the tried header.
pub const WHYS_KEY: &str = "llm_failover_whys";

/// What became of a request's control headers, for the access log: `applied: ...`,
/// `ignored: ...` (untrusted), or `refused: ...` (a trusted request's bad value).
pub const CONTROL_KEY: &str = "llm_failover_control";

/// A request's own `firstByteTimeout` (ms), for the upstream filters' timeout verdict.
pub const CONTROL_TIMEOUT_KEY: &str = "llm_failover_control_timeout";

/// When the request's first attempt failed (Unix ms), for the failover-time histogram.
pub const FAILED_AT_KEY: &str = "llm_failover_failed_at";

/// Set when the downstream filter refused the request itself (400, 413): the attempt
/// the router had started is then reset by the gateway, not by the provider.
pub const REFUSED_KEY: &str = "llm_failover_refused";

/// Where the request stands (`handoff::At`), set by the upstream filter that moves it
/// on; absent for the first attempt.
pub const AT_KEY: &str = "llm_failover_at";

/// The cluster of the next attempt: the route's matcher cluster specifier reads it
/// (`wasm.llm_failover_next`). The downstream filter sets the first attempt's.
pub const NEXT_KEY: &str = "llm_failover_next";

/// The plan positions the request's attempts went to, in order (`0,0,2`), when it
/// moved on at least once: for the access log's `tried`.
pub const PATH_KEY: &str = "llm_failover_path";

/// Set by the downstream filter when the request asks for a streamed answer (it
/// then takes render's route for streamed requests, with their own timeouts).
pub const STREAMED_KEY: &str = "llm_failover_streamed";

/// `broken` or `reset` when the answer's stream broke off, for the access log.
pub const STREAM_KEY: &str = "llm_failover_stream";

/// The status of the last failing answer sent on to the router as [`RETRY_STATUS`],
/// so the downstream filter can restore it if the router did not retry after all.
pub const STATUS_KEY: &str = "llm_failover_status";

/// Filter state on a request whose hedge is out: `<id>.<provider index>` (as
/// [`mark`]), for the upstream filter of a routed attempt to the same provider.
///
/// Such an attempt is *held* (Envoy's retry sent it there because the attempt before
/// it failed after the hedge went out): sending it too would ask that provider
/// twice. It is never sent: the hedge's answer, good or not, is the answer it would
/// have got, and the client gets it (which ends the request, and the held attempt
/// with it). (Letting it go instead would need `continue_stream` from a tick, which
/// Envoy 1.40 defers until the VM's next request callback: measured, it never went.)
pub const HEDGED_TO_KEY: &str = "llm_failover_hedged_to";

/// Filter state set by the upstream filter of an attempt it holds (see
/// [`HEDGED_TO_KEY`]): the downstream root then answers with the hedge's answer.
pub const HELD_KEY: &str = "llm_failover_hedge_held";

/// Filter state for the access log: `<provider>:won`, `<provider>:lost` or
/// `<provider>:failed` for the hedge a request sent.
pub const HEDGE_KEY: &str = "llm_failover_hedge";

// Shared data (one store per `vm_id`).

/// A provider's health record: this, then `<cluster>|<model override>` (`health.rs`).
pub const HEALTH_KEY_PREFIX: &str = "llm_failover.health.v1|";

/// Shared data: the ids of hedges to cancel (the most recent ones, comma-separated).
pub const CANCEL_KEY: &str = "llm_failover_hedge_cancel";

/// Shared data: the last hedge id handed out (ids are unique across workers).
pub const SEQUENCE_KEY: &str = "llm_failover_hedge_seq";

/// Shared-data key of the registry (one per VM id).
pub const REGISTRY_KEY: &str = "llm_failover.registry";

// Clusters, statuses and root ids render wires.

/// The cluster the next attempt goes to when the plan is used up but Envoy's router
/// still has retries: render's cluster whose only host cannot be reached, so no
/// provider is asked more often than the plan says.
pub const EXHAUSTED_CLUSTER: &str = "llm_failover_exhausted";

/// The status an upstream filter gives a failing answer it wants retried on the next
/// provider: the route's only retriable status (render). The filter decides from the
/// status and error body (`attempt::judge`), Envoy's router only executes. A status
/// no provider sends; one that does is passed on as 502.
pub const RETRY_STATUS: u16 = 591;

/// The `root_id` of the filter's instances on the provider clusters (router mode).
pub const UPSTREAM_ROOT_ID: &str = "llm_failover_upstream";

/// The `root_id` (and `vm_id`) of the downstream filter in render's wiring.
pub const ROOT_ID: &str = "llm_failover";

/// Credential headers a client may send for OpenAI, Azure OpenAI and Anthropic.
/// They are all removed when the filter injects a key, so the client's credential
/// for one provider never reaches another.
pub const CLIENT_CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "api-key", "x-api-key"];

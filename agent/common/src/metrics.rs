//! The agent's metrics: `GET /swarmseal/v1/metrics`, Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4`), encoded by the `prometheus-client` crate. One [`Metrics`]
//! per agent process, shared by the boot flow (unlock outcomes, the boot decision, reseals,
//! key changes) and its proxy (requests, connections); the gauges that describe state are
//! set from the status document ([`crate::status::Status`]) when scraped. docs/operating.md
//! "Metrics" lists every series.
//!
//! Label values are bounded: outcomes and reasons are the agent's own words, roles are the
//! configured role names (a certificate whose OU names no configured role is refused and counted as `none`),
//! statuses are HTTP status codes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::status::Status;

/// `Content-Type` of [`Metrics::encode`]'s answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnlockLabels {
    /// `unlocked` or `refused`.
    pub outcome: String,
    /// `sealed_key` when unlocked; the refusal's kind otherwise (`policy_mismatch`, `not_signed`, …).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyChangeLabels {
    /// `init`, `autolock`, `rotate`, `recover` (made here, through the key-custody journal), or
    /// `seen` (the engine's key differed from the sealed one: rotated elsewhere).
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub role: String,
    /// The HTTP status answered.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `Swarm.LocalNodeState` (`inactive`, `pending`, `active`, `error`, `locked`), or `unreachable`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabels {
    pub id: String,
    pub version: String,
}

const STATES: [&str; 6] = ["inactive", "pending", "active", "error", "locked", "unreachable"];

/// Every series the agent exports. Counters count since the agent started (this boot on the
/// appliance).
pub struct Metrics {
    registry: Registry,
    /// `swarmseal_unlocks_total{outcome,reason}`: the agent's boot unlock attempts.
    pub unlocks: Family<UnlockLabels, Counter>,
    /// `swarmseal_seals_total`: an unlock key sealed in the TPM (the first seal, a changed key,
    /// `POST /reseal`).
    pub seals: Counter,
    /// `swarmseal_key_changes_total{op}`: unlock key changes made or seen.
    pub key_changes: Family<KeyChangeLabels, Counter>,
    /// `swarmseal_proxy_requests_total{role,status}`: requests the proxy answered.
    pub proxy_requests: Family<RequestLabels, Counter>,
    /// `swarmseal_proxy_connections`: client connections holding a slot now.
    pub proxy_connections: Gauge,
    swarm_state: Family<StateLabels, Gauge>,
    sealed: Gauge,
    sealed_stale: Gauge,
    phase_locked: Gauge,
    decision_age: Gauge,
    bench_reported: Gauge,
    bench_score: Gauge,
    bench_warn: Gauge,
    image: Family<ImageLabels, Gauge>,
    time_synchronised: Gauge,
    time_offset: Gauge<f64, AtomicU64>,
    /// Unix seconds of this boot's unlock decision; 0: not made yet.
    decided_at: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("swarmseal"),
            unlocks: Family::default(),
            seals: Counter::default(),
            key_changes: Family::default(),
            proxy_requests: Family::default(),
            proxy_connections: Gauge::default(),
            swarm_state: Family::default(),
            sealed: Gauge::default(),
            sealed_stale: Gauge::default(),
            phase_locked: Gauge::default(),
            decision_age: Gauge::default(),
            bench_reported: Gauge::default(),
            bench_score: Gauge::default(),
            bench_warn: Gauge::default(),
            image: Family::default(),
            time_synchronised: Gauge::default(),
            time_offset: Gauge::default(),
            decided_at: AtomicU64::new(0),
        };
        let r = &mut m.registry;
        r.register("unlocks", "Boot unlock attempts by the agent, by outcome and reason", m.unlocks.clone());
        r.register("seals", "Times an unlock key was sealed in the TPM (first seal and every reseal)", m.seals.clone());
        r.register("key_changes", "Unlock key changes made here (init, autolock, rotate, recover) or seen from the engine (seen)", m.key_changes.clone());
        r.register("proxy_requests", "Requests answered by the mutual-TLS proxy, by client role and HTTP status", m.proxy_requests.clone());
        r.register("proxy_connections", "Client connections to the proxy now (TLS handshakes included)", m.proxy_connections.clone());
        r.register("swarm_state", "1 for the engine's current swarm state (Swarm.LocalNodeState), 0 for the others", m.swarm_state.clone());
        r.register("key_sealed", "1 when an unlock key is sealed in the TPM (current slot)", m.sealed.clone());
        r.register("sealed_key_stale", "1 when the sealed key is not the engine's current unlock key", m.sealed_stale.clone());
        r.register("phase_locked", "1 when this boot is phase-locked (the key was unsealed once)", m.phase_locked.clone());
        r.register("boot_decision_age_seconds", "Seconds since this boot's unlock decision (-1: not made yet)", m.decision_age.clone());
        r.register("bench_reported", "1 when a CIS Docker Benchmark report exists (bench_score and bench_warnings are 0 without one)", m.bench_reported.clone());
        r.register("bench_score", "Score of the last CIS Docker Benchmark report (docker-bench-security's, sections 1-7; may be negative)", m.bench_score.clone());
        r.register("bench_warnings", "WARN results in the last CIS Docker Benchmark report", m.bench_warn.clone());
        r.register("time_synchronised", "1 when chronyd has set the clock from a selected source (status time.synchronised)", m.time_synchronised.clone());
        r.register("time_offset_seconds", "Seconds the clock is behind (+) or ahead of (-) NTP time, as chronyd estimates it; 0 when not synchronised", m.time_offset.clone());
        r.register("image_info", "The running image (os-release IMAGE_ID, IMAGE_VERSION); always 1", m.image.clone());
        m
    }

    /// Count one boot unlock attempt.
    pub fn unlock(&self, outcome: &str, reason: &str) {
        self.unlocks.get_or_create(&UnlockLabels { outcome: outcome.into(), reason: reason.into() }).inc();
    }

    /// Count one unlock key change (`op`: see [`KeyChangeLabels`]).
    pub fn key_change(&self, op: &str) {
        self.key_changes.get_or_create(&KeyChangeLabels { op: op.into() }).inc();
    }

    /// This boot's unlock decision was made now.
    pub fn decided(&self) {
        self.decided_at.store(unix_now().max(1), Ordering::Relaxed);
    }

    /// Set the state gauges from the status document and the last CIS report (its bytes:
    /// docker-bench-security JSON; WARN results are counted wherever the layout has them).
    pub fn observe(&self, status: &Status, bench_report: Option<&[u8]>) {
        let state = status.swarm.state().unwrap_or("unreachable");
        for s in STATES {
            self.swarm_state.get_or_create(&StateLabels { state: s.into() }).set((s == state) as i64);
        }
        if !STATES.contains(&state) {
            // Not one the engine documents: shown, never silently dropped.
            self.swarm_state.get_or_create(&StateLabels { state: state.escape_default().to_string() }).set(1);
        }
        self.sealed.set(status.sealed.current.is_some() as i64);
        self.sealed_stale.set(status.sealed_key_stale.unwrap_or(false) as i64);
        self.phase_locked.set(status.phase_locked.unwrap_or(false) as i64);
        let at = self.decided_at.load(Ordering::Relaxed);
        self.decision_age.set(if at == 0 { -1 } else { unix_now().saturating_sub(at) as i64 });
        let score = status.bench.as_ref().and_then(|b| b.score.as_ref()).and_then(|s| s.as_i64().or_else(|| s.as_str().and_then(|t| t.parse().ok())));
        let warn = bench_report.and_then(bench_warn_count).map(|n| n as i64);
        self.bench_reported.set((score.is_some() && warn.is_some()) as i64);
        self.bench_score.set(score.unwrap_or(0));
        self.bench_warn.set(warn.unwrap_or(0));
        let time = status.time.as_ref();
        self.time_synchronised.set(time.is_some_and(|t| t.synchronised) as i64);
        self.time_offset.set(time.and_then(|t| t.offset_seconds).unwrap_or(0.0));
        self.image.clear();
        self.image
            .get_or_create(&ImageLabels { id: status.image.id.clone().unwrap_or_default(), version: status.image.version.clone().unwrap_or_default() })
            .set(1);
    }

    /// The text exposition (format 0.0.4) of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// WARN results in a bench report (docker-bench-security's JSON, `"result": "WARN"`);
/// `None` when it is not JSON. The metrics and the console screen both count with this.
pub fn bench_warn_count(report: &[u8]) -> Option<usize> {
    serde_json::from_slice::<serde_json::Value>(report).ok().map(|v| count_warn(&v))
}

/// `"result": "WARN"` anywhere in the report.
fn count_warn(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => m.iter().map(|(k, x)| if k == "result" && x == "WARN" { 1 } else { count_warn(x) }).sum(),
        serde_json::Value::Array(a) => a.iter().map(count_warn).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_and_typed_in_the_text_format() {
        let m = Metrics::new();
        m.unlocks.get_or_create(&UnlockLabels { outcome: "refused".into(), reason: "policy_mismatch".into() }).inc();
        m.proxy_requests.get_or_create(&RequestLabels { role: "admin".into(), status: 200 }).inc_by(3);
        let t = m.encode();
        assert!(t.contains("# TYPE swarmseal_unlocks_total counter\n"), "{t}");
        assert!(t.contains("swarmseal_unlocks_total{outcome=\"refused\",reason=\"policy_mismatch\"} 1\n"), "{t}");
        assert!(t.contains("swarmseal_proxy_requests_total{role=\"admin\",status=\"200\"} 3\n"), "{t}");
        assert!(!t.contains("# EOF"), "0.0.4 has no EOF marker: {t}");
    }

    #[test]
    fn the_clock_is_a_gauge_pair() {
        let mut st: Status = serde_json::from_value(serde_json::json!({
            "swarm": {"error": "x"}, "sealed": {"current": null, "previous": null}, "sealed_key_stale": null, "change_pending": null,
            "tpm": {"tcti": "t", "reachable": false, "error": "x"}, "phase_locked": null, "phase_pcr": 11,
            "proxy": {"enabled": false, "listen": "0.0.0.0:2376"}, "escrow": null, "bench": null, "image": {"id": null, "version": null},
            "time": {"synchronised": true, "offset_seconds": -0.25, "source": "s", "authenticated": true, "problems": [], "error": null},
        }))
        .unwrap();
        let m = Metrics::new();
        m.observe(&st, None);
        let t = m.encode();
        assert!(t.contains("swarmseal_time_synchronised 1\n") && t.contains("swarmseal_time_offset_seconds -0.25\n"), "{t}");
        st.time = None;
        m.observe(&st, None);
        let t = m.encode();
        assert!(t.contains("swarmseal_time_synchronised 0\n") && t.contains("swarmseal_time_offset_seconds 0.0\n"), "{t}");
    }

    #[test]
    fn warnings_are_counted_wherever_the_report_has_them() {
        let v = serde_json::json!({"tests": [{"results": [{"id": "1.1", "result": "WARN"}, {"id": "1.2", "result": "PASS"}]}, {"results": [{"result": "WARN"}]}]});
        assert_eq!(count_warn(&v), 2);
    }
}

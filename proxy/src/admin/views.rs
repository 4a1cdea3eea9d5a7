//! JSON views of the live state for the admin API.

use serde::Serialize;

use crate::gateway::Router;
use crate::pool::{Directory, Member};
use crate::strategy::{StrategyInfo, StrategySet};

#[derive(Serialize)]
struct InstanceView<'a> {
    id: &'a str,
    address: &'a str,
    scheme: &'static str,
    status: &'static str,
    weight: u32,
    eligible: bool,
    health: &'static str,
    requests_in_flight: u32,
    picks: u64,
    latency_ewma_us: u32,
    consecutive_failures: u32,
    ejected: bool,
    ejections: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<&'a str>,
    tags: &'a [String],
    metadata: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> InstanceView<'a> {
    fn new(m: &'a Member) -> Self {
        Self {
            id: &m.spec.id,
            address: &m.spec.addr,
            scheme: m.spec.scheme.as_str(),
            status: m.spec.status.as_str(),
            weight: m.spec.weight,
            eligible: m.is_eligible(),
            health: if m.socket.is_some() {
                m.live.health().as_str()
            } else {
                "unresolved"
            },
            requests_in_flight: m.live.in_flight(),
            picks: m.live.picks(),
            latency_ewma_us: m.live.ewma_us(),
            consecutive_failures: m.live.failures(),
            ejected: m.live.is_ejected(crate::pool::clock_ms()),
            ejections: m.live.ejections(),
            version: m.spec.version.as_deref(),
            zone: m.spec.zone.as_deref(),
            tags: &m.spec.tags,
            metadata: &m.spec.metadata,
        }
    }
}

#[derive(Serialize)]
struct ServiceView<'a> {
    name: &'a str,
    generation: u64,
    eligible: usize,
    instances: Vec<InstanceView<'a>>,
}

/// `GET /admin/services`.
pub(super) fn services_json(directory: &Directory) -> Vec<u8> {
    let slots = directory.slots();
    let pools: Vec<_> = slots.iter().map(|s| s.load_full()).collect();
    let services: Vec<ServiceView<'_>> = pools
        .iter()
        .map(|pool| ServiceView {
            name: pool.service(),
            generation: pool.generation(),
            eligible: pool.eligible_len(),
            instances: pool.members().map(InstanceView::new).collect(),
        })
        .collect();
    to_json(&serde_json::json!({ "services": services }))
}

#[derive(Serialize)]
struct StrategyView<'a> {
    #[serde(flatten)]
    info: StrategyInfo,
    fallbacks: serde_json::Map<String, serde_json::Value>,
    routes: Vec<&'a str>,
}

/// `GET /admin/strategies`: every loaded strategy, its source, generation, state, fallbacks
/// by reason, and the routes using it.
pub(super) fn strategies_json(router: &Router, strategies: &StrategySet) -> Vec<u8> {
    let views: Vec<StrategyView<'_>> = strategies
        .infos()
        .into_iter()
        .map(|info| StrategyView {
            fallbacks: info
                .fallbacks
                .iter()
                .map(|(reason, n)| (reason.to_string(), (*n).into()))
                .collect(),
            routes: router
                .routes()
                .iter()
                .filter(|r| r.strategy.name() == info.name)
                .map(|r| r.spec.name.as_str())
                .collect(),
            info,
        })
        .collect();
    to_json(&serde_json::json!({ "strategies": views }))
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

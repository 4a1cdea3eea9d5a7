//! Upstream pools: one immutable [`Pool`] snapshot per service behind one `ArcSwap`
//! ([`ServiceSlot`]), rebuilt off the request path by the [`Directory`] and swapped whole;
//! per-instance live state ([`InstanceLive`]) lives outside the snapshot and survives swaps.

mod cycle;
mod decay;
mod directory;
mod live;
mod live_cells;
mod snapshot;

pub use decay::LatencyDecay;
pub use directory::{Directory, ServiceSlot};
pub use live::{clock_ms, Health, InFlightGuard, InstanceLive, LATENCY_DECAY_PERIOD};
pub use live_cells::LiveCell;
pub use snapshot::{instance_key, Member, Pool};

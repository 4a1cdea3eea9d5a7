//! Native strategies: the fallback when a plugin fails and the baseline for benchmarks.

use super::{PickRequest, Strategy};
use crate::pool::Pool;

/// Smooth weighted round-robin over the pool's precomputed schedule: one atomic add per pick.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl Strategy for RoundRobin {
    fn name(&self) -> &str {
        "native-round-robin"
    }

    fn pick(&self, pool: &Pool, request: &PickRequest<'_>) -> Option<usize> {
        let first = pool.next_round_robin()?;
        if request.exclude.is_empty() || pool.eligible_len() <= request.exclude.len() {
            return Some(first);
        }
        let mut pick = first;
        // Retries move on to the next instance in order that this request has not tried.
        for _ in 0..pool.eligible_len() {
            if !request.exclude.contains(&pool.eligible(pick).key) {
                return Some(pick);
            }
            pick = (pick + 1) % pool.eligible_len();
        }
        Some(first)
    }
}

/// Weighted least-in-flight: the lowest `in_flight / weight`, ties broken at random.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastConn;

impl Strategy for LeastConn {
    fn name(&self) -> &str {
        "native-least-conn"
    }

    fn pick(&self, pool: &Pool, request: &PickRequest<'_>) -> Option<usize> {
        let skip_tried = pool.eligible_len() > request.exclude.len();
        let mut best: Option<(usize, u64, u64)> = None; // (index, in_flight, weight)
        let mut ties = 0u32;
        for (i, member) in pool.eligible_members().enumerate() {
            if skip_tried && request.exclude.contains(&member.key) {
                continue;
            }
            let load = u64::from(member.live.in_flight());
            let weight = u64::from(member.spec.weight);
            match best {
                None => {
                    best = Some((i, load, weight));
                    ties = 1;
                }
                Some((_, best_load, best_weight)) => {
                    // load / weight < best_load / best_weight, without division.
                    let lhs = load * best_weight;
                    let rhs = best_load * weight;
                    if lhs < rhs {
                        best = Some((i, load, weight));
                        ties = 1;
                    } else if lhs == rhs {
                        // Reservoir sampling: each tied instance wins with probability 1/ties.
                        ties += 1;
                        if fastrand::u32(..ties) == 0 {
                            best = Some((i, load, weight));
                        }
                    }
                }
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{instance_key, InstanceLive, Member};
    use crate::registry::decode_value;
    use std::sync::Arc;

    fn pool(weights: &[u32]) -> Pool {
        let members = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let id = format!("i{i}");
                let mut spec =
                    decode_value(&id, format!("127.0.0.1:{}", 1000 + i).as_bytes()).unwrap();
                spec.weight = w;
                Member {
                    key: instance_key(&id),
                    socket: spec.addr.parse().ok(),
                    live: Arc::new(InstanceLive::new("svc".into(), id.as_str().into())),
                    spec: Arc::new(spec),
                }
            })
            .collect();
        Pool::new("svc".into(), 1, members)
    }

    #[test]
    fn round_robin_follows_weights() {
        let pool = pool(&[300, 100, 0, 100]);
        assert_eq!(pool.eligible_len(), 3);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[RoundRobin.pick(&pool, &PickRequest::default()).unwrap()] += 1;
        }
        assert_eq!(counts, [6000, 2000, 2000]);
    }

    #[test]
    fn round_robin_retry_avoids_tried() {
        let pool = pool(&[100, 100]);
        for _ in 0..10 {
            let tried = [pool.eligible(0).key];
            let req = PickRequest {
                hash: 0,
                exclude: &tried,
                headers: None,
            };
            assert_eq!(RoundRobin.pick(&pool, &req), Some(1));
        }
    }

    #[test]
    fn least_conn_prefers_least_loaded_per_weight() {
        let pool = pool(&[100, 100, 200]);
        let _a = pool.eligible(0).live.start_request();
        let _b1 = pool.eligible(1).live.start_request();
        let _b2 = pool.eligible(1).live.start_request();
        let _c1 = pool.eligible(2).live.start_request();
        // loads per weight: 1/100, 2/100, 1/200 -> the third.
        assert_eq!(LeastConn.pick(&pool, &PickRequest::default()), Some(2));
    }

    #[test]
    fn least_conn_breaks_ties_at_random() {
        let pool = pool(&[100, 100, 100]);
        let mut counts = [0usize; 3];
        for _ in 0..3_000 {
            counts[LeastConn.pick(&pool, &PickRequest::default()).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let pool = pool(&[0]);
        assert_eq!(RoundRobin.pick(&pool, &PickRequest::default()), None);
        assert_eq!(LeastConn.pick(&pool, &PickRequest::default()), None);
    }
}

//! `traffic-split`: a request goes to another service than the route's — the first `to`
//! entry whose `match` the request meets (every named header with exactly that value), or
//! else, by `weight`, that many requests out of 100 per entry (the rest stay on the route's
//! service). The chosen service is served with its own pool and health, the route's
//! strategy, and counts as its own `service` in the route's metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;
use serde::Deserialize;

use super::{read, FilterError};
use crate::gateway::engine::filters::{Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    to: Vec<TargetSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSettings {
    service: String,
    weight: Option<u32>,
    #[serde(rename = "match")]
    matches: Option<MatchSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSettings {
    header: BTreeMap<String, String>,
}

/// One `to` entry.
#[derive(Debug)]
struct Target {
    service: Arc<str>,
    /// Requests out of 100 (of those no `match` took) that go here.
    weight: u32,
    /// Fields a request must carry, with exactly these values, to come here whatever the
    /// weights say (empty: no match rule).
    matches: Vec<(HeaderName, String)>,
}

/// One `traffic-split` filter.
#[derive(Debug)]
pub(super) struct TrafficSplit {
    name: String,
    targets: Vec<Target>,
    /// The services of `targets`, for the route's backends.
    services: Vec<String>,
    /// The sum of the weights (at most 100).
    total_weight: u32,
}

impl TrafficSplit {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        if settings.to.is_empty() {
            return Err(FilterError::new(name, "to", "no service to split to"));
        }
        let mut targets = Vec::with_capacity(settings.to.len());
        let mut total_weight = 0;
        for (i, target) in settings.to.into_iter().enumerate() {
            let key = |k: &str| format!("to[{i}].{k}");
            let service = target.service.trim();
            if service.is_empty() {
                return Err(FilterError::new(name, key("service"), "empty"));
            }
            let weight = target.weight.unwrap_or(0);
            if weight > 100 {
                return Err(FilterError::new(
                    name,
                    key("weight"),
                    format!("{weight}: requests out of 100, so 0 to 100"),
                ));
            }
            let matches = match target.matches {
                None => Vec::new(),
                Some(m) => {
                    if m.header.is_empty() {
                        return Err(FilterError::new(
                            name,
                            key("match.header"),
                            "empty: name the fields to match",
                        ));
                    }
                    m.header
                        .into_iter()
                        .map(|(field, value)| {
                            HeaderName::from_bytes(field.trim().as_bytes())
                                .map(|h| (h, value))
                                .map_err(|_| {
                                    FilterError::new(
                                        name,
                                        key("match.header"),
                                        format!("bad header name {field:?}"),
                                    )
                                })
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            if weight == 0 && matches.is_empty() {
                return Err(FilterError::new(
                    name,
                    key("weight"),
                    "neither a weight nor a match: no request would go there",
                ));
            }
            total_weight += weight;
            targets.push(Target {
                service: service.into(),
                weight,
                matches,
            });
        }
        if total_weight > 100 {
            return Err(FilterError::new(
                name,
                "to",
                format!("the weights add up to {total_weight}: at most 100"),
            ));
        }
        let mut services: Vec<String> = Vec::new();
        for target in &targets {
            if !services.iter().any(|s| **s == *target.service) {
                services.push(target.service.to_string());
            }
        }
        Ok(Self {
            name: name.to_string(),
            targets,
            services,
            total_weight,
        })
    }

    /// The target for a request: a match first, then the weights by `roll` (0 to 99).
    fn choose(&self, request: &dyn RequestView, roll: u32) -> Option<&Target> {
        let matched = self.targets.iter().find(|t| {
            !t.matches.is_empty()
                && t.matches
                    .iter()
                    .all(|(name, value)| request.field(name.as_str()) == Some(value.as_bytes()))
        });
        if matched.is_some() {
            return matched;
        }
        let mut below = 0;
        for target in &self.targets {
            below += target.weight;
            if roll < below {
                return Some(target);
            }
        }
        None
    }
}

impl Filter for TrafficSplit {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        // An earlier split decided already.
        if state.service.is_some() {
            return Verdict::Continue;
        }
        let roll = if self.total_weight == 0 {
            100
        } else {
            fastrand::u32(..100)
        };
        if let Some(target) = self.choose(request, roll) {
            // The route's own service chosen by name is no change.
            if *target.service != *route.spec.service {
                state.service = Some(target.service.clone());
            }
        }
        Verdict::Continue
    }

    fn services(&self) -> &[String] {
        &self.services
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<TrafficSplit, FilterError> {
        TrafficSplit::build("s", &toml::from_str(text).unwrap())
    }

    #[test]
    fn settings_are_checked() {
        let s = build(
            r#"to = [{ service = "canary", weight = 10 }, { service = "beta", match = { header = { "x-beta" = "1" } } }, { service = "canary", weight = 5 }]"#,
        )
        .unwrap();
        assert_eq!(s.services, ["canary", "beta"]);
        assert_eq!(s.total_weight, 15);
        let key = |text: &str| build(text).unwrap_err().key;
        assert_eq!(key("to = []"), "to");
        assert_eq!(key(r#"to = [{ service = "a" }]"#), "to[0].weight");
        assert_eq!(
            key(r#"to = [{ service = "a", weight = 101 }]"#),
            "to[0].weight"
        );
        assert_eq!(
            key(r#"to = [{ service = "a", weight = 60 }, { service = "b", weight = 50 }]"#),
            "to"
        );
        assert_eq!(
            key(r#"to = [{ service = "a", match = { header = {} } }]"#),
            "to[0].match.header"
        );
        assert_eq!(
            key(r#"to = [{ service = "a", match = { header = { "bad name" = "1" } } }]"#),
            "to[0].match.header"
        );
        assert_eq!(
            key(r#"to = [{ service = " ", weight = 1 }]"#),
            "to[0].service"
        );
    }
}

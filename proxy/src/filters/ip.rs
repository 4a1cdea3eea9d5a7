//! `ip-allow` and `ip-deny`: the client IP (after `[proxy] trusted_proxies`) against a list
//! of IPv4 and IPv6 CIDR blocks; a request that may not pass is answered 403.

use serde::Deserialize;

use super::{read, reject, FilterError};
use crate::gateway::engine::filters::{Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

/// Whether the listed blocks are the ones let through or the ones kept out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    cidrs: Vec<String>,
}

/// One `ip-allow` or `ip-deny` filter.
#[derive(Debug)]
pub(super) struct IpRule {
    name: String,
    rule: Rule,
    /// IPv4 blocks, and IPv6 ones (an IPv4-mapped IPv6 client is matched as IPv4).
    blocks: Vec<ipnet::IpNet>,
}

impl IpRule {
    pub(super) fn build(name: &str, table: &toml::Table, rule: Rule) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        if settings.cidrs.is_empty() {
            return Err(FilterError::new(
                name,
                "cidrs",
                "at least one block is required",
            ));
        }
        let blocks = settings
            .cidrs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                crate::config::parse_cidr(text).ok_or_else(|| {
                    FilterError::new(
                        name,
                        format!("cidrs[{i}]"),
                        format!("{text:?} is not an IP address or CIDR block"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: name.to_string(),
            rule,
            blocks,
        })
    }

    fn listed(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.blocks.iter().any(|block| block.contains(&ip))
    }
}

impl Filter for IpRule {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        _state: &mut FilterState,
    ) -> Verdict {
        let passes = match (request.client_ip(), self.rule) {
            (Some(ip), Rule::Allow) => self.listed(ip),
            (Some(ip), Rule::Deny) => !self.listed(ip),
            // No IP to judge (not on a TCP connection): only a deny list lets it by.
            (None, rule) => rule == Rule::Deny,
        };
        if passes {
            return Verdict::Continue;
        }
        let who = request
            .client_ip()
            .map_or_else(|| "this client".to_string(), |ip| ip.to_string());
        Verdict::Answer(reject(
            403,
            format!(
                "sluice: {who} may not use this route (filter \"{}\")\n",
                self.name
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidrs: &[&str], rule: Rule) -> IpRule {
        let mut table = toml::Table::new();
        table.insert(
            "cidrs".into(),
            toml::Value::Array(cidrs.iter().map(|c| toml::Value::from(*c)).collect()),
        );
        IpRule::build("ips", &table, rule).unwrap()
    }

    #[test]
    fn blocks_match_v4_v6_and_mapped_addresses() {
        let allow = rule(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"], Rule::Allow);
        assert!(allow.listed("10.1.2.3".parse().unwrap()));
        assert!(allow.listed("::ffff:10.1.2.3".parse().unwrap()));
        assert!(allow.listed("2001:db8::1".parse().unwrap()));
        assert!(allow.listed("192.0.2.7".parse().unwrap()));
        assert!(!allow.listed("192.0.2.8".parse().unwrap()));
        assert!(!allow.listed("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn a_bad_block_is_named() {
        let mut table = toml::Table::new();
        table.insert(
            "cidrs".into(),
            toml::Value::Array(vec!["10.0.0.0/8".into(), "10.0.0/33".into()]),
        );
        let error = IpRule::build("ips", &table, Rule::Deny).unwrap_err();
        assert_eq!(
            error.to_string(),
            "filters.ips.cidrs[1]: \"10.0.0/33\" is not an IP address or CIDR block"
        );
        let error = IpRule::build("ips", &toml::Table::new(), Rule::Deny).unwrap_err();
        assert!(error.to_string().starts_with("filters.ips"), "{error}");
    }
}

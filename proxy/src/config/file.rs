//! The config file as written: serde structs that mirror the TOML, unknown keys refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) proxy: ProxySection,
    #[serde(default)]
    pub(super) admin: AdminSection,
    #[serde(default)]
    pub(super) registry: RegistrySection,
    #[serde(default)]
    pub(super) log: LogSection,
    #[serde(default)]
    pub(super) strategies: BTreeMap<String, StrategySection>,
    #[serde(default)]
    pub(super) routes: Vec<RouteSection>,
    #[serde(default)]
    pub(super) services: BTreeMap<String, ServiceSection>,
    /// `[filters.NAME]`: each kind's keys are read by its own module (`crate::filters`).
    #[serde(default)]
    pub(super) filters: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProxySection {
    pub(super) listen: Option<Vec<String>>,
    pub(super) threads: Option<usize>,
    pub(super) grace_period: Option<String>,
    pub(super) upstream_keepalive_pool_size: Option<usize>,
    pub(super) upstream_idle_timeout: Option<String>,
    pub(super) max_headers: Option<usize>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) work_stealing: Option<bool>,
    pub(super) fast_path: Option<bool>,
    pub(super) header_timeout: Option<String>,
    pub(super) tls: Option<ListenerTlsSection>,
    pub(super) filters: Option<Vec<String>>,
    pub(super) trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerTlsSection {
    pub(super) listen: Option<Vec<String>>,
    pub(super) h2: Option<bool>,
    pub(super) session_tickets: Option<bool>,
    pub(super) session_cache: Option<usize>,
    #[serde(default)]
    pub(super) certificates: Vec<CertificateSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificateSection {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) server_names: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminSection {
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
    pub(super) max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistrySection {
    pub(super) kind: Option<String>,
    pub(super) endpoints: Option<Vec<String>>,
    pub(super) prefix: Option<String>,
    pub(super) path: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) state_file: Option<String>,
    pub(super) tls: Option<TlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsSection {
    pub(super) ca: Option<String>,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogSection {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
    pub(super) access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StrategySection {
    pub(super) wasm: Option<String>,
    pub(super) config: Option<toml::Value>,
    #[serde(default)]
    pub(super) tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteSection {
    pub(super) name: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) service: Option<String>,
    pub(super) strategy: Option<String>,
    pub(super) hash_on: Option<String>,
    pub(super) strip_prefix: Option<bool>,
    pub(super) timeout: Option<String>,
    pub(super) retries: Option<u32>,
    pub(super) total_timeout: Option<String>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) filters: Option<Vec<String>>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceSection {
    pub(super) health_check: Option<HealthCheckSection>,
    pub(super) passive: Option<PassiveSetting>,
    pub(super) connect_timeout: Option<String>,
    pub(super) format: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) upstream_tls: Option<UpstreamTlsSection>,
    pub(super) scheme: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamTlsSection {
    pub(super) ca: Option<String>,
    pub(super) server_name: Option<String>,
    pub(super) verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthCheckSection {
    pub(super) path: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) healthy_after: Option<u32>,
    pub(super) unhealthy_after: Option<u32>,
    pub(super) wait_first: Option<bool>,
}

/// `passive = false` (off), `true` (the defaults), or a table.
#[derive(Debug)]
pub(super) enum PassiveSetting {
    Enabled(bool),
    Table(PassiveSection),
}

impl<'de> Deserialize<'de> for PassiveSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PassiveSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or a table { consecutive_failures, eject_for }")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(PassiveSetting::Enabled(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                // The table's own errors (an unknown key) keep their key path.
                PassiveSection::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(PassiveSetting::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PassiveSection {
    pub(super) consecutive_failures: Option<u32>,
    pub(super) eject_for: Option<String>,
}

/// The dotted key of the `key = value` line holding byte `at` of `text`, with its table
/// (`routes[0].max_body_bytes`), read from the text; `None` when that line is no assignment.
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (name, _) = line.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || name.starts_with('[') || name.starts_with('#') {
        return None;
    }
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for header in text[..line_start].lines().map(str::trim) {
        if let Some(array) = header.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
            let array = array.trim().to_string();
            let index = arrays
                .entry(array.clone())
                .and_modify(|i| *i += 1)
                .or_insert(0);
            table = format!("{array}[{index}]");
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    Some(if table.is_empty() {
        name.to_string()
    } else {
        format!("{table}.{name}")
    })
}

/// Parses TOML into the file model; the first structural problem is reported with its line
/// and dotted key path.
pub(super) fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let start = inner.span().map(|span| span.start.min(text.len()));
        let line = start
            .map(|start| text[..start].matches('\n').count() + 1)
            .unwrap_or(0);
        // Some values fail in the TOML reader itself (an integer beyond 64 bits), before a
        // key path exists: name the key from the text around the error instead.
        let key = match (key.as_str(), start) {
            (".", Some(start)) => key_at(text, start).unwrap_or_else(|| "(top level)".into()),
            (".", None) => "(top level)".into(),
            _ => key,
        };
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            key,
            reason: inner.message().trim().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_too_large_for_64_bits_names_its_key() {
        let text = "[proxy]\nthreads = 2\n\n[[routes]]\nservice = \"a\"\n\n[[routes]]\nservice = \"b\"\nmax_body_bytes = 99999999999999999999999\n";
        let err = parse(Path::new("s.toml"), text).unwrap_err().to_string();
        assert!(err.contains("routes[1].max_body_bytes"), "{err}");
        assert!(err.contains(":9:"), "{err}");
        assert_eq!(key_at("a = 1\n", 4).as_deref(), Some("a"));
        assert_eq!(key_at("[x]\n", 1), None);
    }
}

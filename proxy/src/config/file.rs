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

/// Parses TOML into the file model; the first structural problem is reported with its line
/// and dotted key path.
pub(super) fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let line = inner
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            reason: inner.message().trim().to_string(),
        }
    })
}

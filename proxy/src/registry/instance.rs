//! One registered instance and the canonical value format (JSON object or plain address).

use serde::{Deserialize, Serialize};

/// Registration status; only `Up` receives traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Status {
    #[default]
    #[serde(rename = "UP", alias = "up")]
    Up,
    #[serde(rename = "STARTING", alias = "starting")]
    Starting,
    #[serde(rename = "DOWN", alias = "down")]
    Down,
    #[serde(rename = "OUT_OF_SERVICE", alias = "out_of_service")]
    OutOfService,
    #[serde(rename = "MAINTENANCE", alias = "maintenance")]
    Maintenance,
    #[serde(rename = "DRAINING", alias = "draining")]
    Draining,
}

impl Status {
    /// The status as written in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Starting => "STARTING",
            Status::Down => "DOWN",
            Status::OutOfService => "OUT_OF_SERVICE",
            Status::Maintenance => "MAINTENANCE",
            Status::Draining => "DRAINING",
        }
    }
}

/// How the gateway talks to the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
    Grpc,
    Grpcs,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Grpc => "grpc",
            Scheme::Grpcs => "grpcs",
        }
    }
}

/// Largest weight a registry value may carry.
pub(crate) const MAX_WEIGHT: u32 = 10_000;
/// Weight of an instance whose value names none.
pub(crate) const DEFAULT_WEIGHT: u32 = 100;

/// One instance of a service, as the registry describes it. Serialized in the canonical
/// value's field names (plus `id`), as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: String,
    /// `host:port` as registered.
    pub addr: String,
    #[serde(default)]
    pub status: Status,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub scheme: Scheme,
}

/// Why a registry value was skipped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("not valid JSON or address: {0}")]
    Syntax(String),
    #[error("missing \"addr\"")]
    MissingAddr,
    #[error("bad address {0:?}: expected host:port or http://host:port")]
    BadAddr(String),
    #[error("weight {0} is above the maximum of 10000")]
    WeightTooHigh(u32),
}

/// The canonical JSON value; every field but `addr` optional, unknown fields ignored.
#[derive(Debug, Deserialize)]
pub(super) struct CanonicalRecord {
    pub(super) addr: Option<String>,
    #[serde(default)]
    pub(super) status: Status,
    pub(super) weight: Option<u32>,
    pub(super) version: Option<String>,
    pub(super) zone: Option<String>,
    #[serde(default)]
    pub(super) tags: Vec<String>,
    #[serde(default)]
    pub(super) metadata: serde_json::Map<String, serde_json::Value>,
    pub(super) scheme: Option<Scheme>,
}

impl InstanceSpec {
    /// The host of `addr` (`[v6]:port` without brackets): the name an `https`/`grpcs`
    /// instance is verified against unless its service names another.
    pub fn host(&self) -> &str {
        let addr = self.addr.as_str();
        if let Some(rest) = addr.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        addr.rsplit_once(':').map_or(addr, |(host, _)| host)
    }
}

impl CanonicalRecord {
    pub(super) fn into_spec(self, id: &str) -> Result<InstanceSpec, DecodeError> {
        let raw = self.addr.ok_or(DecodeError::MissingAddr)?;
        let (url_scheme, addr) = split_address(&raw)?;
        let weight = self.weight.unwrap_or(DEFAULT_WEIGHT);
        if weight > MAX_WEIGHT {
            return Err(DecodeError::WeightTooHigh(weight));
        }
        Ok(InstanceSpec {
            id: id.to_string(),
            addr,
            status: self.status,
            weight,
            version: self.version,
            zone: self.zone,
            tags: self.tags,
            metadata: self.metadata,
            scheme: self.scheme.or(url_scheme).unwrap_or_default(),
        })
    }
}

/// Splits `http://host:port/` or `host:port` into an optional scheme and `host:port`.
fn split_address(raw: &str) -> Result<(Option<Scheme>, String), DecodeError> {
    let raw = raw.trim();
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, rest)) => {
            let scheme = match s.to_ascii_lowercase().as_str() {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                "grpc" => Scheme::Grpc,
                "grpcs" => Scheme::Grpcs,
                _ => return Err(DecodeError::BadAddr(raw.to_string())),
            };
            (Some(scheme), rest)
        }
        None => (None, raw),
    };
    let host_port = rest.split('/').next().unwrap_or_default();
    let valid = match host_port.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    if !valid || host_port.contains(char::is_whitespace) {
        return Err(DecodeError::BadAddr(raw.to_string()));
    }
    Ok((scheme, host_port.to_string()))
}

/// Decodes a canonical registry value: a JSON object, or a plain `host:port` / URL string.
pub fn decode_value(id: &str, value: &[u8]) -> Result<InstanceSpec, DecodeError> {
    let text = std::str::from_utf8(value).map_err(|e| DecodeError::Syntax(e.to_string()))?;
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let record: CanonicalRecord =
            serde_json::from_str(trimmed).map_err(|e| DecodeError::Syntax(e.to_string()))?;
        return record.into_spec(id);
    }
    // A JSON string literal or a bare address.
    let addr = match serde_json::from_str::<String>(trimmed) {
        Ok(s) => s,
        Err(_) => trimmed.to_string(),
    };
    let (scheme, addr) = split_address(&addr)?;
    Ok(InstanceSpec {
        id: id.to_string(),
        addr,
        status: Status::Up,
        weight: DEFAULT_WEIGHT,
        version: None,
        zone: None,
        tags: Vec::new(),
        metadata: Default::default(),
        scheme: scheme.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_with_every_field() {
        let v = br#"{"addr":"10.0.0.5:8080","status":"UP","weight":100,"version":"1.4.2",
            "zone":"eu-west-1a","tags":["canary"],"metadata":{"team":"pay"},"scheme":"http","extra":1}"#;
        let spec = decode_value("i-1", v).unwrap();
        assert_eq!(spec.addr, "10.0.0.5:8080");
        assert_eq!(spec.status, Status::Up);
        assert_eq!(spec.weight, 100);
        assert_eq!(spec.version.as_deref(), Some("1.4.2"));
        assert_eq!(spec.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(spec.tags, vec!["canary"]);
        assert_eq!(spec.metadata["team"], "pay");
        assert_eq!(spec.scheme, Scheme::Http);
    }

    #[test]
    fn defaults_and_statuses() {
        let spec = decode_value("x", br#"{"addr":"127.0.0.1:1"}"#).unwrap();
        assert_eq!((spec.status, spec.weight), (Status::Up, 100));
        let spec = decode_value("x", br#"{"addr":"127.0.0.1:1","status":"DRAINING"}"#).unwrap();
        assert_eq!(spec.status, Status::Draining);
        assert!(decode_value("x", br#"{"addr":"127.0.0.1:1","status":"SLEEPY"}"#).is_err());
    }

    #[test]
    fn plain_addresses() {
        assert_eq!(
            decode_value("a", b"127.0.0.1:8080").unwrap().addr,
            "127.0.0.1:8080"
        );
        let spec = decode_value("a", b"https://svc.local:8443/").unwrap();
        assert_eq!(
            (spec.addr.as_str(), spec.scheme),
            ("svc.local:8443", Scheme::Https)
        );
        assert_eq!(
            decode_value("a", br#""10.1.1.1:80""#).unwrap().addr,
            "10.1.1.1:80"
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert_eq!(decode_value("a", b"{}"), Err(DecodeError::MissingAddr));
        assert!(matches!(
            decode_value("a", b"not an address"),
            Err(DecodeError::BadAddr(_))
        ));
        assert!(matches!(
            decode_value("a", b"{\"addr\":"),
            Err(DecodeError::Syntax(_))
        ));
        assert!(matches!(
            decode_value("a", b"host:99999"),
            Err(DecodeError::BadAddr(_))
        ));
        assert_eq!(
            decode_value("a", br#"{"addr":"1.2.3.4:5","weight":10001}"#),
            Err(DecodeError::WeightTooHigh(10001))
        );
    }
}

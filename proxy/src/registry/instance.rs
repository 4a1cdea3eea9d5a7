//! One registered instance and the canonical value format (JSON object or plain address).

use serde::{Deserialize, Serialize};

/// Registration status; only `Up` receives traffic. Read in any case (`UP`, `up`, `Up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Status {
    #[default]
    #[serde(rename = "UP")]
    Up,
    #[serde(rename = "STARTING")]
    Starting,
    #[serde(rename = "DOWN")]
    Down,
    #[serde(rename = "OUT_OF_SERVICE")]
    OutOfService,
    #[serde(rename = "MAINTENANCE")]
    Maintenance,
    #[serde(rename = "DRAINING")]
    Draining,
}

impl Status {
    const ALL: [Status; 6] = [
        Status::Up,
        Status::Starting,
        Status::Down,
        Status::OutOfService,
        Status::Maintenance,
        Status::Draining,
    ];

    /// The status named `name`, in any case.
    pub fn from_name(name: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

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

/// How the gateway talks to the instance. Read in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
    Grpc,
    Grpcs,
}

impl Scheme {
    /// The scheme named `name`, in any case.
    pub fn from_name(name: &str) -> Option<Scheme> {
        [Scheme::Http, Scheme::Https, Scheme::Grpc, Scheme::Grpcs]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    /// The TLS variant of this scheme (kratos' `isSecure=true`).
    fn secure(self) -> Scheme {
        match self {
            Scheme::Http | Scheme::Https => Scheme::Https,
            Scheme::Grpc | Scheme::Grpcs => Scheme::Grpcs,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Grpc => "grpc",
            Scheme::Grpcs => "grpcs",
        }
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Status::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown status {name:?}: expected UP, STARTING, DOWN, OUT_OF_SERVICE, MAINTENANCE or DRAINING"
            ))
        })
    }
}

impl<'de> Deserialize<'de> for Scheme {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Scheme::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown scheme {name:?}: expected http, https, grpc or grpcs"
            ))
        })
    }
}

/// What real encoders write (SPEC §4): a Go struct without `omitempty` writes `null` or `""`
/// for every unset field, and some write numbers as strings. `null` and `""` read as absent.
mod lenient {
    use serde::{Deserialize, Deserializer};

    use super::{Scheme, Status};

    /// A text field; `null` and `""` are absent.
    pub(super) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
    }

    pub(super) fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
        match text(d)? {
            None => Ok(Status::default()),
            Some(name) => Status::deserialize(serde::de::value::StringDeserializer::new(name)),
        }
    }

    pub(super) fn scheme<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Scheme>, D::Error> {
        text(d)?
            .map(|name| Scheme::deserialize(serde::de::value::StringDeserializer::new(name)))
            .transpose()
    }

    pub(super) fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
    }

    pub(super) fn metadata<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<serde_json::Map<String, serde_json::Value>, D::Error> {
        Ok(Option::deserialize(d)?.unwrap_or_default())
    }

    /// A weight as a number or a numeric string (`100`, `"100"`); `null` and `""` are absent.
    pub(super) fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Weight {
            Number(u64),
            Text(String),
        }
        let invalid = |shown: &str| {
            serde::de::Error::custom(format!("weight {shown} is not a whole number 0-10000"))
        };
        match Option::<Weight>::deserialize(d)? {
            None => Ok(None),
            Some(Weight::Number(n)) => u32::try_from(n)
                .map(Some)
                .map_err(|_| invalid(&n.to_string())),
            Some(Weight::Text(t)) if t.trim().is_empty() => Ok(None),
            Some(Weight::Text(t)) => t
                .trim()
                .parse::<u32>()
                .map(Some)
                .map_err(|_| invalid(&format!("{t:?}"))),
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
    /// The value named its scheme (a `scheme` field, a URL, a format that implies one); when
    /// not, the service's `[services.NAME] scheme` applies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scheme_named: bool,
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

/// The canonical JSON value; every field but `addr` optional, unknown fields ignored, and
/// read as real encoders write it (see `lenient`).
#[derive(Debug, Deserialize)]
pub(super) struct CanonicalRecord {
    #[serde(default, deserialize_with = "lenient::text")]
    pub(super) addr: Option<String>,
    #[serde(default, deserialize_with = "lenient::status")]
    pub(super) status: Status,
    #[serde(default, deserialize_with = "lenient::weight")]
    pub(super) weight: Option<u32>,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(super) version: Option<String>,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(super) zone: Option<String>,
    #[serde(default, deserialize_with = "lenient::tags")]
    pub(super) tags: Vec<String>,
    #[serde(default, deserialize_with = "lenient::metadata")]
    pub(super) metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default, deserialize_with = "lenient::scheme")]
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
            scheme_named: self.scheme.is_some() || url_scheme.is_some(),
            scheme: self.scheme.or(url_scheme).unwrap_or_default(),
        })
    }
}

/// Splits `http://host:port/`, `http://host:port?isSecure=true` (kratos) or `host:port` into
/// an optional scheme and `host:port`. `isSecure=true` in the query means TLS (`https`,
/// `grpcs`).
fn split_address(raw: &str) -> Result<(Option<Scheme>, String), DecodeError> {
    let raw = raw.trim();
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, rest)) => {
            let scheme =
                Scheme::from_name(s).ok_or_else(|| DecodeError::BadAddr(raw.to_string()))?;
            (Some(scheme), rest)
        }
        None => (None, raw),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host_port = &rest[..end];
    let secure = rest[end..]
        .split_once('?')
        .map(|(_, query)| query.split('#').next().unwrap_or(query))
        .is_some_and(|query| {
            query.split('&').any(|pair| {
                pair.split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("isSecure") && v.eq_ignore_ascii_case("true")
                })
            })
        });
    let scheme = if secure {
        Some(scheme.unwrap_or_default().secure())
    } else {
        scheme
    };
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
        scheme_named: scheme.is_some(),
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
    fn what_real_encoders_write_is_read() {
        // A Go struct without omitempty.
        let spec = decode_value(
            "go",
            br#"{"addr":"10.0.0.1:80","status":"","weight":"100","version":"",
                "tags":null,"metadata":null,"zone":"","scheme":""}"#,
        )
        .unwrap();
        assert_eq!(
            (spec.status, spec.weight, spec.scheme),
            (Status::Up, 100, Scheme::Http)
        );
        assert_eq!((spec.version, spec.zone), (None, None));
        assert!(spec.tags.is_empty() && spec.metadata.is_empty());
        for (value, weight) in [
            (&br#"{"addr":"10.0.0.1:80","weight":" 7 "}"#[..], 7),
            (br#"{"addr":"10.0.0.1:80","weight":null}"#, 100),
            (br#"{"addr":"10.0.0.1:80","weight":""}"#, 100),
            (br#"{"addr":"10.0.0.1:80","weight":0}"#, 0),
        ] {
            assert_eq!(decode_value("w", value).unwrap().weight, weight);
        }
        for (value, status) in [
            (&br#"{"addr":"10.0.0.1:80","status":"up"}"#[..], Status::Up),
            (br#"{"addr":"10.0.0.1:80","status":"Down"}"#, Status::Down),
            (br#"{"addr":"10.0.0.1:80","status":null}"#, Status::Up),
            (
                br#"{"addr":"10.0.0.1:80","status":"out_of_service"}"#,
                Status::OutOfService,
            ),
        ] {
            assert_eq!(decode_value("s", value).unwrap().status, status);
        }
        let spec = decode_value("s", br#"{"addr":"10.0.0.1:80","scheme":"GRPC"}"#).unwrap();
        assert_eq!(spec.scheme, Scheme::Grpc);
        for bad in [
            &br#"{"addr":"10.0.0.1:80","weight":"heavy"}"#[..],
            br#"{"addr":"10.0.0.1:80","weight":-1}"#,
            br#"{"addr":"10.0.0.1:80","weight":1.5}"#,
            br#"{"addr":"10.0.0.1:80","status":"SLEEPY"}"#,
            br#"{"addr":"10.0.0.1:80","scheme":"ftp"}"#,
            br#"{"addr":""}"#,
            br#"{"addr":null}"#,
        ] {
            assert!(
                decode_value("b", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn url_addresses_may_carry_a_query() {
        for (value, addr, scheme) in [
            (
                "http://10.0.0.2:8000?isSecure=false",
                "10.0.0.2:8000",
                Scheme::Http,
            ),
            (
                "http://10.0.0.2:8000?isSecure=true",
                "10.0.0.2:8000",
                Scheme::Https,
            ),
            (
                "grpc://10.0.0.2:9000?isSecure=true",
                "10.0.0.2:9000",
                Scheme::Grpcs,
            ),
            (
                "grpc://10.0.0.2:9000?a=b&isSecure=false",
                "10.0.0.2:9000",
                Scheme::Grpc,
            ),
            ("http://h.local:80/?x=1", "h.local:80", Scheme::Http),
            ("HTTPS://h.local:443", "h.local:443", Scheme::Https),
        ] {
            let spec = decode_value("k", value.as_bytes()).unwrap();
            assert_eq!((spec.addr.as_str(), spec.scheme), (addr, scheme), "{value}");
        }
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

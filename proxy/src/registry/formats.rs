//! Registry value formats: the canonical one and those Go frameworks write, each a pure
//! function from (instance id, value bytes) to instances. `auto` sniffs the format.

use serde::Deserialize;

use super::instance::decode_value;
use super::{DecodeError, InstanceSpec, Scheme, Status};

/// How the values under a prefix are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueFormat {
    /// Sniff each value: canonical JSON, a plain address, or one of the framework formats.
    #[default]
    Auto,
    /// `{"addr": …, "status": …, …}` or a plain `host:port` / URL.
    Canonical,
    /// etcd's gRPC naming (`go.etcd.io/etcd/client/v3/naming/endpoints`): `{"Op":0,"Addr":…,"Metadata":…}`.
    GrpcNaming,
    /// kratos: `{"id","name","version","metadata","endpoints":["http://…","grpc://…"]}`.
    Kratos,
    /// go-zero: a plain `host:port` under `<key>/<lease-id>`.
    GoZero,
    /// go-micro: `{"name","version","nodes":[{"id","address","metadata"}]}`.
    GoMicro,
}

impl ValueFormat {
    /// Parses the config spelling (`auto`, `json`, `grpc-naming`, `kratos`, `go-zero`, `go-micro`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "auto" => ValueFormat::Auto,
            "json" | "canonical" => ValueFormat::Canonical,
            "grpc-naming" => ValueFormat::GrpcNaming,
            "kratos" => ValueFormat::Kratos,
            "go-zero" => ValueFormat::GoZero,
            "go-micro" => ValueFormat::GoMicro,
            _ => return None,
        })
    }
}

/// Decodes one registry value of `format` into the instances it describes (go-micro values may
/// list several nodes; a gRPC-naming delete operation lists none).
pub fn decode(
    format: ValueFormat,
    id: &str,
    value: &[u8],
) -> Result<Vec<InstanceSpec>, DecodeError> {
    match format {
        ValueFormat::Canonical | ValueFormat::GoZero => decode_value(id, value).map(|i| vec![i]),
        ValueFormat::GrpcNaming => grpc_naming(id, value),
        ValueFormat::Kratos => kratos(id, value).map(|i| vec![i]),
        ValueFormat::GoMicro => go_micro(value),
        ValueFormat::Auto => decode(sniff(value), id, value),
    }
}

/// Guesses a value's format from its JSON keys.
pub fn sniff(value: &[u8]) -> ValueFormat {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(value)
    else {
        return ValueFormat::Canonical; // a plain address, or garbage the canonical decoder names
    };
    if map.contains_key("Addr") && (map.contains_key("Op") || map.len() <= 3) {
        ValueFormat::GrpcNaming
    } else if map.get("nodes").is_some_and(|n| n.is_array()) {
        ValueFormat::GoMicro
    } else if map.get("endpoints").is_some_and(|e| e.is_array()) {
        ValueFormat::Kratos
    } else {
        ValueFormat::Canonical
    }
}

fn syntax(e: serde_json::Error) -> DecodeError {
    DecodeError::Syntax(e.to_string())
}

fn metadata_of(value: Option<serde_json::Value>) -> serde_json::Map<String, serde_json::Value> {
    match value {
        Some(serde_json::Value::Object(map)) => map,
        Some(serde_json::Value::Null) | None => Default::default(),
        Some(other) => [("value".to_string(), other)].into_iter().collect(),
    }
}

/// Applies the weight, status, zone and tags that frameworks commonly put in metadata.
fn from_metadata(spec: &mut InstanceSpec) {
    let text = |key: &str| {
        spec.metadata.get(key).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    if let Some(w) = text("weight").and_then(|w| w.parse::<u32>().ok()) {
        spec.weight = w.min(super::instance::MAX_WEIGHT);
    }
    if let Some(zone) = text("zone").or_else(|| text("region")) {
        spec.zone.get_or_insert(zone);
    }
    if let Some(status) = text("status") {
        if let Ok(s) = serde_json::from_value::<Status>(serde_json::Value::String(status)) {
            spec.status = s;
        }
    }
}

#[derive(Deserialize)]
struct GrpcNamingValue {
    #[serde(rename = "Op", default)]
    op: u8,
    #[serde(rename = "Addr")]
    addr: String,
    #[serde(rename = "Metadata", default)]
    metadata: Option<serde_json::Value>,
}

fn grpc_naming(id: &str, value: &[u8]) -> Result<Vec<InstanceSpec>, DecodeError> {
    let v: GrpcNamingValue = serde_json::from_slice(value).map_err(syntax)?;
    if v.op == 1 {
        return Ok(Vec::new()); // Delete: the endpoint is gone
    }
    let mut spec = decode_value(id, v.addr.as_bytes())?;
    spec.metadata = metadata_of(v.metadata);
    if spec.scheme == Scheme::Http && !v.addr.contains("://") {
        spec.scheme = Scheme::Grpc; // it is gRPC naming: cleartext gRPC unless a URL says else
        spec.scheme_named = true;
    }
    from_metadata(&mut spec);
    Ok(vec![spec])
}

#[derive(Deserialize)]
struct KratosValue {
    id: Option<String>,
    version: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    endpoints: Vec<String>,
}

fn kratos(id: &str, value: &[u8]) -> Result<InstanceSpec, DecodeError> {
    let v: KratosValue = serde_json::from_slice(value).map_err(syntax)?;
    // An HTTP endpoint when there is one (this is an HTTP gateway), else the first.
    let endpoint = v
        .endpoints
        .iter()
        .find(|e| e.starts_with("http://") || e.starts_with("https://"))
        .or_else(|| v.endpoints.first())
        .ok_or(DecodeError::MissingAddr)?;
    let id = v.id.as_deref().filter(|s| !s.is_empty()).unwrap_or(id);
    let mut spec = decode_value(id, endpoint.as_bytes())?;
    spec.version = v.version.filter(|s| !s.is_empty());
    spec.metadata = metadata_of(v.metadata);
    from_metadata(&mut spec);
    Ok(spec)
}

#[derive(Deserialize)]
struct GoMicroNode {
    id: String,
    address: String,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct GoMicroValue {
    version: Option<String>,
    #[serde(default)]
    nodes: Vec<GoMicroNode>,
}

fn go_micro(value: &[u8]) -> Result<Vec<InstanceSpec>, DecodeError> {
    let v: GoMicroValue = serde_json::from_slice(value).map_err(syntax)?;
    if v.nodes.is_empty() {
        return Err(DecodeError::MissingAddr);
    }
    v.nodes
        .into_iter()
        .map(|node| {
            let mut spec = decode_value(&node.id, node.address.as_bytes())?;
            spec.version = v.version.clone().filter(|s| !s.is_empty());
            spec.metadata = metadata_of(node.metadata);
            if let Some(proto) = spec.metadata.get("protocol").and_then(|p| p.as_str()) {
                if proto == "grpc" {
                    spec.scheme = Scheme::Grpc;
                    spec.scheme_named = true;
                }
            }
            from_metadata(&mut spec);
            Ok(spec)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(format: ValueFormat, id: &str, value: &str) -> InstanceSpec {
        let mut v = decode(format, id, value.as_bytes()).unwrap();
        assert_eq!(v.len(), 1, "{value}");
        v.remove(0)
    }

    #[test]
    fn grpc_naming_add_and_delete() {
        let v = r#"{"Op":0,"Addr":"10.0.0.7:9090","Metadata":{"weight":"30","zone":"b"}}"#;
        for format in [ValueFormat::GrpcNaming, ValueFormat::Auto] {
            let spec = one(format, "10.0.0.7:9090", v);
            assert_eq!(spec.addr, "10.0.0.7:9090");
            assert_eq!(spec.scheme, Scheme::Grpc);
            assert_eq!(spec.weight, 30);
            assert_eq!(spec.zone.as_deref(), Some("b"));
        }
        let deleted = decode(
            ValueFormat::Auto,
            "x",
            br#"{"Op":1,"Addr":"10.0.0.7:9090"}"#,
        )
        .unwrap();
        assert!(deleted.is_empty());
    }

    #[test]
    fn kratos_prefers_the_http_endpoint() {
        let v = r#"{"id":"a1b2","name":"user-svc","version":"v1.2.0","metadata":{"region":"eu"},
                    "endpoints":["grpc://10.0.0.8:9000","http://10.0.0.8:8000"]}"#;
        for format in [ValueFormat::Kratos, ValueFormat::Auto] {
            let spec = one(format, "key-id", v);
            assert_eq!(spec.id, "a1b2");
            assert_eq!(spec.addr, "10.0.0.8:8000");
            assert_eq!(spec.scheme, Scheme::Http);
            assert_eq!(spec.version.as_deref(), Some("v1.2.0"));
            assert_eq!(spec.zone.as_deref(), Some("eu"));
        }
        let grpc_only = one(
            ValueFormat::Kratos,
            "k",
            r#"{"endpoints":["grpc://10.0.0.9:9000"]}"#,
        );
        assert_eq!(
            (grpc_only.addr.as_str(), grpc_only.scheme),
            ("10.0.0.9:9000", Scheme::Grpc)
        );
        assert_eq!(
            decode(ValueFormat::Kratos, "k", br#"{"endpoints":[]}"#),
            Err(DecodeError::MissingAddr)
        );
    }

    #[test]
    fn go_zero_is_a_plain_address() {
        let spec = one(ValueFormat::GoZero, "7587867384950", "10.0.0.9:8080");
        assert_eq!(spec.addr, "10.0.0.9:8080");
        assert_eq!(
            one(ValueFormat::Auto, "7587867384950", "10.0.0.9:8080").addr,
            "10.0.0.9:8080"
        );
    }

    #[test]
    fn go_micro_lists_nodes() {
        let v = r#"{"name":"greeter","version":"latest","metadata":null,"endpoints":null,
                    "nodes":[{"id":"greeter-1","address":"10.0.0.10:8080","metadata":{"protocol":"http"}},
                             {"id":"greeter-2","address":"10.0.0.11:8080","metadata":{"protocol":"grpc"}}]}"#;
        // `endpoints: null` must not fool the sniffer into kratos.
        for format in [ValueFormat::GoMicro, ValueFormat::Auto] {
            let specs = decode(format, "ignored", v.as_bytes()).unwrap();
            assert_eq!(specs.len(), 2);
            assert_eq!(
                (specs[0].id.as_str(), specs[0].addr.as_str()),
                ("greeter-1", "10.0.0.10:8080")
            );
            assert_eq!(specs[1].scheme, Scheme::Grpc);
            assert_eq!(specs[0].version.as_deref(), Some("latest"));
        }
    }

    #[test]
    fn auto_keeps_canonical_and_plain_values() {
        let spec = one(
            ValueFormat::Auto,
            "i",
            r#"{"addr":"127.0.0.1:1","weight":5,"status":"DOWN"}"#,
        );
        assert_eq!((spec.weight, spec.status), (5, Status::Down));
        assert_eq!(
            one(ValueFormat::Auto, "i", "http://127.0.0.1:2").addr,
            "127.0.0.1:2"
        );
        assert!(decode(ValueFormat::Auto, "i", b"{not json").is_err());
        assert!(decode(ValueFormat::Auto, "i", br#"{"weight":5}"#).is_err());
    }

    #[test]
    fn format_names() {
        assert_eq!(
            ValueFormat::from_name("go-micro"),
            Some(ValueFormat::GoMicro)
        );
        assert_eq!(ValueFormat::from_name("json"), Some(ValueFormat::Canonical));
        assert_eq!(ValueFormat::from_name("yaml"), None);
    }
}

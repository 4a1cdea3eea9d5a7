//! The file registry: a TOML file of instances, polled and re-read when its content changes.
//! An edit is applied once it has been stable for one poll (debounce against half-written
//! saves); a broken edit is refused with one log line and the last good instances keep serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::watch;

use super::instance::{CanonicalRecord, DEFAULT_WEIGHT};
use super::{InstanceSpec, RegistrySource, Scheme, Status, Update, UpdateSink};

/// How often the file is looked at; an edit lands within two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesFile {
    #[serde(default)]
    services: BTreeMap<String, ServiceEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    #[serde(default)]
    instances: Vec<InstanceEntry>,
}

/// The canonical value's fields plus `id`; unknown keys refused, since people type these.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceEntry {
    id: Option<String>,
    addr: Option<String>,
    #[serde(default)]
    status: Status,
    weight: Option<u32>,
    version: Option<String>,
    zone: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    scheme: Option<Scheme>,
}

/// Parses a services file; an error names the file, the key and the reason.
pub fn parse_services_file(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, Vec<InstanceSpec>>, String> {
    let file: ServicesFile = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            format!(
                "{}:{line}: {key}: {}",
                path.display(),
                inner.message().trim()
            )
        })?;
    let mut services = BTreeMap::new();
    for (name, entry) in file.services {
        let mut seen = std::collections::HashSet::new();
        let mut instances = Vec::with_capacity(entry.instances.len());
        for (i, inst) in entry.instances.into_iter().enumerate() {
            let key = format!("services.{name}.instances[{i}]");
            let id = inst
                .id
                .clone()
                .or_else(|| inst.addr.clone())
                .unwrap_or_default();
            let record = CanonicalRecord {
                addr: inst.addr,
                status: inst.status,
                weight: Some(inst.weight.unwrap_or(DEFAULT_WEIGHT)),
                version: inst.version,
                zone: inst.zone,
                tags: inst.tags,
                metadata: inst.metadata,
                scheme: inst.scheme,
            };
            let spec = record
                .into_spec(&id)
                .map_err(|e| format!("{}: {key}: {e}", path.display()))?;
            if !seen.insert(spec.id.clone()) {
                return Err(format!(
                    "{}: {key}.id: duplicate id {:?}",
                    path.display(),
                    spec.id
                ));
            }
            instances.push(spec);
        }
        services.insert(name, instances);
    }
    Ok(services)
}

/// Watches a services file.
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

#[async_trait]
impl RegistrySource for FileSource {
    fn name(&self) -> &str {
        "file"
    }

    async fn run(&self, sink: UpdateSink, mut shutdown: watch::Receiver<bool>) {
        let mut revision = 0i64;
        // Content last applied, and content seen on the previous poll (for the debounce).
        let mut applied: Option<Vec<u8>> = None;
        let mut pending: Option<Vec<u8>> = None;
        let mut last_error: Option<String> = None;
        loop {
            match tokio::fs::read(&self.path).await {
                Ok(content) => {
                    let first = applied.is_none() && revision == 0;
                    let changed = applied.as_ref() != Some(&content);
                    // Apply at once on the first read; later edits once stable for one poll.
                    if changed && (first || pending.as_ref() == Some(&content)) {
                        let text = String::from_utf8_lossy(&content);
                        match parse_services_file(&self.path, &text) {
                            Ok(services) => {
                                revision += 1;
                                tracing::info!(
                                    path = %self.path.display(),
                                    services = services.len(),
                                    "services file loaded"
                                );
                                if !sink.send(revision, Update::Reset { services }).await {
                                    return;
                                }
                                sink.set_connected(true);
                                last_error = None;
                            }
                            Err(e) => {
                                if last_error.as_ref() != Some(&e) {
                                    tracing::error!(
                                        "services file refused, last good instances keep serving: {e}"
                                    );
                                    last_error = Some(e);
                                }
                                if first {
                                    // Nothing good yet: still count the source as synced, empty.
                                    revision += 1;
                                    if !sink
                                        .send(
                                            revision,
                                            Update::Reset {
                                                services: BTreeMap::new(),
                                            },
                                        )
                                        .await
                                    {
                                        return;
                                    }
                                }
                            }
                        }
                        applied = Some(content);
                        pending = None;
                    } else if changed {
                        pending = Some(content);
                    } else {
                        pending = None;
                    }
                }
                Err(e) => {
                    let msg = format!("{}: cannot read: {e}", self.path.display());
                    if last_error.as_ref() != Some(&msg) {
                        tracing::error!(
                            "services file unreadable, last good instances keep serving: {msg}"
                        );
                        last_error = Some(msg);
                    }
                    if revision == 0 {
                        revision += 1;
                        if !sink
                            .send(
                                revision,
                                Update::Reset {
                                    services: BTreeMap::new(),
                                },
                            )
                            .await
                        {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example() {
        let text = r#"
[services.user-svc]
instances = [
  { id = "a", addr = "127.0.0.1:9001" },
  { id = "b", addr = "127.0.0.1:9002", weight = 50, tags = ["canary"] },
]
"#;
        let services = parse_services_file(Path::new("s.toml"), text).unwrap();
        let user = &services["user-svc"];
        assert_eq!(user.len(), 2);
        assert_eq!(user[1].weight, 50);
        assert_eq!(user[1].tags, vec!["canary"]);
        assert_eq!(user[0].weight, 100);
    }

    #[test]
    fn errors_name_file_and_key() {
        let text = "[services.a]\ninstances = [ { id = \"x\", addr = \"nope\" } ]\n";
        let err = parse_services_file(Path::new("s.toml"), text).unwrap_err();
        assert!(
            err.starts_with("s.toml: services.a.instances[0]: bad address"),
            "{err}"
        );
        let text = "[services.a]\ninstances = [ { id = \"x\", adr = \"1.1.1.1:1\" } ]\n";
        let err = parse_services_file(Path::new("s.toml"), text).unwrap_err();
        assert!(err.contains("s.toml:2: services.a.instances[0]"), "{err}");
        assert!(err.contains("unknown field `adr`"), "{err}");
    }
}

//! The last known instances of every service, kept on disk so that a gateway restarted while
//! its registry is unreachable still serves. Written atomically (temp file + rename).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::InstanceSpec;

const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// The registry source the state came from (e.g. `etcd`).
    source: String,
    services: BTreeMap<String, Vec<InstanceSpec>>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a sluice state file: {reason}")]
    Format { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `services` to `path` atomically: a reader sees the old or the new file, whole.
pub fn save_state(
    path: &Path,
    source: &str,
    services: BTreeMap<String, Vec<InstanceSpec>>,
) -> Result<(), StateFileError> {
    let state = StateFile {
        version: STATE_VERSION,
        source: source.to_string(),
        services,
    };
    let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StateFileError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(path))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Reads a state file written by [`save_state`] for `source`.
pub fn load_state(
    path: &Path,
    source: &str,
) -> Result<BTreeMap<String, Vec<InstanceSpec>>, StateFileError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| StateFileError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if state.version != STATE_VERSION || state.source != source {
        return Err(StateFileError::Format {
            path: path.display().to_string(),
            reason: format!("version {} of source {:?}", state.version, state.source),
        });
    }
    Ok(state.services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::decode_value;

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let mut spec = decode_value(
            "a",
            br#"{"addr":"127.0.0.1:1","tags":["x"],"status":"DRAINING"}"#,
        )
        .unwrap();
        spec.metadata.insert("k".into(), "v".into());
        let services: BTreeMap<_, _> = [("svc".to_string(), vec![spec.clone()])].into();
        save_state(&path, "etcd", services.clone()).unwrap();
        assert_eq!(load_state(&path, "etcd").unwrap(), services);
        assert!(
            load_state(&path, "file").is_err(),
            "another source's state is not used"
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            load_state(&path, "etcd"),
            Err(StateFileError::Format { .. })
        ));
    }
}

//! `key-auth`: an API key from a header, a query parameter or a cookie names a consumer (inline
//! `consumers`, or a `consumers_file` read again on reload). Keys are kept as their SHA-256
//! (given as `key` or `key_sha256`) and looked up by the digest of the presented key, so no
//! comparison runs on the key itself: how long a lookup takes can tell at most how much of a
//! stored digest the presented key's digest shares, which is no help in finding a key with
//! that digest. The key is removed before forwarding and
//! `x-consumer` is set to the consumer's name (a client's own `x-consumer` never passes).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::credential::{self, CredentialSource};
use super::{read, reject, Consumer, FilterError};
use crate::gateway::engine::filters::{Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    from: Option<String>,
    consumers: Option<Vec<ConsumerEntry>>,
    consumers_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerEntry {
    name: String,
    key: Option<String>,
    key_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumersFile {
    consumers: Vec<ConsumerEntry>,
}

/// One `key-auth` filter.
#[derive(Debug)]
pub(super) struct KeyAuth {
    name: String,
    from: CredentialSource,
    /// Consumer name by key digest.
    consumers: HashMap<[u8; 32], Consumer, BuildHasherDefault<DigestPrefix>>,
}

/// Hashes a key digest by its first eight bytes. A SHA-256 is uniform already, and the table
/// holds only the configured digests, so no presented key can crowd a bucket: SipHash over
/// the 32 bytes would cost more than the rest of the lookup.
#[derive(Default)]
struct DigestPrefix(u64);

impl Hasher for DigestPrefix {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(prefix) = bytes.first_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*prefix);
        }
    }

    /// The array's length prefix: the same for every key.
    fn write_usize(&mut self, _: usize) {}
}

impl KeyAuth {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let from_text = settings.from.as_deref().unwrap_or("header:X-Api-Key");
        let from = CredentialSource::parse(from_text).ok_or_else(|| {
            FilterError::new(
                name,
                "from",
                format!("{from_text:?}: expected {}", credential::FORMS),
            )
        })?;
        let (listed, key) = match (settings.consumers, &settings.consumers_file) {
            (Some(consumers), None) => (consumers, "consumers".to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    FilterError::new(
                        name,
                        "consumers_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let file: ConsumersFile = toml::from_str(&text).map_err(|e| {
                    FilterError::new(
                        name,
                        "consumers_file",
                        format!("{}: {}", path.display(), e.message().trim()),
                    )
                })?;
                (
                    file.consumers,
                    format!("consumers_file ({})", path.display()),
                )
            }
            (Some(_), Some(_)) => {
                return Err(FilterError::new(
                    name,
                    "consumers",
                    "give consumers or consumers_file, not both",
                ))
            }
            (None, None) => {
                return Err(FilterError::new(
                    name,
                    "consumers",
                    "required (or consumers_file)",
                ))
            }
        };
        let mut consumers = HashMap::with_capacity_and_hasher(listed.len(), Default::default());
        for (i, consumer) in listed.into_iter().enumerate() {
            let at = |field: &str| format!("{key}[{i}].{field}");
            let digest = match (&consumer.key, &consumer.key_sha256) {
                (Some(key), None) if !key.is_empty() => Sha256::digest(key.as_bytes()).into(),
                (None, Some(hex_digest)) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hex_digest.trim(), &mut digest).map_err(|_| {
                        FilterError::new(name, at("key_sha256"), "expected 64 hexadecimal digits")
                    })?;
                    digest
                }
                (Some(_), None) => {
                    return Err(FilterError::new(name, at("key"), "must not be empty"))
                }
                _ => {
                    return Err(FilterError::new(
                        name,
                        at("key"),
                        "give key or key_sha256 (one)",
                    ))
                }
            };
            let known = Consumer::new(&consumer.name).ok_or_else(|| {
                FilterError::new(name, at("name"), "must be a non-empty header value")
            })?;
            if consumers.insert(digest, known).is_some() {
                return Err(FilterError::new(
                    name,
                    at("key"),
                    "the same key as an earlier consumer",
                ));
            }
        }
        Ok(Self {
            name: name.to_string(),
            from,
            consumers,
        })
    }
}

impl Filter for KeyAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        let Some(key) = self.from.presented(request) else {
            return Verdict::Answer(reject(
                401,
                format!(
                    "sluice: an API key is required ({})\n",
                    self.from.describe()
                ),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(key).into();
        let Some(consumer) = self.consumers.get(&digest) else {
            return Verdict::Answer(reject(
                401,
                "sluice: the API key is not valid\n".to_string(),
            ));
        };
        self.from.remove(request, state);
        consumer.admit(state);
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_are_checked() {
        let table: toml::Table = toml::from_str(
            "consumers = [{ name = \"a\", key = \"k1\" }, { name = \"b\", key_sha256 = \"zz\" }]",
        )
        .unwrap();
        let error = KeyAuth::build("keys", &table).unwrap_err();
        assert_eq!(
            error.to_string(),
            "filters.keys.consumers[1].key_sha256: expected 64 hexadecimal digits"
        );
        let table: toml::Table = toml::from_str(
            "consumers = [{ name = \"a\", key = \"k1\" }, { name = \"b\", key = \"k1\" }]",
        )
        .unwrap();
        assert!(KeyAuth::build("keys", &table).is_err());
        let table: toml::Table =
            toml::from_str("consumers = [{ name = \"a\", key = \"k1\", extra = 1 }]").unwrap();
        let error = KeyAuth::build("keys", &table).unwrap_err();
        assert!(error.to_string().contains("consumers[0]"), "{error}");
    }
}

//! `basic-auth`: `Authorization: Basic` credentials checked against an htpasswd file as
//! Apache's `htpasswd` writes it — bcrypt (`-B`: `$2y$`, `$2b$`, `$2a$`) and SHA-256 / SHA-512
//! crypt (`-2`, `-5`: `$5$`, `$6$`) lines; other schemes (`$apr1$` MD5, `{SHA}`, plain crypt)
//! are refused at load with their line. A request without valid credentials is answered 401
//! with `WWW-Authenticate: Basic realm="…"`. The credentials are removed before forwarding
//! and `x-consumer` is set to the user (a client's own never passes).
//!
//! A bcrypt check costs milliseconds of CPU by design: it runs on the blocking pool, never on
//! the shard's thread, and credentials that passed are remembered (by their SHA-256, so no
//! password is kept) until the file is read again, so a client's next requests cost a hash.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use http::HeaderValue;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{read, reject, Consumer, FilterError, AUTHORIZATION};
use crate::gateway::engine::filters::{Filter, FilterState, HeaderEdits, Later, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::failure::Answer;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    htpasswd: PathBuf,
    realm: Option<String>,
}

/// Verified credentials remembered at most.
const REMEMBERED: usize = 10_000;

/// How a user's password is stored.
#[derive(Debug, Clone)]
enum Hash {
    Bcrypt(String),
    ShaCrypt(String),
}

impl Hash {
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            Hash::ShaCrypt(hash) => {
                use sha_crypt::PasswordVerifier;
                sha_crypt::ShaCrypt::default()
                    .verify_password(password, hash.as_str())
                    .is_ok()
            }
        }
    }
}

#[derive(Debug)]
struct User {
    consumer: Consumer,
    hash: Hash,
}

/// One `basic-auth` filter.
#[derive(Debug)]
pub(super) struct BasicAuth {
    name: String,
    users: Arc<HashMap<String, User>>,
    challenge: HeaderValue,
    /// SHA-256 of `user:password` pairs that passed.
    passed: Arc<papaya::HashMap<[u8; 32], ()>>,
}

/// Reads an htpasswd file: `user:hash` lines, `#` comments and blank lines skipped.
fn parse_htpasswd(
    name: &str,
    path: &std::path::Path,
) -> Result<HashMap<String, User>, FilterError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        FilterError::new(
            name,
            "htpasswd",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let Some((user, hash)) = line.split_once(':') else {
            return Err(FilterError::new(
                name,
                "htpasswd",
                format!("{}: expected user:hash", at()),
            ));
        };
        let hash = if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            Hash::Bcrypt(hash.to_string())
        } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
            Hash::ShaCrypt(hash.to_string())
        } else {
            let scheme = if hash.starts_with("$apr1$") {
                "MD5 ($apr1$)"
            } else if hash.starts_with("{SHA}") {
                "SHA-1 ({SHA})"
            } else {
                "this scheme"
            };
            return Err(FilterError::new(
                name,
                "htpasswd",
                format!(
                    "{}: user {user:?}: {scheme} is not accepted: use bcrypt (htpasswd -B) or SHA-256/512 crypt (-2, -5)",
                    at()
                ),
            ));
        };
        let consumer = Consumer::new(user).ok_or_else(|| {
            FilterError::new(name, "htpasswd", format!("{}: bad user name", at()))
        })?;
        users.insert(user.to_string(), User { consumer, hash });
    }
    Ok(users)
}

impl BasicAuth {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let users = parse_htpasswd(name, &settings.htpasswd)?;
        let realm = settings.realm.unwrap_or_else(|| "sluice".to_string());
        if realm.contains('"') || realm.contains('\\') {
            return Err(FilterError::new(
                name,
                "realm",
                "must not contain quotes or backslashes",
            ));
        }
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .map_err(|_| FilterError::new(name, "realm", "not usable in a header"))?;
        Ok(Self {
            name: name.to_string(),
            users: Arc::new(users),
            challenge,
            passed: Arc::new(papaya::HashMap::new()),
        })
    }

    fn refusal(&self, why: &str) -> Answer {
        let mut answer = reject(401, format!("sluice: {why}\n"));
        answer
            .headers
            .push((http::header::WWW_AUTHENTICATE, self.challenge.clone()));
        answer
    }
}

/// The user and password of `Authorization: Basic …` (the scheme in any case).
fn credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The edits of a request that passed as `user`.
fn passed_edits(user: &User) -> HeaderEdits {
    let mut edits = HeaderEdits::default();
    edits.remove(AUTHORIZATION);
    user.consumer.set_header(&mut edits);
    edits
}

impl Filter for BasicAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        let Some((user_name, password)) = request.field("authorization").and_then(credentials)
        else {
            return Verdict::Answer(
                self.refusal("credentials are required (Authorization: Basic)"),
            );
        };
        let Some(user) = self.users.get(&user_name) else {
            return Verdict::Answer(self.refusal("the user name or password is not valid"));
        };
        let digest: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(user_name.as_bytes());
            h.update(b":");
            h.update(&password);
            h.finalize().into()
        };
        if self.passed.pin().contains_key(&digest) {
            state.upstream.remove(AUTHORIZATION);
            user.consumer.admit(state);
            return Verdict::Continue;
        }
        // The slow check, off the shard's thread.
        let (users, passed) = (self.users.clone(), self.passed.clone());
        let refusal = self.refusal("the user name or password is not valid");
        let name = user.consumer.name.clone();
        Verdict::Later(Box::pin(async move {
            let check = tokio::task::spawn_blocking(move || {
                let user = users.get(&user_name)?;
                user.hash.verify(&password).then(|| passed_edits(user))
            });
            match check.await.ok().flatten() {
                Some(upstream) => {
                    let remembered = passed.pin();
                    if remembered.len() < REMEMBERED {
                        remembered.insert(digest, ());
                    }
                    Later {
                        upstream,
                        consumer: Some(name),
                        ..Later::default()
                    }
                }
                None => Later::answer(refusal),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_in_any_case() {
        let value = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("ann:pa:ss")
        );
        let (user, password) = credentials(value.as_bytes()).unwrap();
        assert_eq!((user.as_str(), password.as_slice()), ("ann", &b"pa:ss"[..]));
        assert!(credentials(b"Bearer x").is_none());
        assert!(credentials(b"Basic !!!").is_none());
    }

    #[test]
    fn hashes_verify() {
        let bcrypt = Hash::Bcrypt(bcrypt::hash("secret", 4).unwrap());
        assert!(bcrypt.verify(b"secret") && !bcrypt.verify(b"wrong"));
        // Python's `crypt.crypt("secret", "$6$saltsalt")`
        let sha = Hash::ShaCrypt(
            "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1".into(),
        );
        assert!(sha.verify(b"secret") && !sha.verify(b"wrong"));
    }
}

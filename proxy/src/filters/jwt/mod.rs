//! `jwt`: a JSON Web Token (RFC 7519) from `Authorization: Bearer …` (or another header, a
//! query parameter, a cookie) must carry a valid signature by one of the filter's keys —
//! PEM public keys, an HMAC secret, or a JWKS file or `https://` URL kept current in the
//! background — and pass the claim checks: `exp` and `nbf` always (with `leeway`), `iss`
//! and `aud` when configured. The token's `alg` must be one the filter accepts and one its
//! key verifies: `none` is never accepted, and an RSA or EC key never checks an HMAC
//! signature (the HS/RS confusion). `kid` selects the key when the set has that id.
//!
//! A request that passes goes on as the token's `sub` (the consumer, and `x-consumer`
//! upstream), with `claims_to_headers` set from the claims (a client's own fields of those
//! names never pass) and, unless `forward_token = true`, without the token. One that does
//! not is answered 401 with `WWW-Authenticate: Bearer error="invalid_token"`; while a JWKS
//! URL has not answered yet, 503.

mod keys;
mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use self::keys::KeySet;
use self::source::KeyCell;
use super::credential::{self, CredentialSource};
use super::{read, reject, Consumer, FilterError, CONSUMER_HEADER};
use crate::gateway::engine::filters::{EditName, Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::failure::Answer;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    keys: Option<Vec<PathBuf>>,
    secret_file: Option<PathBuf>,
    jwks: Option<String>,
    jwks_refresh: Option<String>,
    algorithms: Option<Vec<String>>,
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
    leeway: Option<String>,
    from: Option<String>,
    claims_to_headers: Option<BTreeMap<String, String>>,
    forward_token: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

/// Every algorithm a key can verify, in the order `algorithms` errors list them.
const ALL: [Algorithm; 12] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
];

const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// One `jwt` filter.
pub(super) struct Jwt {
    name: String,
    from: CredentialSource,
    /// The bearer scheme is required (the default, `Authorization`).
    bearer: bool,
    keys: Arc<KeyCell>,
    /// A JWKS URL's refresher, asked for an early fetch when a token names an unknown `kid`.
    refresh: Option<Arc<Notify>>,
    /// `None`: whatever the keys verify.
    algorithms: Option<Vec<Algorithm>>,
    issuers: Vec<String>,
    audience: Vec<String>,
    leeway: u64,
    claims_to_headers: Vec<(String, EditName)>,
    forward_token: bool,
    /// Signature-only checks per algorithm (the claims are checked here, in one place).
    validations: Vec<(Algorithm, Validation)>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("name", &self.name)
            .field("from", &self.from)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

const CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer error=\"invalid_token\"");

impl Jwt {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let error = |key: &str, reason: String| FilterError::new(name, key, reason);
        let from_text = settings.from.as_deref().unwrap_or("header:Authorization");
        let from = CredentialSource::parse(from_text).ok_or_else(|| {
            error(
                "from",
                format!("{from_text:?}: expected {}", credential::FORMS),
            )
        })?;
        let bearer = matches!(&from, CredentialSource::Header(h) if h.header() == http::header::AUTHORIZATION);

        let mut refresh = None;
        let mut refresh_every = None;
        if let Some(text) = &settings.jwks_refresh {
            use std::ops::Bound::{Included, Unbounded};
            let at_least = (Included(Duration::from_secs(10)), Unbounded);
            let every = super::duration_in(name, "jwks_refresh", text, at_least)?;
            refresh_every = Some(every);
        }
        let keys: Option<KeySet> = match (&settings.jwks, &settings.keys, &settings.secret_file) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(error(
                    "jwks",
                    "give jwks, or keys / secret_file, not both".into(),
                ))
            }
            (None, None, None) => {
                return Err(error(
                    "keys",
                    "required: keys = [\"FILE.pem\", …], secret_file or jwks".into(),
                ))
            }
            (Some(jwks), None, None) if jwks.starts_with("https://") => {
                let url: http::Uri = jwks
                    .parse()
                    .map_err(|_| error("jwks", format!("{jwks:?} is not a URL")))?;
                if url.host().is_none() {
                    return Err(error("jwks", format!("{jwks:?} names no host")));
                }
                refresh = Some(Arc::new(Notify::new()));
                None
            }
            (Some(jwks), None, None) if jwks.starts_with("http://") => {
                return Err(error(
                    "jwks",
                    "keys over plain http could be replaced on the way: use an https URL or a file"
                        .into(),
                ))
            }
            (Some(jwks), None, None) => {
                Some(source::read_file(std::path::Path::new(jwks)).map_err(|e| error("jwks", e))?)
            }
            (None, files, secret) => {
                let mut set = KeySet::default();
                for (i, path) in files.iter().flatten().enumerate() {
                    set.keys
                        .push(keys::read_pem(path).map_err(|e| error(&format!("keys[{i}]"), e))?);
                }
                if let Some(path) = secret {
                    set.keys
                        .push(keys::read_secret(path).map_err(|e| error("secret_file", e))?);
                }
                if set.keys.is_empty() {
                    return Err(error("keys", "must name at least one key file".into()));
                }
                Some(set)
            }
        };
        if refresh_every.is_some() && refresh.is_none() {
            return Err(error(
                "jwks_refresh",
                "only used with jwks = \"https://…\"".into(),
            ));
        }

        let algorithms = match settings.algorithms {
            None => None,
            Some(names) => {
                let mut algorithms = Vec::new();
                for (i, text) in names.iter().enumerate() {
                    let key = format!("algorithms[{i}]");
                    if text.eq_ignore_ascii_case("none") {
                        return Err(error(
                            &key,
                            "\"none\" (an unsigned token) is never accepted".into(),
                        ));
                    }
                    let alg = ALL
                        .into_iter()
                        .find(|a| format!("{a:?}") == *text)
                        .ok_or_else(|| {
                            error(
                                &key,
                                format!("{text:?}: expected one of {}", names_of(&ALL)),
                            )
                        })?;
                    if let Some(set) = &keys {
                        if !set.algorithms().contains(&alg) {
                            return Err(error(
                                &key,
                                format!(
                                    "no key of this filter verifies {text} (they verify {})",
                                    names_of(&set.algorithms())
                                ),
                            ));
                        }
                    }
                    algorithms.push(alg);
                }
                if algorithms.is_empty() {
                    return Err(error("algorithms", "must not be empty".into()));
                }
                Some(algorithms)
            }
        };

        let leeway = match &settings.leeway {
            None => DEFAULT_LEEWAY,
            Some(text) => {
                use std::ops::Bound::{Included, Unbounded};
                super::duration_in(name, "leeway", text, (Included(Duration::ZERO), Unbounded))?
            }
        };
        let mut claims_to_headers = Vec::new();
        for (claim, header) in settings.claims_to_headers.unwrap_or_default() {
            let header = HeaderName::from_bytes(header.trim().as_bytes()).map_err(|_| {
                error(
                    &format!("claims_to_headers.{claim}"),
                    format!("{header:?} is not a header name"),
                )
            })?;
            claims_to_headers.push((claim, EditName::intern(&header)));
        }
        let issuers = settings.issuer.map(OneOrMany::into_vec).unwrap_or_default();
        let audience = settings
            .audience
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if issuers.iter().chain(&audience).any(|v| v.is_empty()) {
            return Err(error(
                "issuer",
                "issuer and audience values must not be empty".into(),
            ));
        }

        let cell = Arc::new(KeyCell::new(keys.map(Arc::new)));
        if let Some(wanted) = &refresh {
            source::refresh_url(
                name.to_string(),
                settings.jwks.clone().unwrap_or_default(),
                refresh_every.unwrap_or(DEFAULT_REFRESH),
                Arc::downgrade(&cell),
                wanted.clone(),
            );
        } else if let Some(path) = &settings.jwks {
            source::watch_file(name.to_string(), PathBuf::from(path), Arc::downgrade(&cell));
        }
        Ok(Self {
            name: name.to_string(),
            from,
            bearer,
            keys: cell,
            refresh,
            algorithms,
            issuers,
            audience,
            leeway: leeway.as_secs(),
            claims_to_headers,
            forward_token: settings.forward_token.unwrap_or(false),
            validations: ALL
                .into_iter()
                .map(|alg| (alg, signature_only(alg)))
                .collect(),
        })
    }

    fn refusal(&self, why: &str) -> Answer {
        let mut answer = reject(401, format!("sluice: {why}\n"));
        answer
            .headers
            .push((http::header::WWW_AUTHENTICATE, CHALLENGE));
        answer
    }

    /// The token as presented, without its scheme.
    fn token<'r>(&self, request: &'r dyn RequestView) -> Option<&'r str> {
        let value = std::str::from_utf8(self.from.presented(request)?)
            .ok()?
            .trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or(("", value));
        let token = if scheme.eq_ignore_ascii_case("bearer") {
            rest.trim()
        } else if self.bearer {
            return None;
        } else {
            value
        };
        (!token.is_empty()).then_some(token)
    }

    /// The claims of a token whose signature one of `keys` verifies.
    fn verify(&self, token: &str, keys: &KeySet) -> Result<Map<String, Value>, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            "the token is malformed or names an algorithm never accepted".to_string()
        })?;
        let alg = header.alg;
        if self.algorithms.as_ref().is_some_and(|a| !a.contains(&alg)) {
            return Err(format!("algorithm {alg:?} is not accepted"));
        }
        let kid = header.kid.as_deref();
        if let (Some(kid), Some(wanted)) = (kid, &self.refresh) {
            if !keys.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                wanted.notify_one();
            }
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("algorithm {alg:?} is not accepted"))?;
        let mut tried = false;
        for key in keys.candidates(alg, kid) {
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(_) => return Err("the token is malformed".to_string()),
            }
        }
        Err(if tried {
            "the token's signature is not valid".to_string()
        } else {
            format!("no key of this gateway verifies {alg:?} tokens")
        })
    }

    /// `exp`, `nbf`, `iss` and `aud`, at `now` (seconds since the epoch).
    fn check_claims(&self, claims: &Map<String, Value>, now: f64) -> Result<(), &'static str> {
        let leeway = self.leeway as f64;
        let time = |name: &str| -> Result<Option<f64>, &'static str> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or("a time claim is not a number"),
            }
        };
        if time("exp")?.is_some_and(|exp| now > exp + leeway) {
            return Err("the token has expired");
        }
        if time("nbf")?.is_some_and(|nbf| now + leeway < nbf) {
            return Err("the token is not valid yet");
        }
        if !self.issuers.is_empty() {
            let issuer = claims.get("iss").and_then(Value::as_str);
            if !issuer.is_some_and(|iss| self.issuers.iter().any(|i| i == iss)) {
                return Err("the token's issuer is not accepted");
            }
        }
        if !self.audience.is_empty() {
            let accepted = |aud: &str| self.audience.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err("the token's audience is not accepted");
            }
        }
        Ok(())
    }
}

/// jsonwebtoken's checks reduced to the signature (and the algorithm matching the key's).
fn signature_only(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    validation
}

fn names_of(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A claim as a header value: strings as they are, other JSON as JSON text.
fn claim_value(value: &Value) -> Option<HeaderValue> {
    match value {
        Value::String(s) => HeaderValue::from_str(s).ok(),
        Value::Null => None,
        other => HeaderValue::from_str(&other.to_string()).ok(),
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Filter for Jwt {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        let Some(token) = self.token(request) else {
            let wanted = if self.bearer {
                "Authorization: Bearer".to_string()
            } else {
                self.from.describe()
            };
            return Verdict::Answer(self.refusal(&format!("a token is required ({wanted})")));
        };
        let Some(keys) = self.keys.load_full() else {
            let mut answer = reject(
                503,
                format!(
                    "sluice: the signing keys of filter \"{}\" are not loaded yet\n",
                    self.name
                ),
            );
            answer
                .headers
                .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
            return Verdict::Answer(answer);
        };
        let claims = match self.verify(token, &keys) {
            Ok(claims) => claims,
            Err(why) => return Verdict::Answer(self.refusal(&why)),
        };
        if let Err(why) = self.check_claims(&claims, now_secs()) {
            return Verdict::Answer(self.refusal(why));
        }
        if !self.forward_token {
            self.from.remove(request, state);
        }
        for (claim, header) in &self.claims_to_headers {
            match claims.get(claim).and_then(claim_value) {
                Some(value) => state.upstream.set(*header, &value),
                None => state.upstream.remove(*header),
            }
        }
        match claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(Consumer::new)
        {
            Some(consumer) => consumer.admit(state),
            None => state.upstream.remove(CONSUMER_HEADER),
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(extra: &str) -> Jwt {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let table: toml::Table =
            toml::from_str(&format!("secret_file = {secret:?}\n{extra}")).unwrap();
        Jwt::build("users", &table).unwrap()
    }

    fn claims(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn claim_checks() {
        let jwt =
            filter("issuer = \"https://id\"\naudience = [\"api\", \"web\"]\nleeway = \"10s\"");
        let now = 1_000_000.0;
        let good = r#""iss": "https://id", "aud": ["other", "web"]"#;
        assert_eq!(
            jwt.check_claims(&claims(&format!("{{{good}}}")), now),
            Ok(())
        );
        let at = |extra: &str| jwt.check_claims(&claims(&format!("{{{good}, {extra}}}")), now);
        assert_eq!(at(r#""exp": 999995"#), Ok(()));
        assert_eq!(at(r#""exp": 999989"#), Err("the token has expired"));
        assert_eq!(
            at(r#""exp": "tomorrow""#),
            Err("a time claim is not a number")
        );
        assert_eq!(at(r#""nbf": 1000009.5"#), Ok(()));
        assert_eq!(at(r#""nbf": 1000011"#), Err("the token is not valid yet"));
        let other = |json: &str| jwt.check_claims(&claims(json), now);
        assert_eq!(
            other(r#"{"aud": "api"}"#),
            Err("the token's issuer is not accepted")
        );
        assert_eq!(
            other(r#"{"iss": "https://id", "aud": "nope"}"#),
            Err("the token's audience is not accepted")
        );
        assert_eq!(
            other(r#"{"iss": "https://id"}"#),
            Err("the token's audience is not accepted")
        );
    }

    #[test]
    fn settings_are_checked() {
        let build = |text: &str| {
            let table: toml::Table = toml::from_str(text).unwrap();
            Jwt::build("users", &table)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(
            build("jwks = \"http://id/keys\"").contains("filters.users.jwks: keys over plain http")
        );
        assert_eq!(
            build("algorithms = [\"none\"]\njwks = \"https://id/keys\""),
            "filters.users.algorithms[0]: \"none\" (an unsigned token) is never accepted"
        );
        assert!(build("").starts_with("filters.users.keys: required"));
        assert!(build("keys = [\"/nonexistent.pem\"]")
            .starts_with("filters.users.keys[0]: cannot read"));
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        assert!(build(&format!("secret_file = {short:?}")).contains("too short"));
        let table: toml::Table = toml::from_str("algorithms = [\"RS256\"]").unwrap();
        let mut table = table;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        table.insert("secret_file".into(), secret.display().to_string().into());
        let error = Jwt::build("users", &table).unwrap_err().to_string();
        assert!(
            error.contains("no key of this filter verifies RS256"),
            "{error}"
        );
    }

    #[test]
    fn hs256_round_trip_through_the_checks() {
        let jwt = filter("");
        let keys = jwt.keys.load_full().unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "ann"}),
            &key,
        )
        .unwrap();
        assert_eq!(jwt.verify(&token, &keys).unwrap()["sub"], "ann");
        let other = jsonwebtoken::EncodingKey::from_secret(b"another secret of 32 bytes or more");
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "ann"}),
            &other,
        )
        .unwrap();
        assert_eq!(
            jwt.verify(&forged, &keys).unwrap_err(),
            "the token's signature is not valid"
        );
    }
}

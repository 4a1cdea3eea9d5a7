//! `store = "redis"`: one budget per key across every gateway on the same Redis. Each request
//! is one round trip: a Lua script (sent once, then called by its SHA-1) applies the GCRA to
//! the key's TAT on the Redis server's own clock, so gateways with skewed clocks still share
//! one budget, and sets the key to expire when its bucket is full again (Redis memory follows
//! the active keys). Each worker thread has its own multiplexed connection, driven on that
//! thread's runtime (made on its first request): a request's round trip wakes no other thread,
//! and concurrent requests of a thread share writes.
//!
//! Redis down or slow never holds a request longer than `timeout`: a call that fails or times
//! out marks the store down, requests then get `on_error` at once (allow: through without
//! rate-limit headers; deny: 503), and a background probe (`PING`) brings it back as soon as
//! Redis answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use thread_local::ThreadLocal;

use super::gcra::{Decision, Gcra};
use crate::filters::{read, FilterError};

/// The GCRA of `gcra.rs` on the Redis side, in microseconds (Lua numbers are doubles: exact to
/// 2^53, centuries of microseconds). Returns the TAT it found and the server's time; the
/// gateway derives the decision from them with the same rule, so both sides agree.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local nxt = math.max(tat, now) + interval
if nxt - now <= tolerance then
  redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.floor((nxt - now) / 1000) + 1)
end
return {tat, now}
";

/// The clock the script keeps TATs in.
pub(super) const TICK: Duration = Duration::from_micros(1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    prefix: Option<String>,
    on_error: Option<String>,
    timeout: Option<String>,
}

/// What a request gets when Redis cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnError {
    /// Through, unlimited (the default: a Redis outage is not an outage of the API).
    Allow,
    /// Answered 503.
    Deny,
}

/// Why Redis gave no decision.
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreError {
    #[error("redis at {url}: {reason}")]
    Failed { url: String, reason: String },
    #[error("redis at {url} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("redis at {url} is down (not asked until it answers a PING again)")]
    Down { url: String },
}

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// How often the probe PINGs while the store is down, and while it is up.
const PROBE_DOWN: Duration = Duration::from_millis(250);
const PROBE_UP: Duration = Duration::from_secs(2);

/// The Redis side of one `rate-limit` filter.
pub(super) struct RedisStore {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Each worker thread's connection, on its own runtime.
    connections: ThreadLocal<ConnectionManager>,
    /// The probe's connection, on the background runtime.
    probe: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    pub(super) on_error: OnError,
    down: AtomicBool,
    /// The URL without its password, for messages.
    shown: String,
    errors: IntCounter,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Reads `redis = { url, prefix, on_error, timeout }`. Connections are made lazily (a
    /// Redis that is down at start is an outage like any other, not a refused config).
    pub(super) fn build(
        name: &str,
        table: &toml::Table,
        errors: IntCounter,
    ) -> Result<Arc<Self>, FilterError> {
        let error =
            |key: &str, reason: String| FilterError::new(name, format!("redis.{key}"), reason);
        let settings: Settings = read(name, table).map_err(|e| FilterError {
            key: match e.key.as_str() {
                "" | "." => "redis".to_string(),
                key => format!("redis.{key}"),
            },
            ..e
        })?;
        let on_error = match settings.on_error.as_deref().unwrap_or("allow") {
            "allow" => OnError::Allow,
            "deny" => OnError::Deny,
            other => {
                return Err(error(
                    "on_error",
                    format!("{other:?}: expected \"allow\" or \"deny\""),
                ))
            }
        };
        let timeout = match &settings.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => {
                crate::filters::duration(name, "redis.timeout", text, Duration::from_secs(10))?
            }
        };
        let url = settings.url.trim();
        if url.starts_with("rediss://") {
            return Err(error(
                "url",
                "rediss:// (TLS) is not in this build yet: use redis:// on a trusted network"
                    .into(),
            ));
        }
        if !url.starts_with("redis://")
            && !url.starts_with("redis+unix://")
            && !url.starts_with("unix://")
        {
            return Err(error(
                "url",
                format!(
                    "{:?}: expected redis://[user:password@]host[:port][/db]",
                    without_password(url)
                ),
            ));
        }
        let client = redis::Client::open(url)
            .map_err(|e| error("url", format!("{:?}: {e}", without_password(url))))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let handle = crate::background::handle().map_err(|e| error("url", e.to_string()))?;
        let probe = {
            let _runtime = handle.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(|e| error("url", e.to_string()))?
        };
        let store = Arc::new(Self {
            client,
            config,
            connections: ThreadLocal::new(),
            probe,
            script: redis::Script::new(SCRIPT),
            prefix: settings.prefix.unwrap_or_else(|| "sluice:rl:".to_string()),
            timeout,
            on_error,
            down: AtomicBool::new(false),
            shown: without_password(url),
            errors,
        });
        spawn_probe(name.to_string(), Arc::downgrade(&store));
        Ok(store)
    }

    /// The Redis key of a budget: the prefix, the filter's name and the request's key.
    pub(super) fn key(&self, filter: &str, key: &str) -> String {
        format!("{}{filter}:{key}", self.prefix)
    }

    /// Takes one request from the budget at `key`, if there is one.
    pub(super) async fn acquire(&self, key: &str, gcra: &Gcra) -> Result<Decision, StoreError> {
        if self.down.load(Ordering::Relaxed) {
            self.errors.inc();
            return Err(StoreError::Down {
                url: self.shown.clone(),
            });
        }
        let mut connection = match self.connection() {
            Ok(connection) => connection,
            Err(failure) => return Err(self.failed(failure)),
        };
        let (interval, tolerance) = gcra.constants();
        let mut invocation = self.script.key(key);
        invocation.arg(interval).arg(tolerance);
        let call = async {
            match invocation.invoke_async::<(u64, u64)>(&mut connection).await {
                // A connection broken since its last use (Redis restarted, an idle close)
                // has begun reconnecting: the call is made once more on the new one.
                Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                    invocation.invoke_async::<(u64, u64)>(&mut connection).await
                }
                other => other,
            }
        };
        let failure = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((tat, now))) => return Ok(gcra.decide(tat, now).0),
            Ok(Err(e)) => StoreError::Failed {
                url: self.shown.clone(),
                reason: e.to_string(),
            },
            Err(_) => StoreError::Timeout {
                url: self.shown.clone(),
                timeout: self.timeout,
            },
        };
        Err(self.failed(failure))
    }

    /// Counts a failed call and marks the store down (logged once, when it goes down).
    fn failed(&self, failure: StoreError) -> StoreError {
        self.errors.inc();
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "rate-limit: {failure}; on_error = {:?} until it answers",
                self.on_error
            );
        }
        failure
    }

    /// This thread's connection, made on first use on the runtime running the request (a
    /// clone: the handle of one multiplexed connection).
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        self.connections
            .get_or_try(|| {
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
            })
            .cloned()
            .map_err(|e| StoreError::Failed {
                url: self.shown.clone(),
                reason: e.to_string(),
            })
    }

    /// Whether Redis answers a PING within the timeout.
    async fn answers(&self) -> bool {
        let mut connection = self.probe.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_)))
    }
}

/// PINGs the store's Redis, often while it is down, now and then while it is up, and marks it
/// up or down; ends with the filter.
fn spawn_probe(filter: String, store: Weak<RedisStore>) {
    let task = async move {
        loop {
            let Some(store) = store.upgrade() else { return };
            let was_down = store.down.load(Ordering::Relaxed);
            let up = store.answers().await;
            if up && was_down {
                tracing::info!(filter, "rate-limit: redis at {} answers again", store.shown);
            } else if !up && !was_down {
                tracing::warn!(
                    filter,
                    "rate-limit: redis at {} does not answer a PING",
                    store.shown
                );
            }
            store.down.store(!up, Ordering::Relaxed);
            drop(store);
            tokio::time::sleep(if up { PROBE_UP } else { PROBE_DOWN }).await;
        }
    };
    if let Err(e) = crate::background::spawn(task) {
        tracing::warn!("rate-limit: redis will not be probed: {e}");
    }
}

/// A Redis URL with its password (if any) left out.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            without_password("redis://user:s3cret@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(without_password("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn settings_are_checked() {
        let build = |text: &str| {
            let table: toml::Table = toml::from_str(text).unwrap();
            RedisStore::build("limit", &table, IntCounter::new("x", "x").unwrap())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            build("url = \"redis://h\"\non_error = \"maybe\""),
            "filters.limit.redis.on_error: \"maybe\": expected \"allow\" or \"deny\""
        );
        assert!(build("url = \"http://h\"").starts_with("filters.limit.redis.url: "));
        assert!(build("url = \"rediss://h\"").contains("TLS"));
        let unknown = build("url = \"redis://h\"\nbogus = 1");
        assert!(
            unknown.starts_with("filters.limit.redis.bogus: unknown field `bogus`"),
            "{unknown}"
        );
        assert!(build("url = \"redis://h\"\ntimeout = \"0s\"").contains("redis.timeout"));
    }
}

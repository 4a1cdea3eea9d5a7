//! Keeping a `jwt` filter's JWKS current, on the background runtime: a file is read again
//! when its modification time or size changes (checked every second); an `https://` URL is
//! fetched at start, every `jwks_refresh`, and early (at most every 10 s) when a token names
//! a `kid` the set does not have. A document that cannot be read or parsed leaves the keys
//! as they were, with a warning; a failed fetch is retried with a growing pause.
//!
//! The tasks hold the filter's key cell weakly and end when the filter is dropped (a
//! reload that replaced it).

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use super::keys::{parse_jwks, KeySet};

/// The filter's current keys: `None` until a JWKS URL first answered.
pub(super) type KeyCell = ArcSwapOption<KeySet>;

/// How often a JWKS file is looked at.
const FILE_CHECK: Duration = Duration::from_secs(1);
/// The soonest a token with an unknown `kid` makes the URL be fetched again.
const EARLY_REFRESH: Duration = Duration::from_secs(10);
/// The most a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What changes a JWKS file is recognised by.
fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads a JWKS file into keys (at load: an error refuses the filter).
pub(super) fn read_file(path: &std::path::Path) -> Result<KeySet, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (set, _skipped) = parse_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if set.keys.is_empty() {
        return Err(format!(
            "{}: no signature key this filter can use",
            path.display()
        ));
    }
    Ok(set)
}

/// Watches `path` and swaps its keys into `cell` when it changes.
pub(super) fn watch_file(filter: String, path: PathBuf, cell: Weak<KeyCell>) {
    let mut seen = stamp(&path);
    let shown = path.display().to_string();
    let task = async move {
        let mut every = tokio::time::interval(FILE_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(cell) = cell.upgrade() else { return };
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match read_file(&path) {
                Ok(set) => {
                    tracing::info!(filter, keys = set.keys.len(), "jwt: JWKS file read again");
                    cell.store(Some(Arc::new(set)));
                }
                Err(e) => tracing::warn!(filter, "jwt: JWKS file not taken, keeping the keys: {e}"),
            }
        }
    };
    if let Err(e) = crate::background::spawn(task) {
        tracing::warn!("jwt: the JWKS file {shown} will not be watched: {e}");
    }
}

/// Fetches `url` now and then, swapping what it serves into `cell`; `wanted` asks for an
/// early fetch.
pub(super) fn refresh_url(
    filter: String,
    url: String,
    every: Duration,
    cell: Weak<KeyCell>,
    wanted: Arc<Notify>,
) {
    let task = async move {
        let client = match reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(filter, "jwt: cannot build the JWKS client: {e}");
                return;
            }
        };
        let mut retry = Duration::from_secs(1);
        loop {
            let Some(cell) = cell.upgrade() else { return };
            let fetched_at = tokio::time::Instant::now();
            let pause = match fetch(&client, &url).await {
                Ok(set) => {
                    tracing::info!(filter, url, keys = set.keys.len(), "jwt: JWKS fetched");
                    cell.store(Some(Arc::new(set)));
                    retry = Duration::from_secs(1);
                    every
                }
                Err(e) => {
                    tracing::warn!(filter, url, "jwt: JWKS fetch failed, keeping the keys: {e}");
                    let pause = retry;
                    retry = (retry * 2).min(Duration::from_secs(60));
                    pause
                }
            };
            drop(cell);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = wanted.notified() => tokio::time::sleep_until(fetched_at + EARLY_REFRESH).await,
            }
        }
    };
    if let Err(e) = crate::background::spawn(task) {
        tracing::error!("jwt: the JWKS URL will not be fetched: {e}");
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<KeySet, String> {
    let response = client.get(url).send().await.map_err(|e| error_chain(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    let body = response.bytes().await.map_err(|e| error_chain(&e))?;
    let (set, _skipped) = parse_jwks(&body)?;
    if set.keys.is_empty() {
        return Err("no signature key this filter can use".into());
    }
    Ok(set)
}

/// An error with its causes (reqwest's own message is only the outermost).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

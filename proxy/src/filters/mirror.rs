//! `mirror`: a copy of `fraction` of the requests goes to another service (shadow traffic),
//! fire and forget: sent from the background runtime once the request's body is in hand, its
//! answer read and dropped, never waited for by the client's request and never able to fail
//! it. At most `max_in_flight` copies are out at once (more are skipped, not queued); a body
//! is mirrored up to `max_body_bytes` (a larger or chunked one is not mirrored at all: a cut
//! body would be another request). Copies go to the service's plain-`http` instances in turn,
//! on a new connection each (`connection: close`), marked `x-sluice-mirror: 1`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{read, FilterError};
use crate::gateway::engine::filters::{Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;
use crate::metrics::Metrics;
use crate::pool::ServiceSlot;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    service: String,
    fraction: Option<f64>,
    max_in_flight: Option<usize>,
    max_body_bytes: Option<u64>,
    timeout: Option<String>,
}

const DEFAULT_MAX_IN_FLIGHT: usize = 64;
const DEFAULT_MAX_BODY: u64 = 64 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The field that marks a copy (one from the client is not passed on).
const MARK: &str = "x-sluice-mirror";

/// How the copies of one filter went.
#[derive(Debug)]
struct Outcomes {
    /// Answered by the shadow service.
    sent: IntCounter,
    /// Connect, write or read failed, or the answer did not come within `timeout`.
    failed: IntCounter,
    /// Not sent: `max_in_flight` were out, the body was too large or chunked, or the service
    /// had no plain-http instance.
    skipped: IntCounter,
}

/// One `mirror` filter.
#[derive(Debug)]
pub(super) struct Mirror {
    name: String,
    slot: Arc<ServiceSlot>,
    /// `fraction` as a share of `u32::MAX`.
    threshold: u64,
    max_in_flight: usize,
    max_body: u64,
    timeout: Duration,
    in_flight: Arc<AtomicUsize>,
    next: AtomicUsize,
    outcomes: Arc<Outcomes>,
}

impl Mirror {
    pub(super) fn build(
        name: &str,
        table: &toml::Table,
        metrics: &Metrics,
        slot: impl FnOnce(&str) -> Arc<ServiceSlot>,
    ) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let service = settings.service.trim();
        if service.is_empty() {
            return Err(FilterError::new(name, "service", "empty"));
        }
        let fraction = settings.fraction.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&fraction) || fraction == 0.0 {
            return Err(FilterError::new(
                name,
                "fraction",
                format!("{fraction}: a share of the requests, more than 0 and at most 1"),
            ));
        }
        let max_in_flight = settings.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 || max_in_flight > 100_000 {
            return Err(FilterError::new(name, "max_in_flight", "1 to 100000"));
        }
        let timeout = match settings.timeout.as_deref() {
            None => DEFAULT_TIMEOUT,
            Some(text) => super::duration(name, "timeout", text, Duration::from_secs(300))?,
        };
        let family = &metrics.filter_mirrored_total;
        let outcome = |result: &str| family.with_label_values(&[name, result]);
        Ok(Self {
            name: name.to_string(),
            slot: slot(service),
            threshold: (fraction * f64::from(u32::MAX)) as u64,
            max_in_flight,
            max_body: settings.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
            timeout,
            in_flight: Arc::new(AtomicUsize::new(0)),
            next: AtomicUsize::new(0),
            outcomes: Arc::new(Outcomes {
                sent: outcome("sent"),
                failed: outcome("failed"),
                skipped: outcome("skipped"),
            }),
        })
    }

    /// The next plain-http instance of the shadow service, in turn.
    fn instance(&self) -> Option<SocketAddr> {
        let pool = self.slot.load();
        let n = pool.eligible_len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let member = pool.eligible(i);
            if member.spec.scheme == crate::registry::Scheme::Http {
                if let Some(socket) = member.socket {
                    return Some(socket);
                }
            }
        }
        None
    }
}

/// A copy waiting for its request's body (`FilterState::mirror`).
pub(crate) struct PendingMirror {
    head: Vec<u8>,
    body_len: u64,
    /// The body as it arrives, when it comes in pieces (pingora's path).
    body: Vec<u8>,
    addr: SocketAddr,
    timeout: Duration,
    /// The filter's in-flight count, held from the decision until the copy is done.
    slot: InFlight,
    outcomes: Arc<Outcomes>,
}

impl std::fmt::Debug for PendingMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PendingMirror({}, {} body bytes)",
            self.addr, self.body_len
        )
    }
}

/// One copy counted in flight; the count drops with it however the copy ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PendingMirror {
    /// Whether the request has a body to wait for.
    pub(crate) fn awaits_body(&self) -> bool {
        self.body_len > 0
    }

    /// A piece of the body (kept up to its declared length).
    pub(crate) fn push_body(&mut self, piece: &[u8]) {
        let room = usize::try_from(self.body_len)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.body.len());
        self.body.extend_from_slice(&piece[..piece.len().min(room)]);
    }

    /// Sends the copy from the background runtime with `body`, or with the pieces pushed
    /// when `None`. A body that is not the declared length is not mirrored.
    pub(crate) fn send(self, body: Option<&[u8]>) {
        let body = body.unwrap_or(&self.body);
        if body.len() as u64 != self.body_len {
            self.outcomes.skipped.inc();
            return;
        }
        let mut bytes = self.head;
        bytes.extend_from_slice(body);
        let (addr, timeout, outcomes, held) = (self.addr, self.timeout, self.outcomes, self.slot);
        let task = async move {
            let _held = held;
            match tokio::time::timeout(timeout, exchange(addr, &bytes)).await {
                Ok(Ok(())) => outcomes.sent.inc(),
                Ok(Err(_)) | Err(_) => outcomes.failed.inc(),
            }
        };
        if crate::background::spawn(task).is_err() {
            tracing::warn!("mirror: no background runtime, copy dropped");
        }
    }
}

/// Writes the copy and reads its answer to the end (the connection is `close`d by the
/// shadow service), dropping it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    let mut sink = [0u8; 4096];
    let mut answered = false;
    loop {
        match stream.read(&mut sink).await? {
            0 if answered => return Ok(()),
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed without an answer",
                ))
            }
            _ => answered = true,
        }
    }
}

impl Filter for Mirror {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        if u64::from(fastrand::u32(..)) >= self.threshold || state.mirror.is_some() {
            return Verdict::Continue;
        }
        let body_len = request.declared_body_len().unwrap_or(0);
        let chunked = request.field("transfer-encoding").is_some();
        if chunked || body_len > self.max_body {
            self.outcomes.skipped.inc();
            return Verdict::Continue;
        }
        // Taken before the copy is made, given back if it is not.
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.outcomes.skipped.inc();
            return Verdict::Continue;
        }
        let held = InFlight(self.in_flight.clone());
        let Some(addr) = self.instance() else {
            self.outcomes.skipped.inc();
            return Verdict::Continue;
        };
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(request.method().as_bytes());
        head.push(b' ');
        head.extend_from_slice(request.path().as_bytes());
        if let Some(query) = request.query() {
            head.push(b'?');
            head.extend_from_slice(query.as_bytes());
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        request.each_field_of_all(&mut |name, value| {
            // Framing and hop-by-hop fields are the copy's own (`content-length`,
            // `connection: close`).
            if !super::frames_or_hops(name) && !name.eq_ignore_ascii_case(MARK) {
                sluice_http1::fields::put_field(&mut head, name.as_bytes(), value);
            }
        });
        let length = body_len.to_string();
        sluice_http1::fields::put_field(&mut head, b"content-length", length.as_bytes());
        head.extend_from_slice(b"x-sluice-mirror: 1\r\nconnection: close\r\n\r\n");
        state.mirror = Some(Box::new(PendingMirror {
            head,
            body_len,
            body: Vec::new(),
            addr,
            timeout: self.timeout,
            slot: held,
            outcomes: self.outcomes.clone(),
        }));
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let metrics = Metrics::new();
        let dir = crate::pool::Directory::new(Arc::new(Metrics::new()), &[]);
        let build = |text: &str| {
            Mirror::build("m", &toml::from_str(text).unwrap(), &metrics, |s| {
                dir.slot(s)
            })
        };
        let m = build("service = \"shadow\"\nfraction = 0.25").unwrap();
        assert_eq!(m.threshold, (0.25 * f64::from(u32::MAX)) as u64);
        assert_eq!(m.max_body, DEFAULT_MAX_BODY);
        let key = |text: &str| build(text).unwrap_err().key;
        assert_eq!(key("service = \"\""), "service");
        assert_eq!(key("service = \"s\"\nfraction = 0.0"), "fraction");
        assert_eq!(key("service = \"s\"\nfraction = 1.5"), "fraction");
        assert_eq!(key("service = \"s\"\nmax_in_flight = 0"), "max_in_flight");
        assert_eq!(key("service = \"s\"\ntimeout = \"soon\""), "timeout");
    }
}

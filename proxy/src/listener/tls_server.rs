//! The server side of the TLS listeners: one rustls configuration (TLS 1.2 and 1.3, ALPN, the
//! SNI resolver) with session resumption, and the handshakes it completed and resumed.
//!
//! Resumption is on by default, two ways, as nginx and HAProxy do it:
//! - stateless tickets (TLS 1.2 session tickets, TLS 1.3 PSK tickets) sealed with keys made in
//!   memory at start and rotated every 6 hours; a ticket is accepted for at most 12 hours
//!   (rustls' `Ticketer`: the previous key still opens tickets for one more period). Keys are
//!   never written anywhere, so a restart or a graceful upgrade costs each client one full
//!   handshake;
//! - a bounded in-memory cache of sessions by id (TLS 1.2 clients without ticket support; TLS
//!   1.3 resumption too when tickets are turned off).
//!
//! A resumed handshake skips the certificate and its signature (TLS 1.3 still agrees a fresh
//! key: rustls offers only PSK with (EC)DHE, never PSK alone, and accepts no early data).

use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use prometheus::IntCounter;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;

use super::tls::{listener_crypto, listener_ticketer, SniResolver};

/// Why the TLS listeners' configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsServerError {
    #[error("cannot make session ticket keys: {0}")]
    TicketKeys(rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// How sessions are resumed (`[proxy.tls] session_tickets`, `session_cache`).
#[derive(Debug, Clone, Copy)]
pub struct Resumption {
    pub tickets: bool,
    /// Sessions kept by id; 0 keeps none.
    pub cache: usize,
}

/// What the handshakes of the TLS listeners are counted in.
#[derive(Debug, Clone)]
pub struct HandshakeCounters {
    /// Completed handshakes, full or resumed.
    pub completed: IntCounter,
    /// Handshakes that failed or timed out.
    pub failed: IntCounter,
    /// Handshakes whose client offered a session the server could open (a valid ticket, or an
    /// id in the cache): those resume.
    pub resumed: IntCounter,
}

/// The TLS side of every TLS listening address: one acceptor (so one ticket key and one
/// session cache, whichever address and shard accepts) and its counters.
pub struct TlsListener {
    pub acceptor: Acceptor,
    pub counters: HandshakeCounters,
}

impl TlsListener {
    pub fn new(
        resolver: Arc<SniResolver>,
        h2: bool,
        resumption: Resumption,
        counters: HandshakeCounters,
    ) -> Result<Self, TlsServerError> {
        let config = server_config(resolver, h2, resumption, &counters.resumed)?;
        Ok(Self {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            counters,
        })
    }
}

/// ALPN: HTTP/2 first when offered, else HTTP/1.1 only (pingora's `ALPN::H2H1` / `H1`).
fn alpn(h2: bool) -> Vec<Vec<u8>> {
    if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

fn server_config(
    resolver: Arc<SniResolver>,
    h2: bool,
    resumption: Resumption,
    resumed: &IntCounter,
) -> Result<ServerConfig, TlsServerError> {
    let provider = Arc::new(listener_crypto());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsServerError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn(h2);
    config.session_storage = Arc::new(CountedCache {
        inner: ServerSessionMemoryCache::new(resumption.cache.max(1)),
        keeps: resumption.cache > 0,
        resumed: resumed.clone(),
    });
    if resumption.tickets {
        let ticketer = listener_ticketer().map_err(TlsServerError::TicketKeys)?;
        config.ticketer = Arc::new(CountedTicketer {
            inner: ticketer,
            resumed: resumed.clone(),
        });
    } else {
        // Without a ticketer rustls would still hand out TLS 1.3 tickets backed by the cache;
        // with the cache off too, none at all.
        if resumption.cache == 0 {
            config.send_tls13_tickets = 0;
        }
    }
    Ok(config)
}

/// rustls' ticketer, counting the tickets it opens (each one a resumed handshake).
#[derive(Debug)]
struct CountedTicketer {
    inner: Arc<dyn ProducesTickets>,
    resumed: IntCounter,
}

impl ProducesTickets for CountedTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        if plain.is_some() {
            self.resumed.inc();
        }
        plain
    }
}

/// rustls' session cache, counting the sessions found in it; with `keeps` false it stores
/// nothing (rustls needs a store to call).
#[derive(Debug)]
struct CountedCache {
    inner: Arc<ServerSessionMemoryCache>,
    keeps: bool,
    resumed: IntCounter,
}

impl CountedCache {
    fn found(&self, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if value.is_some() {
            self.resumed.inc();
        }
        value
    }
}

impl StoresServerSessions for CountedCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.keeps && self.inner.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.found(self.inner.get(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.found(self.inner.take(key))
    }

    fn can_cache(&self) -> bool {
        self.keeps && self.inner.can_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("test_resumed", "test").expect("a valid counter")
    }

    #[test]
    fn a_ticket_it_sealed_opens_and_is_counted_and_a_forged_one_does_not() {
        let resumed = counter();
        let ticketer = CountedTicketer {
            inner: listener_ticketer().expect("ticket keys"),
            resumed: resumed.clone(),
        };
        assert!(ticketer.enabled());
        // Keys rotate every 6 hours; a ticket opens under its key or the one after: 12 hours.
        assert_eq!(ticketer.lifetime(), 12 * 60 * 60);
        let sealed = ticketer.encrypt(b"session state").expect("sealed");
        assert_ne!(&sealed[..], b"session state");
        assert_eq!(
            ticketer.decrypt(&sealed).as_deref(),
            Some(&b"session state"[..])
        );
        let mut forged = sealed.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(ticketer.decrypt(&forged), None);
        assert_eq!(resumed.get(), 1);
    }

    #[test]
    fn a_cache_of_size_zero_keeps_nothing_and_a_hit_is_counted() {
        let resumed = counter();
        let off = CountedCache {
            inner: ServerSessionMemoryCache::new(1),
            keeps: false,
            resumed: resumed.clone(),
        };
        assert!(!off.can_cache());
        assert!(!off.put(b"id".to_vec(), b"state".to_vec()));
        assert_eq!(off.get(b"id"), None);
        let on = CountedCache {
            inner: ServerSessionMemoryCache::new(4),
            keeps: true,
            resumed: resumed.clone(),
        };
        assert!(on.put(b"id".to_vec(), b"state".to_vec()));
        assert_eq!(on.get(b"id").as_deref(), Some(&b"state"[..]));
        assert_eq!(on.take(b"id").as_deref(), Some(&b"state"[..]));
        assert_eq!(on.take(b"id"), None);
        assert_eq!(resumed.get(), 2);
    }

    #[test]
    fn alpn_offers_h2_first_only_when_asked() {
        assert_eq!(alpn(true), vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(alpn(false), vec![b"http/1.1".to_vec()]);
    }
}

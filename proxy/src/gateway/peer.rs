//! The upstream side of one try: the [`HttpPeer`] for a picked instance, by its scheme —
//! `http` (HTTP/1.1), `https` (TLS, HTTP/1.1), `grpc` (HTTP/2 cleartext, prior knowledge),
//! `grpcs` (TLS, HTTP/2) — with the service's `upstream_tls` verification settings.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;

use crate::config::UpstreamTlsSpec;
use crate::registry::{InstanceSpec, Scheme};

/// Why a service's `upstream_tls.ca` could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use {path} as CA bundle: {reason}")]
pub struct CaError {
    path: String,
    reason: String,
}

/// How a service's TLS instances are reached.
#[derive(Debug)]
pub struct UpstreamTls {
    /// Trusted CAs; `None`: the system roots.
    ca: Option<Arc<CaType>>,
    server_name: Option<String>,
    verify: bool,
    /// Keeps connections verified under other trust settings out of reach: pingora pools
    /// TLS connections by address, SNI and verify flags, not by CA.
    group_key: u64,
}

impl UpstreamTls {
    /// Loads the CA bundle of `spec`, if it names one.
    pub fn load(spec: &UpstreamTlsSpec) -> Result<Self, CaError> {
        let ca = match &spec.ca {
            None => None,
            Some(path) => {
                let error = |reason: String| CaError {
                    path: path.display().to_string(),
                    reason,
                };
                let ders = crate::pem::certificates(path).map_err(error)?;
                if ders.is_empty() {
                    return Err(error("no certificate in it".into()));
                }
                let mut wrapped = Vec::with_capacity(ders.len());
                for der in ders {
                    // pingora's own parser panics on a malformed certificate: make sure first.
                    webpki::anchor_from_trusted_cert(&der)
                        .map_err(|e| error(format!("not a certificate: {e:?}")))?;
                    wrapped.push(WrappedX509::new(
                        der.as_ref().to_vec(),
                        pingora::utils::tls::parse_x509,
                    ));
                }
                Some(Arc::from(wrapped.into_boxed_slice()))
            }
        };
        let group_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&spec.ca, &spec.server_name, spec.verify).hash(&mut h);
            h.finish()
        };
        Ok(Self {
            ca,
            server_name: spec.server_name.clone(),
            verify: spec.verify,
            group_key,
        })
    }

    /// The peer for `instance` at `socket`.
    pub fn peer(&self, instance: &InstanceSpec, socket: SocketAddr) -> HttpPeer {
        match instance.scheme {
            Scheme::Http => HttpPeer::new(socket, false, String::new()),
            Scheme::Grpc => {
                let mut peer = HttpPeer::new(socket, false, String::new());
                // HTTP/2 only, without TLS: h2c with prior knowledge.
                peer.options.alpn = ALPN::H2;
                peer
            }
            Scheme::Https | Scheme::Grpcs => {
                let sni = self
                    .server_name
                    .clone()
                    .unwrap_or_else(|| instance.host().to_string());
                let mut peer = HttpPeer::new(socket, true, sni);
                peer.options.alpn = if instance.scheme == Scheme::Grpcs {
                    ALPN::H2
                } else {
                    ALPN::H1
                };
                peer.options.ca = self.ca.clone();
                peer.options.verify_cert = self.verify;
                peer.options.verify_hostname = self.verify;
                peer.group_key = self.group_key;
                peer
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(addr: &str, scheme: Scheme) -> InstanceSpec {
        InstanceSpec {
            id: "a".into(),
            addr: addr.into(),
            status: Default::default(),
            weight: 100,
            version: None,
            zone: None,
            tags: Vec::new(),
            metadata: Default::default(),
            scheme,
            scheme_named: true,
        }
    }

    #[test]
    fn scheme_decides_tls_and_http_version() {
        let tls = UpstreamTls::load(&UpstreamTlsSpec::default()).unwrap();
        let socket: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let http = tls.peer(&instance("127.0.0.1:443", Scheme::Http), socket);
        assert!(http.sni.is_empty() && http.options.alpn == ALPN::H1);
        let grpc = tls.peer(&instance("127.0.0.1:443", Scheme::Grpc), socket);
        assert!(grpc.sni.is_empty() && grpc.options.alpn == ALPN::H2);
        let https = tls.peer(&instance("api.internal:443", Scheme::Https), socket);
        assert_eq!(https.sni, "api.internal");
        assert!(https.options.verify_cert && https.options.alpn == ALPN::H1);
        let grpcs = tls.peer(&instance("[::1]:443", Scheme::Grpcs), socket);
        assert_eq!(grpcs.sni, "::1");
        assert_eq!(grpcs.options.alpn, ALPN::H2);
    }

    #[test]
    fn server_name_and_verify_come_from_the_policy() {
        let tls = UpstreamTls::load(&UpstreamTlsSpec {
            ca: None,
            server_name: Some("svc.example".into()),
            verify: false,
        })
        .unwrap();
        let socket: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let peer = tls.peer(&instance("127.0.0.1:443", Scheme::Https), socket);
        assert_eq!(peer.sni, "svc.example");
        assert!(!peer.options.verify_cert);
    }

    #[test]
    fn a_bad_ca_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not pem").unwrap();
        let spec = UpstreamTlsSpec {
            ca: Some(path),
            ..Default::default()
        };
        assert!(UpstreamTls::load(&spec).is_err());
    }
}

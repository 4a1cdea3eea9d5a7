//! Downstream TLS: the certificates of `[proxy.tls]`, indexed by the names they serve, and
//! the rustls resolver that picks one by SNI. The index is swapped whole on reload, so a
//! renewed certificate is served without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertificateSpec;

/// The cryptography of the TLS listeners: aws-lc-rs (a full RSA handshake took ~2 % less CPU
/// than with ring, ECDSA ones less again; docs/benchmarks.md, session 20). pingora's own TLS
/// (upstream connections) keeps ring, which `main` installs as the process default.
pub(crate) fn listener_crypto() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The TLS listeners' session-ticket sealer (rotating keys), from the same provider.
pub(crate) fn listener_ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error>
{
    rustls::crypto::aws_lc_rs::Ticketer::new()
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read certificates from {path}: {reason}")]
    Chain {
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { index: usize, path: PathBuf },
    #[error("cannot read a private key from {path}: {reason}")]
    Key {
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("the key {key} does not belong to the certificate {cert}: {reason}")]
    Mismatch {
        index: usize,
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{path}: no server_names given and the certificate names no DNS host")]
    NoNames { index: usize, path: PathBuf },
    #[error("at least one certificate is required")]
    Empty,
}

impl CertError {
    /// Position of the failing entry in `proxy.tls.certificates`.
    pub fn index(&self) -> Option<usize> {
        match self {
            CertError::Chain { index, .. }
            | CertError::NoCertificate { index, .. }
            | CertError::Key { index, .. }
            | CertError::Mismatch { index, .. }
            | CertError::NoNames { index, .. } => Some(*index),
            CertError::Empty => None,
        }
    }
}

/// Every configured certificate by the names it serves.
#[derive(Debug)]
pub struct CertIndex {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The first certificate: for clients without SNI or with a name nothing covers.
    default: Arc<CertifiedKey>,
    loaded: Vec<LoadedCertificate>,
}

/// What the log and the metrics say of one configured certificate.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// The certificate file.
    pub path: PathBuf,
    /// The names it serves.
    pub names: Vec<String>,
    /// The leaf's notAfter as Unix seconds (`None` if the date cannot be read).
    pub not_after: Option<i64>,
}

fn load_one(
    index: usize,
    spec: &CertificateSpec,
) -> Result<(CertifiedKey, Vec<String>), CertError> {
    let chain = crate::pem::certificates(&spec.cert).map_err(|reason| CertError::Chain {
        index,
        path: spec.cert.clone(),
        reason,
    })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            index,
            path: spec.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&spec.key).map_err(|e| CertError::Key {
        index,
        path: spec.key.clone(),
        reason: e.to_string(),
    })?;
    let provider = listener_crypto();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| CertError::Mismatch {
            index,
            cert: spec.cert.clone(),
            key: spec.key.clone(),
            reason: e.to_string(),
        })?;
    let names = if spec.server_names.is_empty() {
        dns_names(&certified.cert[0])
    } else {
        spec.server_names.clone()
    };
    if names.is_empty() && index > 0 {
        // The default certificate may name nothing; any other would never be served.
        return Err(CertError::NoNames {
            index,
            path: spec.cert.clone(),
        });
    }
    Ok((certified, names))
}

/// The DNS names of a certificate's subjectAltName, lower-cased.
fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(parsed) => parsed
            .valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The leaf certificate's notAfter, as Unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

impl CertIndex {
    /// Loads every certificate and key; the first problem is the error.
    pub fn load(specs: &[CertificateSpec]) -> Result<Self, CertError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut loaded = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let (certified, names) = load_one(index, spec)?;
            let not_after = not_after(&certified.cert[0]);
            let certified = Arc::new(certified);
            for name in &names {
                // The first certificate listing a name keeps it.
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                }
                .or_insert_with(|| certified.clone());
            }
            default.get_or_insert_with(|| certified.clone());
            loaded.push(LoadedCertificate {
                path: spec.cert.clone(),
                names,
                not_after,
            });
        }
        Ok(Self {
            exact,
            wildcard,
            default: default.ok_or(CertError::Empty)?,
            loaded,
        })
    }

    /// The certificate for `server_name`: an exact name, else a wildcard one level up, else
    /// the default.
    pub fn find(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        if let Some(found) = self.exact.get(name) {
            return found;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }

    /// Every certificate in config order: its file, names and expiry (logged and exported at
    /// load and reload).
    pub fn loaded(&self) -> &[LoadedCertificate] {
        &self.loaded
    }
}

/// Picks the certificate by SNI from an index that reloads replace.
#[derive(Debug)]
pub struct SniResolver {
    index: ArcSwap<CertIndex>,
}

impl SniResolver {
    pub fn new(index: CertIndex) -> Self {
        Self {
            index: ArcSwap::from_pointee(index),
        }
    }

    /// Serves `index` from the next handshake on.
    pub fn replace(&self, index: CertIndex) {
        self.index.store(Arc::new(index));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.index.load().find(hello.server_name()).clone())
    }
}

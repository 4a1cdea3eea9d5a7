//! Reading PEM certificate files: listener chains, upstream CA bundles and the health
//! probe's trust roots all go through here.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Every certificate in the PEM file at `path`, in order; a file that cannot be read or
/// parsed is an error with the reason.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())
}

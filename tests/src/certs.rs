//! Certificates for one test, made with the openssl command: a CA and the leaf certificates
//! it issues (ECDSA P-256, valid two days).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A test CA in a directory of its own.
#[derive(Debug, Clone)]
pub struct Ca {
    dir: PathBuf,
    /// The CA certificate (PEM): what clients trust.
    pub cert: PathBuf,
}

/// A certificate and its key (PEM files).
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// A TLS server presenting this certificate, offering `alpn` in order.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        use rustls_pki_types::pem::PemObject;
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(&self.cert)
            .expect("cert file")
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&self.key).expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }

    /// The certificate as DER, to compare with what a server presented.
    pub fn der(&self) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(&self.cert)
            .expect("a PEM certificate")
            .to_vec()
    }
}

impl Ca {
    /// A new CA under `dir`.
    pub fn new(dir: &Path) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=sluice-test-ca",
            ],
        );
        Self {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
        }
    }

    /// Issues `name.pem`/`name.key` for the subjectAltNames `sans` (e.g. `DNS:a.example`,
    /// `IP:127.0.0.1`), for `usage` `serverAuth` or `clientAuth`.
    pub fn issue(&self, name: &str, sans: &[&str], usage: &str) -> Leaf {
        let ext = format!("{name}.ext");
        let mut text = String::new();
        if !sans.is_empty() {
            text += &format!("subjectAltName={}\n", sans.join(","));
        }
        text += &format!("extendedKeyUsage={usage}\n");
        std::fs::write(self.dir.join(&ext), text).expect("write ext");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        Leaf {
            cert: self.dir.join(pem),
            key: self.dir.join(key),
        }
    }

    /// A server certificate for these DNS names (and 127.0.0.1).
    pub fn server(&self, name: &str, dns: &[&str]) -> Leaf {
        let mut sans: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        sans.push("IP:127.0.0.1".into());
        let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
        self.issue(name, &sans, "serverAuth")
    }
}

//! Tokens, keys and a JWKS https server from `tests/py/jwt_tool.py` (PyJWT and cryptography,
//! Debian's `python3-jwt` and `python3-cryptography`): JOSE done by an implementation that
//! shares nothing with the gateway's.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// A Python 3 that can import PyJWT and cryptography (Debian's packages live under
/// `/usr/bin/python3`, which a pyenv or venv `python3` first on the PATH does not see).
pub fn python() -> &'static str {
    static FOUND: OnceLock<&'static str> = OnceLock::new();
    FOUND.get_or_init(|| {
        for candidate in ["/usr/bin/python3", "python3"] {
            let ok = Command::new(candidate)
                .args(["-c", "import jwt, cryptography"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return candidate;
            }
        }
        panic!("no python3 with PyJWT and cryptography: apt-get install python3-jwt python3-cryptography")
    })
}

fn tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/jwt_tool.py")
}

/// Keys made in a directory: `rsa1`, `rsa2`, `rsa_other` (RSA 2048), `ec` (P-256), `ed`
/// (Ed25519) as `NAME.pub.pem`; `jwks.json` (rsa1, ec), `jwks2.json` (rsa1, rsa2), each key's
/// `kid` its name; `hs.secret` (an HMAC secret).
pub struct JwtKit {
    pub dir: PathBuf,
}

impl JwtKit {
    pub fn new(dir: &Path) -> Self {
        let status = Command::new(python())
            .arg(tool())
            .arg("keys")
            .arg(dir)
            .status()
            .expect("run jwt_tool.py keys");
        assert!(status.success(), "jwt_tool.py keys failed");
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Tokens for `specs`: `{"key": NAME | "hs", "alg": ALG, "kid"?: KID, "claims": {…}}`,
    /// or `{"alg": "none", …}`, or `{"confusion": KEY, …}` (HS256 keyed with that RSA public
    /// key's PEM text).
    pub fn mint(&self, specs: &[Value]) -> Vec<String> {
        let mut child = Command::new(python())
            .arg(tool())
            .arg("mint")
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run jwt_tool.py mint");
        child
            .stdin
            .take()
            .expect("the tool's stdin")
            .write_all(Value::Array(specs.to_vec()).to_string().as_bytes())
            .expect("token specs written");
        let output = child.wait_with_output().expect("jwt_tool.py mint ran");
        assert!(output.status.success(), "jwt_tool.py mint failed");
        serde_json::from_slice(&output.stdout).expect("a JSON list of tokens")
    }
}

/// Seconds since the epoch, for claims.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

/// Python's https server serving one file (read again per request) on a port of its own.
pub struct JwksServer {
    child: Child,
    pub port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    pub fn start(file: &Path, leaf: &crate::Leaf) -> Self {
        let mut child = Command::new(python())
            .arg(tool())
            .arg("serve")
            .arg(file)
            .arg(&leaf.cert)
            .arg(&leaf.key)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run jwt_tool.py serve");
        let mut lines = BufReader::new(child.stdout.take().expect("the server's stdout")).lines();
        let port = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.trim().parse().ok())
            .expect("the server's port");
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.starts_with("GET") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        Self {
            child,
            port,
            requests,
        }
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

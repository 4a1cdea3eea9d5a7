//! `sluice demo`: three echo upstreams on loopback registered in an in-memory registry, the
//! gateway in front of them with the least-conn strategy, and what to `curl`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents as ServiceTrait;

use crate::registry::{decode_value, MemoryRegistry};
use crate::server::{BuildError, Parts};

/// The demo's gateway config: one catch-all route to the `echo` service.
pub const DEMO_CONFIG: &str = r#"
[proxy]
listen = ["127.0.0.1:8080"]
threads = 2

[admin]
listen = "127.0.0.1:9901"

[registry]
kind = "file"
path = "(demo: in-memory registry)"

[log]
access_log = true

[[routes]]
name = "echo"
path_prefix = "/"
service = "echo"
strategy = "least-conn"
"#;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot find a free loopback port: {0}")]
    Port(#[from] std::io::Error),
}

/// An upstream that answers every request with its instance id.
struct Echo {
    id: String,
}

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = format!(
            "hello from {} (you asked for {})\n",
            self.id,
            session.req_header().uri.path()
        );
        let mut response = Response::new(body.into_bytes());
        let len = response.body().len();
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, len.into());
        if let Ok(v) = self.id.parse() {
            response.headers_mut().insert("x-instance-id", v);
        }
        response
    }
}

/// A free loopback port for an echo upstream, below the kernel's ephemeral range when there
/// is room: a port from `bind(…:0)` is one any other program's next `bind(…:0)` or outgoing
/// connection may be given between now and the moment pingora binds it (seen in the test
/// suite: an echo instance that never came up, and all requests on the other ones).
fn free_port() -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 20000;
    if ephemeral_low > LOW + 100 {
        let span = ephemeral_low - LOW;
        let start = fastrand::u16(..span);
        for n in 0..span.min(200) {
            let port = LOW + (start + n) % span;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A demo ready to run: the gateway, its echo upstreams, and a line describing each upstream.
pub struct Demo {
    pub parts: Parts,
    pub upstreams: Vec<Box<dyn ServiceTrait>>,
    pub described: Vec<String>,
}

/// Builds the demo: the gateway parts plus the three echo services.
pub fn build(listen: SocketAddr, admin: SocketAddr) -> Result<Demo, DemoError> {
    let text = DEMO_CONFIG
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9901", &admin.to_string());
    let config = crate::config::parse(Path::new("(demo)"), &text)?;
    let registry = MemoryRegistry::new();
    let mut services: Vec<Box<dyn ServiceTrait>> = Vec::new();
    let mut addresses = Vec::new();
    for n in 1..=3 {
        let id = format!("echo-{n}");
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut service = Service::new(format!("demo upstream {id}"), Echo { id: id.clone() });
        service.threads = Some(1);
        service.add_tcp(&addr);
        services.push(Box::new(service));
        // An address we just formatted from an IP and a port always decodes.
        if let Ok(spec) = decode_value(&id, addr.as_bytes()) {
            registry.upsert("echo", spec);
        }
        addresses.push(format!("{id} at {addr}"));
    }
    let parts = Parts::new(config, Arc::new(registry))?;
    Ok(Demo {
        parts,
        upstreams: services,
        described: addresses,
    })
}

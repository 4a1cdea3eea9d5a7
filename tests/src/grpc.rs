//! A real gRPC upstream (tonic) and client helpers for the `echo.proto` test service: a unary
//! call and a server stream whose replies name the instance, cleartext (`grpc`) or TLS
//! (`grpcs`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::Stream;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::certs::Leaf;

/// The generated messages, client and server of `proto/echo.proto`.
pub mod proto {
    tonic::include_proto!("sluice.test");
}

use proto::echo_server::{Echo, EchoServer};
use proto::{EchoReply, EchoRequest};

struct EchoService {
    id: String,
    calls: Arc<AtomicUsize>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        if request.fail_with != 0 {
            return Err(Status::new(
                tonic::Code::from(request.fail_with),
                format!("failed on purpose by {}", self.id),
            ));
        }
        Ok(Response::new(EchoReply {
            message: request.message,
            instance: self.id.clone(),
            index: 0,
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let id = self.id.clone();
        let replies = futures_util::stream::unfold(0u32, move |index| {
            let (message, id) = (request.message.clone(), id.clone());
            async move {
                if index >= request.count {
                    return None;
                }
                // Spaced out, so the replies really stream through the gateway.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let reply = EchoReply {
                    message,
                    instance: id,
                    index,
                };
                Some((Ok(reply), index + 1))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// A running gRPC upstream; stops when dropped.
pub struct GrpcUpstream {
    pub id: String,
    pub addr: SocketAddr,
    tls: bool,
    calls: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl GrpcUpstream {
    /// Serves the echo service with this id on a free loopback port; with `tls`, over TLS
    /// with that certificate (HTTP/2 by ALPN).
    pub async fn start(id: &str, tls: Option<&Leaf>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc upstream");
        let addr = listener.local_addr().expect("local addr");
        let calls = Arc::new(AtomicUsize::new(0));
        let service = EchoServer::new(EchoService {
            id: id.to_string(),
            calls: calls.clone(),
        });
        let mut builder = Server::builder();
        if let Some(leaf) = tls {
            // tonic builds its TLS config from the process default, and the workspace's rustls
            // has two providers (so none is picked by itself).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let identity = Identity::from_pem(
                std::fs::read(&leaf.cert).expect("cert"),
                std::fs::read(&leaf.key).expect("key"),
            );
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity))
                .expect("tls config");
        }
        let router = builder.add_service(service);
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        Self {
            id: id.to_string(),
            addr,
            tls: tls.is_some(),
            calls,
            task,
        }
    }

    /// Calls served (unary and streams).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// The instance line for a services file (`scheme` `grpc` or `grpcs`).
    pub fn instance(&self) -> String {
        let scheme = if self.tls { "grpcs" } else { "grpc" };
        format!(
            "{{ id = \"{}\", addr = \"{}\", scheme = \"{scheme}\" }}",
            self.id, self.addr
        )
    }
}

impl GrpcUpstream {
    /// The instance line without a scheme, as a registrar that writes a bare `host:port`
    /// (go-zero's zrpc) leaves it.
    pub fn bare_instance(&self) -> String {
        format!("{{ id = \"{}\", addr = \"{}\" }}", self.id, self.addr)
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

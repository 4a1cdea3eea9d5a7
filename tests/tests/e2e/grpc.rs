//! gRPC through the gateway with a real tonic client and server: unary calls, server streams
//! and error statuses (trailers), over cleartext HTTP/2 (h2c in, `grpc` instances out) and
//! over TLS (h2 by ALPN in, `grpcs` instances out).

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_tests::grpc::proto::echo_client::EchoClient;
use sluice_tests::grpc::proto::EchoRequest;
use sluice_tests::{free_port, Ca, Gateway, GrpcUpstream};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const ROUTES: &str = "[[routes]]\npath_prefix = \"/sluice.test.Echo/\"\nservice = \"echo\"\n";

fn request(message: &str, count: u32) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        count,
        fail_with: 0,
    }
}

/// Unary calls spread over both instances, a 5-reply stream, and an error status: the
/// checks every transport below must pass.
async fn exercise(channel: Channel, a: &GrpcUpstream, b: &GrpcUpstream) {
    let mut client = EchoClient::new(channel);
    let mut served = BTreeSet::new();
    for i in 0..10 {
        let reply = client
            .unary(request(&format!("hi {i}"), 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.message, format!("hi {i}"));
        served.insert(reply.instance);
    }
    assert_eq!(
        served.len(),
        2,
        "round-robin over both instances: {served:?}"
    );

    let mut stream = client
        .server_stream(request("streamed", 5))
        .await
        .unwrap()
        .into_inner();
    let mut indexes = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.message, "streamed");
        indexes.push(reply.index);
    }
    assert_eq!(indexes, vec![0, 1, 2, 3, 4]);

    // A status from the server travels in the trailers.
    let status = client
        .unary(EchoRequest {
            fail_with: tonic::Code::NotFound as i32,
            ..request("missing", 0)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("failed on purpose"), "{status:?}");
    assert_eq!(a.calls() + b.calls(), 12);
}

#[tokio::test]
async fn grpc_over_h2c_to_cleartext_instances() {
    let a = GrpcUpstream::start("a", None).await;
    let b = GrpcUpstream::start("b", None).await;
    let services = format!(
        "[services.echo]\ninstances = [{}, {}]\n",
        a.instance(),
        b.instance()
    );
    // Active checks configured: gRPC instances are not probed over HTTP/1.1 (tonic refuses
    // it), so they must stay in rotation.
    let rest = format!(
        "{ROUTES}\n[services.echo]\nhealth_check = {{ path = \"/health\", interval = \"100ms\", timeout = \"100ms\", healthy_after = 1, unhealthy_after = 1 }}\n"
    );
    let gw = Gateway::start(&rest, &services).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let echo = gw.services().await;
    assert!(echo.to_string().contains("\"unchecked\""), "{echo}");
    let channel = Endpoint::from_shared(gw.url(""))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    exercise(channel, &a, &b).await;
}

#[tokio::test]
async fn a_service_scheme_makes_bare_addresses_grpc() {
    // go-zero registers `host:port` with no scheme: `[services.NAME] scheme` says what it is.
    let a = GrpcUpstream::start("a", None).await;
    let b = GrpcUpstream::start("b", None).await;
    let services = format!(
        "[services.echo]\ninstances = [{}, {}]\n",
        a.bare_instance(),
        b.bare_instance()
    );
    let rest = format!("{ROUTES}\n[services.echo]\nscheme = \"grpc\"\n");
    let gw = Gateway::start(&rest, &services).await;
    let echo = gw.services().await;
    assert!(echo.to_string().contains("\"grpc\""), "{echo}");
    let channel = Endpoint::from_shared(gw.url(""))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    exercise(channel, &a, &b).await;
}

#[tokio::test]
async fn grpc_over_tls_to_tls_instances() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let front = ca.server("front", &["api.example"]);
    let back = ca.server("back", &[]);
    let a = GrpcUpstream::start("a", Some(&back)).await;
    let b = GrpcUpstream::start("b", Some(&back)).await;
    let services = format!(
        "[services.echo]\ninstances = [{}, {}]\n",
        a.instance(),
        b.instance()
    );
    let port = free_port();
    let proxy = format!(
        "tls = {{ listen = [\"127.0.0.1:{port}\"], certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
        front.cert.display(),
        front.key.display()
    );
    let rest = format!(
        "{ROUTES}\n[services.echo]\nupstream_tls = {{ ca = \"{}\" }}\n",
        ca.cert.display()
    );
    let _gw = Gateway::start_with_proxy(&proxy, &rest, &services).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca.cert).unwrap()))
        .domain_name("api.example");
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    exercise(channel, &a, &b).await;
}

/// An HTTP/2 upstream that completes the handshake, takes each call, and drops the
/// connection without answering: an instance that dies with the request in hand.
struct DiesMidCall {
    addr: std::net::SocketAddr,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DiesMidCall {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    if let Some(Ok(_call)) = connection.accept().await {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    // Dropping the connection closes the socket, the call unanswered.
                });
            }
        });
        Self { addr, calls, task }
    }
}

impl Drop for DiesMidCall {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_call_lost_after_it_was_sent_is_unavailable_and_not_retried() {
    let dying = DiesMidCall::start().await;
    let good = GrpcUpstream::start("good", None).await;
    let services = format!(
        "[services.echo]\ninstances = [{{ id = \"dying\", addr = \"{}\", scheme = \"grpc\" }}, {}]\n",
        dying.addr,
        good.instance()
    );
    // retries = 1: a retry would be allowed if the call had not gone out.
    let routes = format!("{ROUTES}strategy = \"native-round-robin\"\nretries = 1\n");
    let gw = Gateway::start(&routes, &services).await;
    let channel = Endpoint::from_shared(gw.url(""))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = EchoClient::new(channel);
    let mut codes = Vec::new();
    for i in 0..4 {
        let request = EchoRequest {
            message: format!("m{i}"),
            ..Default::default()
        };
        codes.push(match client.unary(request).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        });
    }
    let lost = codes
        .iter()
        .filter(|c| **c == tonic::Code::Unavailable)
        .count();
    assert_eq!(
        lost, 2,
        "every other call went to the dying instance: {codes:?}"
    );
    assert_eq!(dying.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    // POST is not idempotent: a call the dying instance took was not sent again.
    assert_eq!(good.calls(), 2, "{codes:?}");
}

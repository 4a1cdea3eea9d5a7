//! The floor to compare Sluice with: the smallest pingora proxy, as in
//! `shared/MEASUREMENTS.md` — a `ProxyHttp` whose `upstream_peer` returns the next of the
//! given upstreams in turn, and nothing else (no routing, metrics or limits). Same runtime
//! settings as Sluice's defaults (jemalloc, one single-threaded shard per thread, no downstream
//! modules), so a comparison shows what Sluice's own request path costs. `BARE_THREAD_POOL=1`
//! runs pingora's own layout instead (one service on `THREADS` runtimes).
//!
//! `bare-pingora LISTEN THREADS UPSTREAM...`, e.g.
//! `bare-pingora 127.0.0.1:8081 1 127.0.0.1:9001 127.0.0.1:9002`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use sluice::listener::{Endpoint, ProxyShard, ShardApp, ShardBalance};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// pingora's proxy app as a shard's app: every connection as pingora's stream (the default
/// of `ShardApp`), nothing of Sluice's in front.
struct PingoraOnly<A>(std::sync::Arc<A>);

#[async_trait]
impl<A: pingora::apps::ServerApp + Send + Sync + 'static> pingora::apps::ServerApp
    for PingoraOnly<A>
{
    async fn process_new(
        self: &std::sync::Arc<Self>,
        stream: pingora::protocols::Stream,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        self.0.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.0.cleanup().await
    }
}

impl<A: pingora::apps::ServerApp + Send + Sync + 'static> ShardApp for PingoraOnly<A> {}

struct Bare {
    upstreams: Vec<SocketAddr>,
    next: AtomicUsize,
    /// `BARE_TIMEOUTS=1`: set Sluice's per-try timeouts on every peer.
    timeouts: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        let mut peer = HttpPeer::new(self.upstreams[i], false, String::new());
        if self.timeouts {
            // What Sluice sets on every try (route timeout, connect timeout, idle timeout).
            peer.options.connection_timeout = Some(std::time::Duration::from_secs(5));
            peer.options.read_timeout = Some(std::time::Duration::from_secs(30));
            peer.options.write_timeout = Some(std::time::Duration::from_secs(30));
            peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let sluice_benches::FloorArgs {
        listen,
        threads,
        upstreams,
    } = sluice_benches::FloorArgs::from_env("bare-pingora");
    let conf = ServerConf {
        threads,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let timeouts = std::env::var_os("BARE_TIMEOUTS").is_some();
    let configuration = server.configuration.clone();
    let app = |upstreams: Vec<SocketAddr>| {
        pingora::proxy::http_proxy_service(
            &configuration,
            Bare {
                upstreams,
                next: AtomicUsize::new(0),
                timeouts,
            },
        )
    };
    if std::env::var_os("BARE_THREAD_POOL").is_some() {
        // pingora's own layout: one service on `threads` runtimes.
        let mut proxy = app(upstreams);
        proxy.add_tcp(&listen);
        server.add_service(proxy);
    } else {
        // Sluice's layout: one single-threaded shard per thread on the same sockets.
        let endpoints: std::sync::Arc<[Endpoint]> = vec![Endpoint::plain(listen.clone())].into();
        let balance = ShardBalance::new(threads);
        for index in 0..threads {
            let proxy = pingora::proxy::http_proxy(
                &configuration,
                Bare {
                    upstreams: upstreams.clone(),
                    next: AtomicUsize::new(0),
                    timeouts,
                },
            );
            server.add_service(ProxyShard::new(
                index,
                format!("bare pingora {index}"),
                1,
                PingoraOnly(std::sync::Arc::new(proxy)),
                endpoints.clone(),
                balance.clone(),
            ));
        }
    }
    server.run_forever();
}

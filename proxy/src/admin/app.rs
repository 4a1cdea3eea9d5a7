//! The admin HTTP app served by a pingora listening service.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::views;
use crate::gateway::Router;
use crate::pool::Directory;
use crate::strategy::StrategySet;

/// Serves the admin endpoints.
pub struct AdminApp {
    directory: Arc<Directory>,
    router: Arc<ArcSwap<Router>>,
    strategies: Arc<ArcSwap<StrategySet>>,
    token: Option<String>,
    reloader: Option<Arc<crate::reload::Reloader>>,
}

impl AdminApp {
    pub fn new(
        directory: Arc<Directory>,
        router: Arc<ArcSwap<Router>>,
        strategies: Arc<ArcSwap<StrategySet>>,
        token: Option<String>,
        reloader: Option<Arc<crate::reload::Reloader>>,
    ) -> Self {
        Self {
            directory,
            router,
            strategies,
            token,
            reloader,
        }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials);
        presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()))
    }
}

/// The credentials of `Bearer <token>`: the scheme in any case (RFC 9110 11.1), one or more
/// spaces after it.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let len = response.body().len();
    let headers = response.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CONTENT_LENGTH, len.into());
    response
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if path == "/healthz" {
            return text(StatusCode::OK, "ok\n");
        }
        if !self.authorized(session) {
            let mut r = text(StatusCode::UNAUTHORIZED, "admin: bearer token required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        if path == "/admin/reload" {
            if method != http::Method::POST {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "admin: POST /admin/reload\n",
                );
            }
            let Some(reloader) = self.reloader.clone() else {
                return text(StatusCode::NOT_FOUND, "admin: reload is not available\n");
            };
            // Loading plugins compiles WASM: keep it off the async threads.
            return match tokio::task::spawn_blocking(move || reloader.reload()).await {
                Ok(Ok(())) => text(StatusCode::OK, "reloaded\n"),
                Ok(Err(lines)) => text(
                    StatusCode::BAD_REQUEST,
                    &format!("refused:\n{}\n", lines.join("\n")),
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("reload failed: {e}\n"),
                ),
            };
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin: only GET is served here\n",
            );
        }
        match path.as_str() {
            "/metrics" => {
                self.directory.export_live_metrics();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.directory.metrics().render(),
                )
            }
            "/readyz" => {
                if self.directory.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: waiting for the first registry sync\n",
                    )
                }
            }
            "/admin/services" => respond(
                StatusCode::OK,
                "application/json",
                views::services_json(&self.directory),
            ),
            "/admin/strategies" => respond(
                StatusCode::OK,
                "application/json",
                views::strategies_json(&self.router.load(), &self.strategies.load()),
            ),
            _ => text(StatusCode::NOT_FOUND, "admin: no such endpoint\n"),
        }
    }
}

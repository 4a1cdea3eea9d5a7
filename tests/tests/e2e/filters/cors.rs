//! CORS at the gateway: preflights and simple requests exactly as a browser sends them, then
//! a real page in headless Chromium calling the gateway cross-origin with `fetch`.

use std::time::Duration;

use sluice_tests::browser::PageServer;
use sluice_tests::{client, Gateway, Upstream};

use super::services;

fn routes(allowed: &str) -> String {
    format!(
        r#"
[[routes]]
path_prefix = "/api"
service = "svc"
filters = ["rid", "cors", "keys"]

[[routes]]
path_prefix = "/elsewhere"
service = "svc"
filters = ["cors-elsewhere"]

[filters.rid]
kind = "request-id"

[filters.cors]
kind = "cors"
allow_origins = ["{allowed}", "https://*.example.com"]
allow_methods = ["GET", "PUT", "DELETE"]
allow_headers = ["content-type", "x-api-key"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "10m"

[filters.cors-elsewhere]
kind = "cors"
allow_origins = ["https://elsewhere.example.org"]

[filters.keys]
kind = "key-auth"
consumers = [{{ name = "web", key = "web-key" }}]
"#
    )
}

/// A browser's preflight for a `PUT` with `headers`.
async fn preflight(gw: &Gateway, path: &str, origin: &str, headers: &str) -> reqwest::Response {
    client()
        .request(reqwest::Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", headers)
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-site", "cross-site")
        .header("accept", "*/*")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn preflights_are_answered_at_the_gateway() {
    let up = Upstream::start("a").await;
    let origin = "https://app.example.com";
    let gw = Gateway::start(&routes("https://admin.test"), &services(&up)).await;

    let resp = preflight(&gw, "/api/items/1", origin, "content-type,x-api-key").await;
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], origin);
    assert_eq!(h["access-control-allow-methods"], "GET, PUT, DELETE");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-api-key");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h["vary"].to_str().unwrap().contains("Origin"), "{h:?}");
    assert!(h.get("x-sluice-error").is_none(), "a preflight is no error");
    assert!(
        h.get("content-length").is_none(),
        "a 204 has no content-length"
    );
    assert!(
        h.get("x-request-id").is_some(),
        "earlier filters' response fields stay"
    );
    assert_eq!(up.hits(), 0, "a preflight never reaches the upstream");

    // A disallowed origin, method or header: 403, and still no upstream.
    let resp = preflight(&gw, "/api/items/1", "https://evil.test", "content-type").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-sluice-error"], "1");
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert!(resp.text().await.unwrap().contains("evil.test"));
    let resp = preflight(&gw, "/api/items/1", origin, "x-other").await;
    assert_eq!(resp.status(), 403);
    let resp = client()
        .request(reqwest::Method::OPTIONS, gw.url("/api/x"))
        .header("origin", origin)
        .header("access-control-request-method", "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn simple_requests_get_cors_fields_only_for_allowed_origins() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&routes("https://admin.test"), &services(&up)).await;
    let get = |path: &'static str, origin: &'static str| {
        let url = gw.url(path);
        async move {
            client()
                .get(url)
                .header("origin", origin)
                .header("x-api-key", "web-key")
                .send()
                .await
                .unwrap()
        }
    };
    let resp = get("/api/x", "https://admin.test").await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://admin.test");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-request-id");
    assert!(h["vary"].to_str().unwrap().contains("Origin"));

    // The upstream's own CORS fields do not reach a disallowed origin.
    let resp = get(
        "/api/x?respond_header=access-control-allow-origin:*",
        "https://evil.test",
    )
    .await;
    assert_eq!(resp.status(), 200, "CORS is the browser's to enforce");
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        resp.headers()
    );
    assert!(resp.headers()["vary"].to_str().unwrap().contains("Origin"));

    // A later filter's refusal is readable by the page: it carries the CORS fields.
    let resp = client()
        .get(gw.url("/api/x"))
        .header("origin", "https://admin.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://admin.test"
    );
}

/// The page: a credentialed cross-origin `PUT` with a custom header (so the browser sends a
/// preflight first), a response header read through `expose_headers`, and a call to a route
/// whose CORS does not allow this origin (the browser must block it).
fn page(gateway: &str) -> String {
    format!(
        r#"<!doctype html><html><body><script>
const gw = "{gateway}";
async function run() {{
  const out = {{}};
  try {{
    const r = await fetch(gw + "/api/items/7", {{
      method: "PUT",
      credentials: "include",
      headers: {{ "content-type": "application/json", "x-api-key": "web-key" }},
      body: JSON.stringify({{ n: 7 }}),
    }});
    const body = await r.json();
    out.put = {{ status: r.status, method: body.method, rid: r.headers.get("x-request-id"), origin: body.headers.origin || null }};
  }} catch (e) {{
    out.put = {{ error: String(e) }};
  }}
  try {{
    const r = await fetch(gw + "/elsewhere/x");
    out.elsewhere = {{ status: r.status }};
  }} catch (e) {{
    out.elsewhere = {{ blocked: String(e) }};
  }}
  await fetch("/report?" + encodeURIComponent(JSON.stringify(out)));
}}
run();
</script></body></html>"#
    )
}

#[tokio::test]
async fn a_browser_calls_the_gateway_cross_origin() {
    let up = Upstream::start("a").await;
    // The page's origin must be known to the gateway's config before the page server
    // exists: the server's port is taken first, the page set once the gateway is up.
    let mut origin_server = PageServer::start(String::new()).await;
    let gw = Gateway::start(&routes(&origin_server.origin()), &services(&up)).await;
    origin_server.set_page(page(&format!("http://{}", gw.proxy)));

    let report = origin_server.run_in_browser(Duration::from_secs(60)).await;
    let out: serde_json::Value = serde_json::from_str(&report).expect(&report);
    assert_eq!(out["put"]["status"], 200, "{out}");
    assert_eq!(out["put"]["method"], "PUT", "{out}");
    assert_eq!(out["put"]["origin"], origin_server.origin(), "{out}");
    let rid = out["put"]["rid"].as_str().unwrap_or("");
    assert_eq!(rid.len(), 36, "the exposed x-request-id is readable: {out}");
    assert!(
        out["elsewhere"]["blocked"].is_string(),
        "a disallowed origin's fetch is blocked by the browser: {out}"
    );
    // The preflight went nowhere but the gateway: the upstream saw the PUT and the
    // blocked GET (CORS is enforced by the browser, on the response).
    assert_eq!(up.hits(), 2, "{out}");
}

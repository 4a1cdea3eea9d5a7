//! Header rules, redirects, path rewrites and W3C trace context through the real gateway.

use serde_json::Value;
use sluice_tests::{metric, Gateway, Upstream};

use super::{access_lines, config, get, services};

#[tokio::test]
async fn header_rules_with_variables_on_both_sides() {
    let up = Upstream::start("a").await;
    let tables = r#"
[filters.rid]
kind = "request-id"

[filters.hdrs]
kind = "headers"
request = { set = { "x-env" = "prod", "x-client" = "${client_ip} via ${route}", "x-target" = "${method} ${host}${uri}" }, add = { "x-tag" = "gw" }, remove = ["x-debug"] }
response = { set = { "x-served-by" = "sluice", "x-echo-id" = "${request_id}" }, remove = ["x-upstream-id"], add = { "cache-control" = "no-store" } }
"#;
    let gw = Gateway::start(&config("\"rid\", \"hdrs\"", tables), &services(&up)).await;
    let (status, headers, body) = get(
        &gw,
        "/p/q?a=1",
        &[
            ("x-debug", "secret"),
            ("x-env", "dev"),
            ("x-tag", "client"),
            ("x-request-id", "abc-123"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = &body["headers"];
    assert_eq!(seen["x-env"], "prod", "set replaces the client's: {body}");
    assert_eq!(seen["x-client"], "127.0.0.1 via /");
    assert!(
        seen["x-target"]
            .as_str()
            .unwrap()
            .starts_with("GET 127.0.0.1/p/q?a=1"),
        "{body}"
    );
    assert_eq!(
        seen["x-tag"], "client, gw",
        "add keeps the client's: {body}"
    );
    assert!(seen.get("x-debug").is_none(), "{body}");
    assert_eq!(headers["x-served-by"], "sluice");
    assert_eq!(headers["x-echo-id"], "abc-123");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.get("x-upstream-id").is_none(), "{headers:?}");
}

#[tokio::test]
async fn a_bad_header_rule_is_refused_and_the_old_config_keeps_serving() {
    let up = Upstream::start("a").await;
    let tables =
        "[filters.hdrs]\nkind = \"headers\"\nrequest = { set = { \"x-env\" = \"one\" } }\n";
    let gw = Gateway::start(&config("\"hdrs\"", tables), &services(&up)).await;
    let bad =
        "[filters.hdrs]\nkind = \"headers\"\nrequest = { set = { \"content-length\" = \"0\" } }\n";
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, text.replace(tables, bad)).unwrap();
    gw.signal("HUP");
    gw.reload("error", 1.0).await;
    assert!(
        gw.log().contains("filters.hdrs.request.set"),
        "the log names the key: {}",
        gw.log()
    );
    let (status, _, body) = get(&gw, "/x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["headers"]["x-env"], "one");
}

#[tokio::test]
async fn redirects_answer_at_the_gateway() {
    let up = Upstream::start("a").await;
    let rest = r#"
[[routes]]
path_prefix = "/old"
service = "svc"
filters = ["to-new"]

[[routes]]
path_prefix = "/"
service = "svc"
filters = ["to-https"]

[filters.to-new]
kind = "redirect"
to = "/new${path}?from=${route}"
status = 308

[filters.to-https]
kind = "redirect"
to = "https://${host}${uri}"
status = 301
"#;
    let gw = Gateway::start(rest, &services(&up)).await;
    let (status, headers, body) = get(&gw, "/old/a?x=1", &[]).await;
    assert_eq!(status, 308, "{body}");
    assert_eq!(headers["location"], "/new/old/a?from=/old");
    assert!(
        headers.get("x-sluice-error").is_none(),
        "a redirect is no error"
    );
    let (status, headers, _) = get(&gw, "/p?q=1", &[]).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "https://127.0.0.1/p?q=1");
    assert_eq!(up.hits(), 0);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_filter_rejections_total{filter=\"to-https\",route=\"/\",status=\"301\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn rewrites_change_the_upstream_path_and_keep_the_query() {
    let up = Upstream::start("a").await;
    let rest = r#"
[[routes]]
path_prefix = "/api"
strip_prefix = true
service = "svc"
filters = ["v1-to-v2"]

[filters.v1-to-v2]
kind = "rewrite"
path_regex = "^/api/v1/(?P<rest>.*)$"
replacement = "/v2/${rest}"
"#;
    let gw = Gateway::start(rest, &services(&up)).await;
    let (status, _, body) = get(&gw, "/api/v1/users/7?full=1", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/v2/users/7");
    assert_eq!(body["query"], "full=1");
    // Not matched: the route's prefix strip as usual.
    let (_, _, body) = get(&gw, "/api/other", &[]).await;
    assert_eq!(body["path"], "/other");
}

/// The trace id of a `traceparent`.
fn trace_id(traceparent: &str) -> &str {
    &traceparent[3..35]
}

fn span_id(traceparent: &str) -> &str {
    &traceparent[36..52]
}

#[tokio::test]
async fn trace_context_is_continued_through_two_gateways() {
    let up = Upstream::start("a").await;
    let tables = "[filters.trace]\nkind = \"trace-context\"\n";
    let inner = Gateway::start(&config("\"trace\"", tables), &services(&up)).await;
    let inner_as_instance = format!(
        "[services.svc]\ninstances = [{{ id = \"inner\", addr = \"{}\" }}]\n",
        inner.proxy
    );
    let outer = Gateway::start(&config("\"trace\"", tables), &inner_as_instance).await;

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, body) = get(
        &outer,
        "/t",
        &[
            ("traceparent", incoming),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = body["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(trace_id(&seen), trace_id(incoming), "{seen}");
    assert_ne!(span_id(&seen), span_id(incoming), "each gateway is a span");
    assert!(seen.ends_with("-01"), "the sampled flag is kept: {seen}");
    assert_eq!(body["headers"]["tracestate"], "congo=t61rcWkgMzE");
    for gw in [&outer, &inner] {
        let lines = access_lines(gw, 1).await;
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("trace_id={}", trace_id(incoming)))
                    || l.contains(&format!("trace_id=\"{}\"", trace_id(incoming)))),
            "{lines:#?}"
        );
    }

    // Started when absent: one trace id through both, a new span at each.
    let (_, _, body) = get(&outer, "/t", &[]).await;
    let started = body["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(started.len(), 55, "{started}");
    assert_ne!(trace_id(&started), trace_id(incoming));
    let lines = access_lines(&outer, 2).await;
    assert!(
        lines.iter().any(|l| l.contains(trace_id(&started))),
        "{lines:#?}"
    );

    // Malformed: restarted, never forwarded, and its tracestate dropped.
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "garbage",
    ] {
        let (_, _, body) = get(
            &outer,
            "/t",
            &[("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        let seen = body["headers"]["traceparent"].as_str().unwrap();
        assert_ne!(seen, bad);
        assert_eq!(seen.len(), 55, "{seen}");
        assert_ne!(
            trace_id(seen),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "{bad} -> {seen}"
        );
        assert_eq!(body["headers"].get("tracestate"), None::<&Value>, "{body}");
    }
}

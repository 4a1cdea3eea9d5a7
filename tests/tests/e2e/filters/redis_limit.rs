//! `rate-limit` with `store = "redis"` against a real `redis-server`: one budget shared by two
//! gateways, keys that expire with their bucket, and Redis paused, killed and started again
//! under a running gateway (`on_error` allow and deny, never a request held longer than the
//! store's timeout).

use std::time::{Duration, Instant};

use sluice_tests::{eventually, metric, Gateway, Redis, Upstream};

use super::{config, get, services};

fn limit(name: &str, redis: &Redis, rate: u64, on_error: &str) -> String {
    format!(
        "[filters.{name}]\nkind = \"rate-limit\"\nrate = {rate}\nper = \"1h\"\nkey = \"header:x-user\"\n\
         store = \"redis\"\nredis = {{ url = \"{}\", on_error = \"{on_error}\", timeout = \"200ms\" }}\n",
        redis.url()
    )
}

#[tokio::test]
async fn two_gateways_share_one_budget_in_redis() {
    let redis = Redis::start().await;
    let up = Upstream::start("a").await;
    let table = limit("shared", &redis, 10, "deny");
    let a = Gateway::start(&config("\"shared\"", &table), &services(&up)).await;
    let b = Gateway::start(&config("\"shared\"", &table), &services(&up)).await;

    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, headers, body) = get(gw, "/", &[("x-user", "u1")]).await;
        statuses.push(status);
        if status == 200 {
            assert_eq!(headers["ratelimit-limit"], "10", "{body}");
            remaining.push(headers["ratelimit-remaining"].to_str().unwrap().to_string());
        } else {
            assert_eq!(status, 429, "{body}");
            let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((300..=360).contains(&retry), "a tenth of an hour: {retry}");
            assert_eq!(headers["x-sluice-error"], "1");
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(&statuses[10..], [429, 429]);
    let expected: Vec<String> = (0..10).rev().map(|n| n.to_string()).collect();
    assert_eq!(
        remaining, expected,
        "one budget, counted down across both gateways"
    );
    assert_eq!(
        get(&b, "/", &[("x-user", "u2")]).await.0,
        200,
        "another key, another budget"
    );

    // The budget lives under a readable key that expires when its bucket would be full.
    let pttl = redis
        .command(&["PTTL", "sluice:rl:shared:header:u1"])
        .await
        .unwrap();
    let ms: i64 = pttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&ms),
        "ten requests' worth of an hour: {pttl}"
    );
}

#[tokio::test]
async fn redis_paused_killed_and_back() {
    let mut redis = Redis::start().await;
    let up = Upstream::start("a").await;
    let tables = format!(
        "{}\n{}\n[[routes]]\npath_prefix = \"/closed\"\nservice = \"svc\"\nfilters = [\"strict\"]\n",
        limit("open", &redis, 1000, "allow"),
        limit("strict", &redis, 1000, "deny"),
    );
    let gw = Gateway::start(&config("\"open\"", &tables), &services(&up)).await;
    let user = [("x-user", "u1")];
    let (status, headers, _) = get(&gw, "/x", &user).await;
    assert_eq!(
        (status, headers.contains_key("ratelimit-remaining")),
        (200, true)
    );
    assert_eq!(get(&gw, "/closed", &user).await.0, 200);

    // A Redis that stops answering holds a request no longer than the store's timeout.
    redis
        .command(&["CLIENT", "PAUSE", "3000", "ALL"])
        .await
        .unwrap();
    let started = Instant::now();
    let (status, headers, body) = get(&gw, "/closed", &user).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        body.as_str().unwrap().contains("cannot be checked"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "held {:?} by a paused Redis",
        started.elapsed()
    );
    let (status, headers, _) = get(&gw, "/x", &user).await;
    assert_eq!(status, 200, "on_error = allow lets it through");
    assert!(!headers.contains_key("ratelimit-remaining"));
    eventually(
        "Redis answering after the pause",
        Duration::from_secs(10),
        || async { (get(&gw, "/closed", &user).await.0 == 200).then_some(()) },
    )
    .await;

    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get(&gw, "/closed", &user).await.0, 503);
        assert_eq!(get(&gw, "/x", &user).await.0, 200);
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
    let m = gw.metrics().await;
    let errors = metric(&m, "sluice_filter_store_errors_total{filter=\"strict\"}").unwrap_or(0.0);
    assert!(errors >= 6.0, "store errors counted: {errors}\n{m}");
    assert!(
        metric(
            &m,
            "sluice_filter_rejections_total{filter=\"strict\",route=\"/closed\",status=\"503\"}"
        )
        .is_some_and(|n| n >= 6.0),
        "{m}"
    );

    // Started again (empty: no persistence), it is used again without a reload.
    redis.resume().await;
    eventually("Redis used again", Duration::from_secs(10), || async {
        let (status, headers, _) = get(&gw, "/x", &user).await;
        (status == 200 && headers.contains_key("ratelimit-remaining")).then_some(())
    })
    .await;
    assert_eq!(get(&gw, "/closed", &user).await.0, 200);
    assert!(gw.log().contains("answers again"), "{}", gw.log());
}

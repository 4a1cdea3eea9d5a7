//! The `jwt` filter against tokens, keys and JWKS documents made by PyJWT and cryptography
//! (`tests/py/jwt_tool.py`): every algorithm family, the claim checks, `alg: none` and the
//! HS/RS confusion, a JWKS file rewritten under a running gateway and a JWKS served over
//! https.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::pyjwt::now;
use sluice_tests::{eventually, metric, Ca, Gateway, JwksServer, JwtKit, Upstream};

use super::{access_lines, check, config, get, services};

const ISSUER: &str = "https://id.example";

/// Claims that pass the filter's checks, with `extra` merged in.
fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "sub": "alice", "iss": ISSUER, "aud": ["api", "web"],
        "exp": now() + 600, "iat": now(), "tenant": "acme",
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn spec(key: &str, alg: &str, kid: Option<&str>, claims: Value) -> Value {
    let mut spec = json!({ "key": key, "alg": alg, "claims": claims });
    if let Some(kid) = kid {
        spec["kid"] = json!(kid);
    }
    spec
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn tokens_of_every_family_pass_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kit = JwtKit::new(dir.path());
    let up = Upstream::start("a").await;
    let tables = format!(
        "[filters.users]\nkind = \"jwt\"\nkeys = [{:?}, {:?}, {:?}]\nissuer = \"{ISSUER}\"\n\
         audience = [\"api\"]\nleeway = \"5s\"\n\
         claims_to_headers = {{ tenant = \"x-tenant\", sub = \"x-user-id\" }}\n",
        kit.path("rsa1.pub.pem"),
        kit.path("ec.pub.pem"),
        kit.path("ed.pub.pem"),
    );
    let gw = Gateway::start(&config("\"users\"", &tables), &services(&up)).await;

    let good = kit.mint(&[
        spec("rsa1", "RS256", None, claims(json!({}))),
        spec("rsa1", "PS384", None, claims(json!({}))),
        spec("ec", "ES256", None, claims(json!({}))),
        spec("ed", "EdDSA", None, claims(json!({"aud": "api"}))),
        // Expired two seconds ago: inside the leeway.
        spec("rsa1", "RS512", None, claims(json!({"exp": now() - 2}))),
    ]);
    for token in &good {
        let (status, _, body) = get(
            &gw,
            "/x",
            &[
                ("authorization", &bearer(token)),
                ("x-tenant", "spoofed"),
                ("x-consumer", "root"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let headers = &body["headers"];
        assert_eq!(headers["x-consumer"], "alice", "{body}");
        assert_eq!(headers["x-user-id"], "alice", "{body}");
        assert_eq!(headers["x-tenant"], "acme", "{body}");
        assert!(
            headers.get("authorization").is_none(),
            "the token is not forwarded: {body}"
        );
    }
    let passed = up.hits();
    assert_eq!(passed, good.len());

    let bad = kit.mint(&[
        spec("rsa1", "RS256", None, claims(json!({"exp": now() - 60}))),
        spec("rsa1", "RS256", None, claims(json!({"nbf": now() + 60}))),
        spec(
            "rsa1",
            "RS256",
            None,
            claims(json!({"iss": "https://evil.example"})),
        ),
        spec("rsa1", "RS256", None, claims(json!({"aud": "other"}))),
        spec(
            "rsa1",
            "RS256",
            None,
            json!({"sub": "alice", "iss": ISSUER, "exp": now() + 60}),
        ),
        spec("rsa_other", "RS256", None, claims(json!({}))),
        json!({ "alg": "none", "claims": claims(json!({})) }),
        json!({ "alg": "HS256", "confusion": "rsa1", "claims": claims(json!({})) }),
        spec("rsa1", "RS256", None, claims(json!({"exp": "tomorrow"}))),
    ]);
    let expected = [
        "expired",
        "not valid yet",
        "issuer",
        "audience",
        "audience",
        "signature is not valid",
        "malformed",
        "HS256",
        "not a number",
    ];
    for (token, why) in bad.iter().zip(expected) {
        let (status, headers, body) = get(&gw, "/x", &[("authorization", &bearer(token))]).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert_eq!(
            headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(headers["x-sluice-error"], "1");
        assert!(body.as_str().unwrap().contains(why), "{why}: {body}");
    }
    for (value, why) in [
        ("", "a token is required (Authorization: Bearer)"),
        ("Basic YWxpY2U6cHc=", "a token is required"),
        ("Bearer not.a.token", "malformed"),
        ("Bearer ", "a token is required"),
    ] {
        let headers: &[(&str, &str)] = if value.is_empty() {
            &[]
        } else {
            &[("authorization", value)]
        };
        let (status, _, body) = get(&gw, "/x", headers).await;
        assert_eq!(status, 401, "{value:?}: {body}");
        assert!(body.as_str().unwrap().contains(why), "{value:?}: {body}");
    }
    assert_eq!(
        up.hits(),
        passed,
        "refused requests never reach the upstream"
    );

    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_filter_rejections_total{filter=\"users\",route=\"/\",status=\"401\"}"
        ),
        Some((bad.len() + 4) as f64),
        "{m}"
    );
    let lines = access_lines(&gw, good.len()).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("consumer=alice") || l.contains("consumer=\"alice\"")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn an_hmac_secret_and_a_jwks_file_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let kit = JwtKit::new(dir.path());
    let up = Upstream::start("a").await;
    let jwks = dir.path().join("served.json");
    std::fs::copy(kit.path("jwks.json"), &jwks).unwrap();
    let tables = format!(
        "[filters.hs]\nkind = \"jwt\"\nsecret_file = {:?}\n\n\
         [filters.set]\nkind = \"jwt\"\njwks = {:?}\nfrom = \"query:access_token\"\n\n\
         [[routes]]\npath_prefix = \"/set\"\nservice = \"svc\"\nfilters = [\"set\"]\n",
        kit.path("hs.secret"),
        jwks,
    );
    let gw = Gateway::start(&config("\"hs\"", &tables), &services(&up)).await;
    let tokens = kit.mint(&[
        spec(
            "hs",
            "HS256",
            None,
            json!({"sub": "svc-a", "exp": now() + 600}),
        ),
        spec("rsa1", "RS256", None, json!({"sub": "bob"})),
        spec("rsa2", "RS256", Some("rsa2"), json!({"sub": "carol"})),
        spec("ec", "ES256", Some("ec"), json!({"sub": "dan"})),
    ]);
    let (hs, rs, rotated, ec) = (&tokens[0], &tokens[1], &tokens[2], &tokens[3]);

    let (status, _, body) = get(&gw, "/x", &[("authorization", &bearer(hs))]).await;
    assert_eq!(
        (status, body["headers"]["x-consumer"].clone()),
        (200, json!("svc-a")),
        "{body}"
    );
    let (status, _, body) = get(&gw, "/x", &[("authorization", &bearer(rs))]).await;
    assert_eq!(
        status, 401,
        "an RS256 token where only an HMAC secret is configured"
    );
    assert!(body.as_str().unwrap().contains("RS256"), "{body}");

    // The query parameter is the token, and is taken out of the forwarded query.
    let (status, _, body) = get(&gw, &format!("/set/a?access_token={ec}&page=2"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer"], "dan");
    assert_eq!(
        (body["path"].as_str(), body["query"].as_str()),
        (Some("/set/a"), Some("page=2")),
        "{body}"
    );
    let path = format!("/set/a?access_token={rotated}");
    assert_eq!(
        get(&gw, &path, &[]).await.0,
        401,
        "rsa2 is not in the set yet"
    );

    std::fs::copy(kit.path("jwks2.json"), &jwks).unwrap();
    eventually(
        "the rewritten JWKS file taken",
        Duration::from_secs(10),
        || async { (get(&gw, &path, &[]).await.0 == 200).then_some(()) },
    )
    .await;
    // A broken document leaves the keys as they were.
    std::fs::write(&jwks, "{\"keys\": [").unwrap();
    eventually(
        "the broken file noticed",
        Duration::from_secs(10),
        || async { gw.log().contains("JWKS file not taken").then_some(()) },
    )
    .await;
    assert_eq!(get(&gw, &path, &[]).await.0, 200);
    assert_eq!(
        get(&gw, &format!("/set/a?access_token={ec}"), &[]).await.0,
        401,
        "ec left the set with the rewrite"
    );
}

#[tokio::test]
async fn a_jwks_url_is_fetched_over_https_and_again_for_an_unknown_kid() {
    let dir = tempfile::tempdir().unwrap();
    let kit = JwtKit::new(dir.path());
    let ca = Ca::new(dir.path());
    let leaf = ca.server("jwks", &["localhost"]);
    let served = dir.path().join("served.json");
    std::fs::copy(kit.path("jwks.json"), &served).unwrap();
    let server = JwksServer::start(&served, &leaf);
    let up = Upstream::start("a").await;
    let tables = format!(
        "[filters.idp]\nkind = \"jwt\"\njwks = \"https://127.0.0.1:{}/.well-known/jwks.json\"\n\
         jwks_refresh = \"1h\"\nalgorithms = [\"RS256\", \"ES256\"]\n",
        server.port
    );
    let ca_file = ca.cert.display().to_string();
    let gw = Gateway::start_with_env(
        &config("\"idp\"", &tables),
        &services(&up),
        &[("SSL_CERT_FILE", &ca_file)],
    )
    .await;
    let tokens = kit.mint(&[
        spec("rsa1", "RS256", Some("rsa1"), json!({"sub": "erin"})),
        spec("rsa2", "RS256", Some("rsa2"), json!({"sub": "frank"})),
        spec("rsa1", "PS256", Some("rsa1"), json!({"sub": "erin"})),
    ]);
    let auth = |t: &str| vec![("authorization".to_string(), bearer(t))];
    let send = |token: String| {
        let gw = &gw;
        async move {
            let headers = auth(&token);
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            get(gw, "/x", &headers).await
        }
    };
    eventually(
        "keys fetched from the URL",
        Duration::from_secs(10),
        || async { (send(tokens[0].clone()).await.0 == 200).then_some(()) },
    )
    .await;
    let (status, _, body) = send(tokens[2].clone()).await;
    assert_eq!(status, 401, "PS256 is not among the configured algorithms");
    assert!(body.as_str().unwrap().contains("PS256"), "{body}");

    // The provider rotates in a new key: a token with its kid makes the gateway fetch again
    // (once, not per request) instead of waiting an hour.
    let before = server.requests();
    std::fs::copy(kit.path("jwks2.json"), &served).unwrap();
    for _ in 0..20 {
        assert_eq!(send(tokens[1].clone()).await.0, 401);
    }
    eventually("the new kid fetched", Duration::from_secs(20), || async {
        (send(tokens[1].clone()).await.0 == 200).then_some(())
    })
    .await;
    assert!(
        server.requests() - before <= 2,
        "{} fetches for 20 unknown-kid tokens",
        server.requests() - before
    );
}

#[tokio::test]
async fn check_refuses_bad_jwt_filters_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let kit = JwtKit::new(dir.path());
    let services = dir.path().join("services.toml");
    std::fs::write(&services, "").unwrap();
    let private = kit.path("private/rsa1.pem");
    for (table, expected) in [
        (
            "jwks = \"http://id.example/keys\"".to_string(),
            "filters.f.jwks: keys over plain http",
        ),
        (format!("keys = [{private:?}]"), "filters.f.keys[0]: "),
        (
            format!(
                "keys = [{:?}]\nalgorithms = [\"none\"]",
                kit.path("rsa1.pub.pem")
            ),
            "filters.f.algorithms[0]: \"none\" (an unsigned token) is never accepted",
        ),
        (
            format!(
                "keys = [{:?}]\nalgorithms = [\"ES256\"]",
                kit.path("rsa1.pub.pem")
            ),
            "filters.f.algorithms[0]: no key of this filter verifies ES256",
        ),
        (
            format!("jwks = {:?}", kit.path("hs.secret")),
            "filters.f.jwks: ",
        ),
    ] {
        let tables = format!("[filters.f]\nkind = \"jwt\"\n{table}\n");
        let (ok, stderr) = check(dir.path(), &services, "\"f\"", &tables);
        assert!(!ok, "{table}: accepted");
        assert!(stderr.contains(expected), "{table}: {stderr}");
        assert!(
            stderr.contains("sluice.toml"),
            "the file is named: {stderr}"
        );
    }
    let (_, stderr) = check(
        dir.path(),
        &services,
        "\"f\"",
        &format!("[filters.f]\nkind = \"jwt\"\nkeys = [{private:?}]\n"),
    );
    assert!(stderr.contains("a private key"), "{stderr}");
}

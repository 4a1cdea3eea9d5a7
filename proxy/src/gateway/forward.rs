//! What changes on the way upstream: the prefix strip, the hop-by-hop fields, and the
//! `X-Forwarded-*` headers.

use http::Uri;
use pingora::http::RequestHeader;
use pingora::Result;

use crate::config::RouteSpec;

/// Rewrites the path when the route strips its prefix; `/users/1?q` -> `/1?q`, `/users` -> `/`.
pub(crate) fn strip_prefix(route: &RouteSpec, request: &mut RequestHeader) -> Result<()> {
    let Some(path_and_query) = stripped_target(route, request.uri.path(), request.uri.query())
    else {
        return Ok(());
    };
    let uri: Uri = path_and_query.parse().map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InternalError, "rewriting path", e)
    })?;
    request.set_uri(uri);
    Ok(())
}

/// The request target after the route strips its prefix from `path`; `None` when unchanged.
pub(crate) fn stripped_target(
    route: &RouteSpec,
    path: &str,
    query: Option<&str>,
) -> Option<String> {
    if !route.strip_prefix || route.path_prefix == "/" {
        return None;
    }
    let rest = path.strip_prefix(route.path_prefix.as_str())?;
    let mut path_and_query = String::with_capacity(rest.len() + 16);
    if !rest.starts_with('/') {
        path_and_query.push('/');
    }
    path_and_query.push_str(rest);
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Some(path_and_query)
}

/// RFC 9110 7.6.1 and 8.6 on pingora's path, as the codec does on the fast path: the fields
/// the client's `Connection` names are not forwarded, nor `Keep-Alive` and
/// `Proxy-Connection`; equal duplicate `Content-Length`s (the only ones the codec lets
/// through) go as one. `Connection: upgrade` and `Upgrade` stay: pingora proxies upgrades.
/// Costs nothing for a request without these fields.
pub(crate) fn hop_by_hop(request: &mut RequestHeader) -> Result<()> {
    let named: Vec<String> = request
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| sluice_http1::fields::list(v.as_bytes()))
        .filter(|o| {
            !["close", "keep-alive", "upgrade"]
                .iter()
                .any(|keep| o.eq_ignore_ascii_case(keep.as_bytes()))
        })
        .map(|o| String::from_utf8_lossy(o).to_ascii_lowercase())
        .collect();
    for name in named
        .iter()
        .map(String::as_str)
        .chain(["keep-alive", "proxy-connection"])
    {
        if request.headers.contains_key(name) {
            request.remove_header(name);
        }
    }
    let mut lengths = request.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = lengths.next().map(|v| v.as_bytes().to_vec());
    if let Some(first) = first {
        if lengths.next().is_some() || first.contains(&b',') {
            let length = sluice_http1::fields::fold_content_length(None, &first).map_err(|e| {
                pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "content-length", e)
            })?;
            request.insert_header(http::header::CONTENT_LENGTH, length)?;
        }
    }
    Ok(())
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and `-Host`.
pub(crate) fn forwarded_headers(
    request: &mut RequestHeader,
    client_ip: Option<std::net::IpAddr>,
    host: &str,
    proto: &'static str,
) -> Result<()> {
    if let Some(ip) = client_ip {
        let value = match request
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(existing) if !existing.is_empty() => format!("{existing}, {ip}"),
            _ => ip.to_string(),
        };
        request.insert_header("x-forwarded-for", value)?;
    }
    request.insert_header("x-forwarded-proto", proto)?;
    if !host.is_empty() {
        request.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, strip: bool) -> RouteSpec {
        RouteSpec {
            name: "r".into(),
            path_prefix: prefix.into(),
            hosts: vec![],
            service: "s".into(),
            strategy: crate::config::StrategyRef::Builtin(
                crate::config::BuiltinStrategy::RoundRobin,
            ),
            hash_on: None,
            strip_prefix: strip,
            timeout: std::time::Duration::from_secs(1),
            retries: 1,
            total_timeout: None,
            max_body_bytes: None,
        }
    }

    fn path_after(prefix: &str, strip: bool, uri: &str) -> String {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        strip_prefix(&route(prefix, strip), &mut req).unwrap();
        req.uri.to_string()
    }

    #[test]
    fn strips_prefix_and_keeps_query() {
        assert_eq!(path_after("/users", true, "/users/1?q=2"), "/1?q=2");
        assert_eq!(path_after("/users", true, "/users"), "/");
        assert_eq!(path_after("/users/", true, "/users/x"), "/x");
        assert_eq!(path_after("/users", false, "/users/1"), "/users/1");
    }

    #[test]
    fn appends_forwarded_for() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-forwarded-for", "10.0.0.1").unwrap();
        forwarded_headers(&mut req, Some([127, 0, 0, 1].into()), "example.com", "http").unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-forwarded-host"], "example.com");
    }
}

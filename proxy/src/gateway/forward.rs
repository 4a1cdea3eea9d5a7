//! What changes on the way upstream: the prefix strip, the hop-by-hop fields, and the
//! `X-Forwarded-*` headers.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderValue, Uri};
use pingora::http::RequestHeader;
use pingora::Result;

use super::head_edit::{ForwardedFields, KnownName};
use crate::config::RouteSpec;
use crate::gateway::engine::filters::FilterState;

/// Rewrites the target when the route strips its prefix (`/users/1?q` -> `/1?q`, `/users`
/// -> `/`) or a filter changed the path or the query (see [`upstream_target`]).
pub(crate) fn rewrite_target(
    route: &RouteSpec,
    request: &mut RequestHeader,
    changed: Changed<'_>,
) -> Result<()> {
    let Some(path_and_query) =
        upstream_target(route, request.uri.path(), request.uri.query(), changed)
    else {
        return Ok(());
    };
    let uri: Uri = path_and_query.parse().map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InternalError, "rewriting path", e)
    })?;
    request.set_uri(uri);
    Ok(())
}

/// What the filters changed of the target: a new path (`rewrite`), a new query (empty:
/// none).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Changed<'a> {
    pub(crate) path: Option<&'a str>,
    pub(crate) query: Option<&'a str>,
}

impl<'a> Changed<'a> {
    pub(crate) fn by(state: Option<&'a FilterState>) -> Self {
        match state {
            None => Self::default(),
            Some(state) => Self {
                path: state.path.as_deref(),
                query: state.query.as_deref(),
            },
        }
    }
}

/// The request target as sent upstream, when it is not the client's: a filter rewrote the
/// path (then it goes as the filter made it), or the route strips its prefix from `path`;
/// a filter changed the query (empty: no query). `None`: unchanged.
pub(crate) fn upstream_target(
    route: &RouteSpec,
    path: &str,
    query: Option<&str>,
    changed: Changed<'_>,
) -> Option<String> {
    let new_query = changed.query;
    let rest = match changed.path {
        Some(rewritten) => Some(rewritten),
        None if route.strip_prefix && route.path_prefix != "/" => {
            path.strip_prefix(route.path_prefix.as_str())
        }
        None => None,
    };
    if rest.is_none() && new_query.is_none() {
        return None;
    }
    let path = rest.unwrap_or(path);
    let query = match new_query {
        Some(q) => Some(q).filter(|q| !q.is_empty()),
        None => query,
    };
    let mut path_and_query = String::with_capacity(path.len() + 16);
    if !path.starts_with('/') {
        path_and_query.push('/');
    }
    path_and_query.push_str(path);
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Some(path_and_query)
}

/// The client's IP: the peer's, or, when the peer is one of `trusted` proxies, the
/// rightmost address of the first `X-Forwarded-For` field that is not a trusted proxy
/// (the leftmost when all are; the peer when the field is missing or unreadable).
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&[u8]>,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    let peer = peer?;
    if trusted.is_empty() || !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(list) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok()) else {
        return Some(peer);
    };
    let mut client = peer;
    for entry in list.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
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

/// RFC 9113 8.2.3: the `Cookie` fields an HTTP/2 client split are joined into one (`; `)
/// before the request goes on, as an HTTP/1.1 instance expects one; the fast path's HTTP/2
/// driver writes them so too. Costs nothing for a request with one or none.
pub(crate) fn join_cookies(request: &mut RequestHeader) -> Result<()> {
    let mut cookies = request.headers.get_all(http::header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return Ok(());
    };
    let mut joined = first.as_bytes().to_vec();
    for more in request.headers.get_all(http::header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    let value = field_value(joined.into())?;
    request.insert_header(http::header::COOKIE, value)?;
    Ok(())
}

/// How many fields [`forwarded_headers`] sets at most.
pub(crate) const FORWARDED_FIELDS: usize = 3;

pub(crate) const X_FORWARDED_FOR: KnownName = KnownName::new("x-forwarded-for");
const X_FORWARDED_PROTO: KnownName = KnownName::new("x-forwarded-proto");
const X_FORWARDED_HOST: KnownName = KnownName::new("x-forwarded-host");

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and `-Host`.
pub(crate) fn forwarded_headers(
    request: &mut impl ForwardedFields,
    client_ip: Option<std::net::IpAddr>,
    host: &str,
    proto: &'static str,
) -> Result<()> {
    if let Some(ip) = client_ip {
        let value = match request.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.is_empty() => format!("{existing}, {ip}"),
            _ => ip.to_string(),
        };
        request.set_known(&X_FORWARDED_FOR, field_value(value.into())?)?;
    }
    request.set_known(&X_FORWARDED_PROTO, HeaderValue::from_static(proto))?;
    if !host.is_empty() {
        request.set_known(
            &X_FORWARDED_HOST,
            field_value(Bytes::copy_from_slice(host.as_bytes()))?,
        )?;
    }
    Ok(())
}

fn field_value(bytes: Bytes) -> Result<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes).map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "x-forwarded-*", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, strip: bool) -> RouteSpec {
        RouteSpec {
            methods: Vec::new(),
            headers: Vec::new(),
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
            filters: Vec::new(),
        }
    }

    fn path_after(prefix: &str, strip: bool, uri: &str) -> String {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        rewrite_target(&route(prefix, strip), &mut req, Changed::default()).unwrap();
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
    fn a_filter_changes_the_query_or_the_path() {
        let query = |q| Changed {
            path: None,
            query: Some(q),
        };
        let r = route("/users", true);
        assert_eq!(
            upstream_target(&r, "/users/1", Some("k=s&a=1"), query("a=1")).as_deref(),
            Some("/1?a=1")
        );
        // A rewritten path goes as it was made: no prefix strip on top.
        let rewritten = Changed {
            path: Some("/users/v2/1"),
            query: None,
        };
        assert_eq!(
            upstream_target(&r, "/users/1", Some("q"), rewritten).as_deref(),
            Some("/users/v2/1?q")
        );
        let r = route("/", false);
        assert_eq!(
            upstream_target(&r, "/x", Some("k=s"), query("")).as_deref(),
            Some("/x")
        );
        assert_eq!(
            upstream_target(&r, "/x", Some("k=s"), Changed::default()),
            None
        );
    }

    #[test]
    fn the_client_behind_trusted_proxies() {
        let trusted = [
            crate::config::parse_cidr("10.0.0.0/8").unwrap(),
            crate::config::parse_cidr("::1").unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let peer = Some(ip("10.0.0.2"));
        let xff = |v: &'static str| Some(v.as_bytes());
        assert_eq!(
            client_ip(peer, xff("203.0.113.9, 10.1.1.1"), &trusted),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            client_ip(peer, xff("198.51.100.1, 203.0.113.9"), &trusted),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            client_ip(peer, xff("10.1.1.1"), &trusted),
            Some(ip("10.1.1.1"))
        );
        assert_eq!(client_ip(peer, xff("junk"), &trusted), peer);
        assert_eq!(client_ip(peer, None, &trusted), peer);
        // An untrusted peer's header is not believed.
        let outsider = Some(ip("192.0.2.1"));
        assert_eq!(client_ip(outsider, xff("203.0.113.9"), &trusted), outsider);
        assert_eq!(
            client_ip(Some(ip("::1")), xff("2001:db8::5"), &trusted),
            Some(ip("2001:db8::5"))
        );
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "a=1").unwrap();
        req.append_header("cookie", "b=2").unwrap();
        join_cookies(&mut req).unwrap();
        let all: Vec<_> = req.headers.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
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

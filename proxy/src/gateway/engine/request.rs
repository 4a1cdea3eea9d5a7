//! What the engine reads of a request, whichever path parsed it: pingora's request header on
//! its path, the codec's fields in place on the fast path (no map built per request).

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use crate::config::HashOn;
use crate::strategy::RequestHeaders;

/// A request as the engine and the filters see it.
pub(crate) trait RequestView: RequestHeaders {
    fn method(&self) -> &str;
    /// The host without its port (`Host`, or the URI authority on HTTP/2).
    fn host(&self) -> &str;
    /// The target's path, without the query.
    fn path(&self) -> &str;
    /// The query, without its `?`.
    fn query(&self) -> Option<&str>;
    /// The peer's address.
    fn client_ip(&self) -> Option<IpAddr>;
    /// The body length the request declares (`Content-Length`), if it declares one.
    fn declared_body_len(&self) -> Option<u64>;
    /// `https` or `http`: how the client reached the gateway.
    fn proto(&self) -> &'static str;
    /// Every field named `name` (any case), in the order they came.
    fn each_field(&self, name: &str, visit: &mut dyn FnMut(&[u8]));
    /// Every field, name and value, in the order they came.
    fn each_field_of_all(&self, visit: &mut dyn FnMut(&str, &[u8]));
}

/// The `request_hash` of a request for `hash_on`: the same on both paths and in every
/// process and thread (a fixed-key hasher); 0 when the request lacks what it hashes.
pub(crate) fn hash_request(hash_on: &HashOn, request: &dyn RequestView) -> u64 {
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    match hash_on {
        HashOn::Header(name) => match request.field(name.as_str()) {
            Some(v) => v.hash(&mut h),
            None => return 0,
        },
        HashOn::ClientIp => match request.client_ip() {
            Some(ip) => ip.hash(&mut h),
            None => return 0,
        },
        HashOn::Path => request.path().hash(&mut h),
    }
    h.finish()
}

//! Header changes made to pingora's header blocks on its path: the filter chain's edits and
//! the `X-Forwarded-*` fields. A block the chain edits is changed in the `http` map beneath it
//! ([`edit_request_map`], [`edit_response_map`]): pingora's own `insert_header` turns each name
//! back into text, parses it again and keeps a second map of letter cases in step with the
//! first (both regrown from the exact size a clone left them), some 2 000 instructions an
//! edit, where the map alone costs a hash and a probe. The price is the case of the names in
//! an edited block: it goes out as pingora writes a block without case (a dozen standard names
//! titled, the rest lower case, as HAProxy and Envoy send every name). A block without edits
//! keeps the case it came with.

use std::mem;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};

use super::engine::filters::{EditRef, HeaderEdits};

/// A field name the gateway itself sets, in the two forms the blocks take it in.
pub(crate) struct KnownName {
    /// Lower case: pingora's case map keeps a `&'static str` without copying it.
    text: &'static str,
    name: HeaderName,
}

impl KnownName {
    /// `text` must be a valid lower-case field name (checked at compile time in a `const`).
    pub(crate) const fn new(text: &'static str) -> Self {
        Self {
            text,
            name: HeaderName::from_static(text),
        }
    }

    /// The name as a key of an `http` map: looked up by hash, not parsed from text first.
    pub(crate) fn header(&self) -> &HeaderName {
        &self.name
    }
}

/// A request block the `X-Forwarded-*` fields are read from and set in: pingora's (its case
/// map kept) on a route whose request no filter edits, the map beneath it on one that does.
pub(crate) trait ForwardedFields {
    fn get(&self, name: &KnownName) -> Option<&HeaderValue>;
    fn set_known(&mut self, name: &KnownName, value: HeaderValue) -> Result<()>;
}

impl ForwardedFields for RequestHeader {
    fn get(&self, name: &KnownName) -> Option<&HeaderValue> {
        self.headers.get(&name.name)
    }
    fn set_known(&mut self, name: &KnownName, value: HeaderValue) -> Result<()> {
        // A `&'static str` is its own case name: no copy of it is made.
        self.insert_header(name.text, value)
    }
}

impl ForwardedFields for HeaderMap {
    fn get(&self, name: &KnownName) -> Option<&HeaderValue> {
        HeaderMap::get(self, &name.name)
    }
    fn set_known(&mut self, name: &KnownName, value: HeaderValue) -> Result<()> {
        self.try_insert(name.name.clone(), value)
            .map(|_| ())
            .map_err(too_many)
    }
}

fn too_many(e: http::header::MaxSizeReached) -> Box<Error> {
    Error::because(ErrorType::InvalidHTTPHeader, "header edits", e)
}

/// Makes the chain's `edits` to `headers`, in order. Each value is copied into a
/// `HeaderValue` of its own (the edits keep bytes); the names are static, so cloning them
/// costs no reference count.
pub(crate) fn apply_edits(edits: &HeaderEdits, headers: &mut HeaderMap) -> Result<()> {
    for edit in edits.iter() {
        match edit {
            EditRef::Set(name, value) => {
                headers
                    .try_insert(name.header().clone(), value_of(value)?)
                    .map_err(too_many)?;
            }
            EditRef::Add(name, value) => {
                headers
                    .try_append(name.header().clone(), value_of(value)?)
                    .map_err(too_many)?;
            }
            EditRef::Remove(name) => {
                headers.remove(name.header());
            }
        }
    }
    Ok(())
}

/// An edit's value as a `HeaderValue` (the edits accept only what it accepts).
fn value_of(bytes: &[u8]) -> Result<HeaderValue> {
    HeaderValue::from_bytes(bytes)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "header edit value", e))
}

/// Runs `edit` on the request's header map with room for `room` more fields; the method,
/// target (kept verbatim when the URI does not reproduce it), version and HTTP/2 end-of-stream
/// choice stay as they were, the names' case map goes.
pub(crate) fn edit_request_map(
    request: &mut RequestHeader,
    room: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<()>,
) -> Result<()> {
    let raw = request.raw_path();
    let target_in_uri = request
        .uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str().as_bytes() == raw);
    let verbatim = (!target_in_uri).then(|| raw.to_vec());
    let end_stream = request.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(mem::replace(request, placeholder));
    parts.headers.reserve(room);
    let edited = edit(&mut parts.headers);
    *request = RequestHeader::from(parts);
    if let Some(target) = verbatim {
        request.set_raw_path(&target)?;
    }
    if let Some(end_stream) = end_stream {
        request.set_send_end_stream(end_stream);
    }
    edited
}

/// Runs `edit` on the response's header map with room for `room` more fields; the status,
/// version and reason phrase stay, the names' case map goes.
pub(crate) fn edit_response_map(
    response: &mut ResponseHeader,
    room: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<()>,
) -> Result<()> {
    let canonical = response.status.canonical_reason();
    let reason = response
        .get_reason_phrase()
        .filter(|phrase| Some(*phrase) != canonical)
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(mem::replace(response, placeholder));
    parts.headers.reserve(room);
    let edited = edit(&mut parts.headers);
    *response = ResponseHeader::from(parts);
    if reason.is_some() {
        response.set_reason_phrase(reason.as_deref())?;
    }
    edited
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::engine::filters::EditName;

    fn edits() -> HeaderEdits {
        let name = |text: &'static str| EditName::intern(&HeaderName::from_static(text));
        let mut edits = HeaderEdits::default();
        edits.set(name("x-set"), &HeaderValue::from_static("1"));
        edits.add(name("x-multi"), &HeaderValue::from_static("b"));
        edits.remove(name("x-gone"));
        edits
    }

    fn wire_of_request(request: &RequestHeader) -> String {
        let mut wire = Vec::new();
        request.header_to_h1_wire(&mut wire);
        String::from_utf8(wire).unwrap()
    }

    #[test]
    fn a_request_map_edit_keeps_method_target_and_version() {
        for target in [
            &b"/a/b?q=1"[..],
            b"http://example.com/abs?x",
            b"/caf\xe9",
            b"*",
        ] {
            let mut request = RequestHeader::build("OPTIONS", target, None).unwrap();
            request.set_version(http::Version::HTTP_10);
            request.insert_header("X-Multi", "a").unwrap();
            request.insert_header("X-Gone", "x").unwrap();
            let utf8 = request.raw_path_is_utf8();
            edit_request_map(&mut request, 3, |map| apply_edits(&edits(), map)).unwrap();
            assert_eq!(request.method, http::Method::OPTIONS);
            assert_eq!(request.raw_path(), target);
            assert_eq!(request.raw_path_is_utf8(), utf8);
            assert_eq!(request.version, http::Version::HTTP_10);
            let multi: Vec<_> = request.headers.get_all("x-multi").iter().collect();
            assert_eq!(multi, ["a", "b"]);
            assert_eq!(request.headers["x-set"], "1");
            assert!(!request.headers.contains_key("x-gone"));
            assert_eq!(
                wire_of_request(&request),
                "x-multi: a\r\nx-multi: b\r\nx-set: 1\r\n"
            );
        }
    }

    #[test]
    fn a_request_map_edit_keeps_the_h2_end_of_stream_choice() {
        let mut request = RequestHeader::build("POST", b"/rpc", None).unwrap();
        request.set_version(http::Version::HTTP_2);
        request.set_send_end_stream(false);
        edit_request_map(&mut request, 0, |_| Ok(())).unwrap();
        assert_eq!(request.send_end_stream(), Some(false));
    }

    #[test]
    fn a_response_map_edit_keeps_status_and_reason() {
        let mut response = ResponseHeader::build(299, None).unwrap();
        response.set_reason_phrase(Some("Fine Indeed")).unwrap();
        response.insert_header("Server", "upstream").unwrap();
        response.insert_header("X-Gone", "x").unwrap();
        edit_response_map(&mut response, 3, |map| apply_edits(&edits(), map)).unwrap();
        assert_eq!(response.status.as_u16(), 299);
        assert_eq!(response.get_reason_phrase(), Some("Fine Indeed"));
        assert_eq!(response.headers["server"], "upstream");
        assert_eq!(response.headers["x-set"], "1");
        assert!(!response.headers.contains_key("x-gone"));

        let mut ok = ResponseHeader::build(200, None).unwrap();
        edit_response_map(&mut ok, 0, |_| Ok(())).unwrap();
        assert_eq!(ok.get_reason_phrase(), Some("OK"));
    }

    #[test]
    fn an_edit_error_still_leaves_the_block_whole() {
        let mut request = RequestHeader::build("GET", b"/x", None).unwrap();
        request.insert_header("x-kept", "1").unwrap();
        let failed = edit_request_map(&mut request, 0, |_| {
            Err(Error::explain(ErrorType::InternalError, "test"))
        });
        assert!(failed.is_err());
        assert_eq!(request.raw_path(), b"/x");
        assert_eq!(request.headers["x-kept"], "1");
    }
}

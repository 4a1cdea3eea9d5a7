//! Sluice's HTTP/1.1 codec, held to RFC 9112 (message syntax and framing) and RFC 9110
//! (semantics): whatever a message's framing or routing could be read two ways is refused,
//! never forwarded.
//!
//! - [`request`]: the request head a proxy may forward (one `Host`, one body length, no
//!   smuggling shapes), or why not: refused (400/501), or left to another engine.
//! - [`response`]: the upstream's response head, its framing, and the head as sent on to the
//!   client; a malformed or ambiguous one is refused (the proxy answers 502); the answer to a
//!   WebSocket handshake (a `101` that switched, or any other response).
//! - [`chunked`]: follows a chunked body byte by byte without decoding it, strictly.
//! - [`hop`]: hop-by-hop fields (RFC 9110 7.6.1), including those the `Connection` field names.
//! - [`fields`]: the shared grammar: tokens, lists, `Content-Length`, `Host`.

pub mod chunked;
pub mod fields;
pub mod hop;
pub mod request;
pub mod response;

pub use chunked::{BadChunk, ChunkedTracker};
pub use request::{HandoffReason, ParsedRequest, RequestError, RequestHead, RequestLimits};
pub use response::{
    read_head, Framing, HeadEdit, HeadOut, ParsedResponse, ResponseError, ResponseHead, Unedited,
    UpgradeResponse,
};

//! `request-id`: every request carries an id in `header` (default `x-request-id`): a valid
//! one from the client is kept, else a new UUIDv7 is made. The upstream gets it, the
//! response echoes it, and the access log has it as `request_id`.

use http::HeaderName;
use serde::Deserialize;

use super::hex_digits::lower_hex;
use super::{read, FilterError};
use crate::gateway::engine::filters::{EditName, FieldValue, Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    header: Option<String>,
}

/// Longest id kept from a client.
const MAX_ID_BYTES: usize = 128;

/// One `request-id` filter.
#[derive(Debug)]
pub(super) struct RequestId {
    name: String,
    header: EditName,
}

impl RequestId {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let text = settings.header.as_deref().unwrap_or("x-request-id");
        let header = HeaderName::from_bytes(text.trim().as_bytes())
            .map_err(|_| FilterError::new(name, "header", format!("bad header name {text:?}")))?;
        Ok(Self {
            name: name.to_string(),
            header: EditName::intern(&header),
        })
    }
}

/// Whether a client's id is kept: 1 to 128 characters of letters, digits and `-_.:+/=`
/// (UUIDs, ULIDs, base64 and the ids other proxies make), nothing that could break a log
/// line or a header.
fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

/// A new UUIDv7: the Unix time in milliseconds, then 74 random bits (RFC 9562 5.7). Made from
/// the thread's own random generator and the clock: no lock and no system call (the uuid
/// crate's `now_v7` serialises every thread on one shared context and reads the OS's random
/// source per call).
fn new_id(text: &mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> &str {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let (high, low) = uuid.as_u64_pair();
    let (high, low) = (lower_hex(high), lower_hex(low));
    // 8-4-4-4-12 digits.
    text[..8].copy_from_slice(&high[..8]);
    text[9..13].copy_from_slice(&high[8..12]);
    text[14..18].copy_from_slice(&high[12..]);
    text[19..23].copy_from_slice(&low[..4]);
    text[24..].copy_from_slice(&low[4..]);
    for at in [8, 13, 18, 23] {
        text[at] = b'-';
    }
    // Hex digits and hyphens: text.
    std::str::from_utf8(text).unwrap_or_default()
}

impl Filter for RequestId {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        let mut made = [0u8; uuid::fmt::Hyphenated::LENGTH];
        // A kept id is ASCII (`is_valid`): text.
        let id = match request.field(self.header.as_str()) {
            Some(id) if is_valid(id) => std::str::from_utf8(id).ok(),
            _ => None,
        }
        .unwrap_or_else(|| new_id(&mut made));
        // Checked once for both edits (it always passes: see `is_valid`).
        if let Some(value) = FieldValue::new(id.as_bytes()) {
            state.upstream.set(self.header, value);
            state.response.set(self.header, value);
        }
        state.request_id.clear();
        state.request_id.push_str(id);
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_or_made() {
        assert!(is_valid(b"0190a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"));
        assert!(is_valid(b"abc+/="));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"has space"));
        assert!(!is_valid(b"quote\""));
        assert!(!is_valid(&[b'a'; 129]));
        let mut room = [0u8; 36];
        let text = new_id(&mut room).to_string();
        let uuid = uuid::Uuid::parse_str(&text).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(
            uuid.hyphenated().to_string(),
            text,
            "as the uuid crate writes it"
        );
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "7", "{text}");
        assert_ne!(new_id(&mut room), text);
    }
}

//! Hop-by-hop fields (RFC 9110 7.6.1): those that describe one connection and are never
//! forwarded, and the `Connection` field that names more of them.

use crate::fields;

/// Fields that always belong to one hop: a proxy removes them before forwarding, in either
/// direction. (`Transfer-Encoding` is framing, handled by the request and response rules.)
const ALWAYS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// Whether `name` is hop-by-hop whatever `Connection` says.
pub fn is_hop_by_hop(name: &str) -> bool {
    ALWAYS.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// What the `Connection` fields of a message say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Other fields are named: they are removed before forwarding (RFC 9110 7.6.1).
    pub names_fields: bool,
}

/// Why a `Connection` field cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error("Connection option is not a token")]
    NotAToken,
    /// Removing it would change how the message is framed or routed.
    #[error("Connection names a field the message needs end to end")]
    NamesEndToEndField,
}

/// Fields no `Connection` option may remove: dropping one would reframe or reroute the
/// message for the next hop.
const END_TO_END: [&str; 3] = ["content-length", "transfer-encoding", "host"];

impl ConnectionOptions {
    /// Adds one `Connection` field value.
    pub fn add(&mut self, value: &[u8]) -> Result<(), ConnectionError> {
        for option in fields::list(value) {
            if !fields::is_token(option) {
                return Err(ConnectionError::NotAToken);
            }
            if option.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if option.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if END_TO_END
                .iter()
                .any(|n| option.eq_ignore_ascii_case(n.as_bytes()))
            {
                return Err(ConnectionError::NamesEndToEndField);
            } else {
                self.names_fields = true;
            }
        }
        Ok(())
    }
}

/// Whether a `Connection` field among `all` names `name`.
pub fn named_by_connection(name: &str, all: &[httparse::Header<'_>]) -> bool {
    all.iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .flat_map(|f| fields::list(f.value))
        .any(|option| option.eq_ignore_ascii_case(name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_7_6_1_connection_options() {
        let mut options = ConnectionOptions::default();
        options.add(b"keep-alive, x-trace").unwrap();
        options.add(b"Close").unwrap();
        assert_eq!(
            options,
            ConnectionOptions {
                close: true,
                keep_alive: true,
                upgrade: false,
                names_fields: true,
            }
        );
        let mut options = ConnectionOptions::default();
        assert_eq!(
            options.add(b"close, Content-Length"),
            Err(ConnectionError::NamesEndToEndField)
        );
        assert_eq!(
            options.add(b"transfer-encoding"),
            Err(ConnectionError::NamesEndToEndField)
        );
        assert_eq!(
            options.add(b"host"),
            Err(ConnectionError::NamesEndToEndField)
        );
        assert_eq!(options.add(b"a b"), Err(ConnectionError::NotAToken));
    }

    #[test]
    fn rfc9110_7_6_1_named_fields_are_hop_by_hop() {
        let all = [
            httparse::Header {
                name: "Connection",
                value: b"close, X-Secret",
            },
            httparse::Header {
                name: "x-secret",
                value: b"1",
            },
        ];
        assert!(named_by_connection("x-secret", &all));
        assert!(!named_by_connection("x-other", &all));
        for name in [
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "TE",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        assert!(!is_hop_by_hop("trailer"));
        assert!(!is_hop_by_hop("transfer-encoding"));
    }
}

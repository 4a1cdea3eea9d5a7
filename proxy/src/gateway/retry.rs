//! The one retry rule of both request paths: when a failed try may go to another instance.
//!
//! - Nothing reached the upstream (the connection could not be made): retried, whatever the
//!   method.
//! - The request went out and no response came back (a reset, a close, a write or read error):
//!   retried only when the method is idempotent (RFC 9110 9.2.2) and the body, if any, is
//!   still at hand to send again.
//! - A timeout, or a response the gateway could not use: answered (504, 502), not retried; a
//!   client that went away ends the request (and is no fault of the instance).
//!
//! Either way no more than the route's `retries`: try number `attempts` may be followed by
//! another while `attempts <= retries`.

/// How far a failed try got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// No connection: nothing was sent.
    BeforeSending,
    /// No connection within `connect_timeout`: nothing was sent (retried as
    /// `BeforeSending`; the wait is a latency sample of the instance).
    ConnectTimedOut,
    /// Sent (or partly sent), with no response.
    AfterSending,
    /// No response within the route's `timeout`.
    TimedOut,
    /// The response was unusable.
    Final,
    /// The client went away while the try was out.
    ClientLeft,
}

/// Whether the try that failed as `failed` may be followed by another.
pub(crate) fn may_retry(
    failed: Failed,
    idempotent: bool,
    body_replayable: bool,
    attempts: u32,
    retries: u32,
) -> bool {
    if attempts > retries {
        return false;
    }
    match failed {
        Failed::BeforeSending | Failed::ConnectTimedOut => true,
        Failed::AfterSending => idempotent && body_replayable,
        Failed::TimedOut | Failed::Final | Failed::ClientLeft => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        // Connect failures: any method, within the budget.
        assert!(may_retry(Failed::BeforeSending, false, false, 1, 1));
        assert!(!may_retry(Failed::BeforeSending, true, true, 2, 1));
        assert!(may_retry(Failed::ConnectTimedOut, false, false, 1, 1));
        assert!(!may_retry(Failed::ConnectTimedOut, true, true, 2, 1));
        // Sent without an answer: idempotent methods with their body at hand.
        assert!(may_retry(Failed::AfterSending, true, true, 1, 1));
        assert!(!may_retry(Failed::AfterSending, false, true, 1, 1));
        assert!(!may_retry(Failed::AfterSending, true, false, 1, 1));
        // Timeouts and bad responses are answered.
        assert!(!may_retry(Failed::TimedOut, true, true, 1, 5));
        assert!(!may_retry(Failed::Final, true, true, 1, 5));
        assert!(!may_retry(Failed::ClientLeft, true, true, 1, 5));
        assert!(!may_retry(Failed::BeforeSending, true, true, 1, 0));
    }
}

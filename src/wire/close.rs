//! Every way a connection ends, as one type: a close code and a reason.

use std::fmt;

/// Why the server ends a connection (CONTRACT §3 "Connection life").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// 1000: the client closed, or a normal end.
    Normal,
    /// 1001: the server is shutting down.
    Shutdown,
    /// 1001: nothing received for the idle timeout.
    Idle,
    /// 1002: the client broke the WebSocket protocol.
    Protocol,
    /// 1007: a text message that is not UTF-8.
    InvalidData,
    /// 1009: a message over `CHAT_MAX_FRAME_BYTES`.
    TooBig,
    /// 1011: a server fault.
    Internal,
    /// 1013: the client read too slowly and its queue overflowed; it should
    /// reconnect and reload history.
    SlowConsumer,
    /// 1013: a write to the socket did not finish in time (the client stopped
    /// reading); the close frame is sent only if the socket still takes it.
    WriteTimeout,
    /// 1011: the socket failed under a write (reset, broken pipe); no close
    /// frame can be sent.
    WriteFailed,
    /// 1008: the client kept sending after many `rate_limited` refusals.
    RateLimited,
}

impl Close {
    pub const fn code(self) -> u16 {
        match self {
            Close::Normal => 1000,
            Close::Shutdown | Close::Idle => 1001,
            Close::Protocol => 1002,
            Close::InvalidData => 1007,
            Close::TooBig => 1009,
            Close::Internal => 1011,
            Close::SlowConsumer | Close::WriteTimeout => 1013,
            Close::WriteFailed => 1011,
            Close::RateLimited => 1008,
        }
    }

    /// The close frame's reason: short ASCII, well under the 123-byte limit.
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            Close::Normal => "bye",
            Close::Shutdown => "server shutting down",
            Close::Idle => "idle timeout",
            Close::Protocol => "protocol error",
            Close::InvalidData => "invalid utf-8",
            Close::TooBig => "message too big",
            Close::Internal => "internal error",
            Close::SlowConsumer => "slow consumer: reconnect and reload history",
            Close::WriteTimeout => "write timeout: reconnect and reload history",
            Close::WriteFailed => "write failed",
            Close::RateLimited => "too many messages refused for rate",
        }
    }

    /// A stable label for logs and counters.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Close::Normal => "normal",
            Close::Shutdown => "shutdown",
            Close::Idle => "idle",
            Close::Protocol => "protocol",
            Close::InvalidData => "invalid_data",
            Close::TooBig => "too_big",
            Close::Internal => "internal",
            Close::SlowConsumer => "slow_consumer",
            Close::WriteTimeout => "write_timeout",
            Close::WriteFailed => "write_failed",
            Close::RateLimited => "rate_limited",
        }
    }

    /// All variants, for counters indexed by variant.
    pub(crate) const ALL: [Close; 11] = [
        Close::Normal,
        Close::Shutdown,
        Close::Idle,
        Close::Protocol,
        Close::InvalidData,
        Close::TooBig,
        Close::Internal,
        Close::SlowConsumer,
        Close::WriteTimeout,
        Close::WriteFailed,
        Close::RateLimited,
    ];

    pub(crate) const fn index(self) -> usize {
        match self {
            Close::Normal => 0,
            Close::Shutdown => 1,
            Close::Idle => 2,
            Close::Protocol => 3,
            Close::InvalidData => 4,
            Close::TooBig => 5,
            Close::Internal => 6,
            Close::SlowConsumer => 7,
            Close::WriteTimeout => 8,
            Close::WriteFailed => 9,
            Close::RateLimited => 10,
        }
    }

    pub(crate) const fn from_index(index: usize) -> Option<Close> {
        if index < Close::ALL.len() {
            Some(Close::ALL[index])
        } else {
            None
        }
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

static CLOSED: [std::sync::atomic::AtomicU64; Close::ALL.len()] =
    [const { std::sync::atomic::AtomicU64::new(0) }; Close::ALL.len()];

/// Counts one ended connection under its close reason.
pub(crate) fn record(why: Close) {
    CLOSED[why.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Connections ended so far, per close reason.
pub(crate) fn counts() -> Vec<(Close, u64)> {
    Close::ALL
        .iter()
        .map(|&close| {
            (
                close,
                CLOSED[close.index()].load(std::sync::atomic::Ordering::Relaxed),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_a_close_frame() {
        for close in Close::ALL {
            assert!(close.reason().len() <= 123, "{close:?}");
            assert_eq!(Close::from_index(close.index()), Some(close));
        }
    }

    #[test]
    fn codes_match_the_contract() {
        assert_eq!(Close::Normal.code(), 1000);
        assert_eq!(Close::Shutdown.code(), 1001);
        assert_eq!(Close::Idle.code(), 1001);
        assert_eq!(Close::TooBig.code(), 1009);
        assert_eq!(Close::Internal.code(), 1011);
        assert_eq!(Close::SlowConsumer.code(), 1013);
        assert_eq!(Close::WriteTimeout.code(), 1013);
        assert_eq!(Close::RateLimited.code(), 1008);
        for (index, close) in Close::ALL.iter().enumerate() {
            assert_eq!(close.index(), index, "ALL is in index order");
        }
    }
}

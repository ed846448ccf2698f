//! The MQTT session's states and the pure transitions between them.
//!
//! ```text
//!             ConnAck                   ConnectionLost, up for ≥ stable_after
//!  Connecting ───────► Connected{since} ──────────────────────────────────► Backoff{attempt: 1}
//!    │  ▲                  │  ConnectionLost sooner                          │
//!    │  │                  └───────────────────────► Backoff{attempt + 1}    │
//!    │  └──────────────── BackoffElapsed ─────────────────────────────────────┘
//!    └── ConnectionLost ─► Backoff{attempt + 1}   (ceiling doubles, capped)
//!  any ── Shutdown ──► ShuttingDown   (terminal)
//! ```
//!
//! Only a connection that stayed up for [`Backoff::stable_after`] starts the backoff over.
//! One that the broker accepts and then drops at once (a second device with the same id
//! taking the client id over, an ACL that disconnects on a refused publish) counts as
//! another failed attempt, so a flapping connection backs off to the cap instead of
//! reconnecting, and re-sending everything in flight, several times a second.
//!
//! rumqttc's event loop reconnects as soon as it is polled again and has no backoff of
//! its own, so the uplink only asks it to connect when this machine says `Connecting`.
//! The sleep before attempt *n* is "full jitter": uniform in `[0, min(max, min·2^(n-1))]`,
//! so a fleet that lost its broker does not come back in lock-step.

use std::time::Duration;
use tokio::time::Instant;

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for the broker's ConnAck. `attempt` counts the failures before this try.
    Connecting {
        /// Consecutive failed attempts so far.
        attempt: u32,
    },
    /// Connected: publishing reports and status, receiving acks.
    Connected {
        /// When the broker accepted the connection.
        since: Instant,
        /// Consecutive failed attempts before it; counting goes on from here if the
        /// connection drops before [`Backoff::stable_after`].
        attempt: u32,
    },
    /// Waiting until `until` before the next attempt.
    Backoff {
        /// When to try again.
        until: Instant,
        /// Consecutive failed attempts so far (at least 1).
        attempt: u32,
    },
    /// Publishing the offline status and disconnecting; nothing else happens.
    ShuttingDown,
}

/// What happened to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionInput {
    /// The broker accepted the connection.
    ConnAck,
    /// The connection attempt failed or the connection dropped.
    ConnectionLost,
    /// The backoff sleep is over.
    BackoffElapsed,
    /// The agent is stopping.
    Shutdown,
}

/// Reconnect backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's sleep.
    pub min: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

/// Longest time a connection must stay up before a drop starts the backoff over.
pub const STABLE_AFTER_CAP: Duration = Duration::from_secs(30);

impl Backoff {
    /// How long a connection must stay up for its drop to start the backoff over:
    /// the largest ceiling, at most `STABLE_AFTER_CAP` (30 s).
    pub fn stable_after(&self) -> Duration {
        self.max.min(STABLE_AFTER_CAP)
    }

    /// The longest sleep before retry number `attempt` (1-based): `min(max, min * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.min
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The sleep before retry number `attempt`, for `unit` drawn uniformly from `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

impl SessionState {
    /// Whether the session is connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, SessionState::Connected { .. })
    }

    /// The state after `input` at time `now`; `unit` is a uniform random draw in `[0, 1)`
    /// used for the backoff jitter.
    pub fn on(
        self,
        input: SessionInput,
        now: Instant,
        backoff: &Backoff,
        unit: f64,
    ) -> SessionState {
        use SessionInput as I;
        use SessionState as S;
        match (self, input) {
            (S::ShuttingDown, _) | (_, I::Shutdown) => S::ShuttingDown,
            (S::Connecting { attempt }, I::ConnAck) => S::Connected {
                since: now,
                attempt,
            },
            (S::Connecting { attempt }, I::ConnectionLost) => {
                let attempt = attempt.saturating_add(1);
                S::Backoff {
                    until: now + backoff.delay(attempt, unit),
                    attempt,
                }
            }
            (S::Connected { since, attempt }, I::ConnectionLost) => {
                let attempt = if now.saturating_duration_since(since) >= backoff.stable_after() {
                    1
                } else {
                    attempt.saturating_add(1)
                };
                S::Backoff {
                    until: now + backoff.delay(attempt, unit),
                    attempt,
                }
            }
            (S::Backoff { attempt, .. }, I::BackoffElapsed) => S::Connecting { attempt },
            // Anything else cannot happen (no ConnAck without a connect, no elapsed
            // backoff outside Backoff); staying put is the safe answer.
            (state, _) => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionInput as I;
    use SessionState as S;

    const B: Backoff = Backoff {
        min: Duration::from_millis(500),
        max: Duration::from_secs(60),
    };

    #[test]
    fn connecting_to_connected_on_connack() {
        let now = Instant::now();
        assert_eq!(
            S::Connecting { attempt: 3 }.on(I::ConnAck, now, &B, 0.5),
            S::Connected {
                since: now,
                attempt: 3
            }
        );
    }

    #[test]
    fn connected_to_backoff_on_error() {
        let since = Instant::now();
        let now = since + B.stable_after();
        let s = S::Connected { since, attempt: 0 }.on(I::ConnectionLost, now, &B, 0.5);
        assert_eq!(
            s,
            S::Backoff {
                until: now + Duration::from_millis(250),
                attempt: 1
            }
        );
    }

    #[test]
    fn a_connection_counts_as_stable_after_the_largest_ceiling_at_most_30_s() {
        assert_eq!(B.stable_after(), Duration::from_secs(30));
        let short = Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        assert_eq!(short.stable_after(), Duration::from_millis(100));
    }

    #[test]
    fn connecting_to_backoff_on_error_counts_the_attempt() {
        let now = Instant::now();
        let s = S::Connecting { attempt: 2 }.on(I::ConnectionLost, now, &B, 0.999_999);
        let S::Backoff { until, attempt } = s else {
            panic!("{s:?}")
        };
        assert_eq!(attempt, 3);
        assert!(until - now <= Duration::from_secs(2) && until - now > Duration::from_millis(1990));
    }

    #[test]
    fn backoff_to_connecting_when_elapsed() {
        let now = Instant::now();
        let s = S::Backoff {
            until: now,
            attempt: 4,
        }
        .on(I::BackoffElapsed, now, &B, 0.0);
        assert_eq!(s, S::Connecting { attempt: 4 });
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(B.ceiling(1), Duration::from_millis(500));
        assert_eq!(B.ceiling(2), Duration::from_millis(1000));
        assert_eq!(B.ceiling(3), Duration::from_millis(2000));
        assert_eq!(B.ceiling(7), Duration::from_millis(32_000));
        assert_eq!(
            B.ceiling(8),
            Duration::from_secs(60),
            "64 s is capped at 60 s"
        );
        assert_eq!(B.ceiling(40), Duration::from_secs(60), "no overflow");
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(60), "no overflow");
        let mut prev = Duration::ZERO;
        for attempt in 1..64 {
            let c = B.ceiling(attempt);
            assert!(c >= prev && c <= B.max);
            prev = c;
        }
    }

    #[test]
    fn backoff_delay_is_full_jitter_within_the_ceiling() {
        assert_eq!(B.delay(3, 0.0), Duration::ZERO);
        assert_eq!(B.delay(3, 0.5), Duration::from_millis(1000));
        assert!(B.delay(3, 0.999) < Duration::from_millis(2000));
        for _ in 0..1000 {
            assert!(B.delay(5, fastrand::f64()) <= B.ceiling(5));
        }
    }

    #[test]
    fn backoff_resets_after_a_connection_that_lasted() {
        let now = Instant::now();
        // Fail five times in a row: the ceiling grows.
        let mut s = S::Connecting { attempt: 0 };
        for _ in 0..5 {
            s = s.on(I::ConnectionLost, now, &B, 1.0);
            s = s.on(I::BackoffElapsed, now, &B, 1.0);
        }
        assert_eq!(s, S::Connecting { attempt: 5 });
        // A connection that stays up 30 s, then drops, starts again from the smallest
        // ceiling.
        let lost = now + Duration::from_secs(30);
        let s = s
            .on(I::ConnAck, now, &B, 1.0)
            .on(I::ConnectionLost, lost, &B, 1.0);
        assert_eq!(
            s,
            S::Backoff {
                until: lost + B.min,
                attempt: 1
            }
        );
    }

    #[test]
    fn connected_to_backoff_keeps_counting_when_the_connection_dropped_soon() {
        let now = Instant::now();
        let lost = now + Duration::from_millis(29_999);
        let s = S::Connecting { attempt: 5 }
            .on(I::ConnAck, now, &B, 1.0)
            .on(I::ConnectionLost, lost, &B, 1.0);
        assert_eq!(
            s,
            S::Backoff {
                until: lost + B.ceiling(6),
                attempt: 6
            }
        );
    }

    #[test]
    fn a_connection_that_is_accepted_and_dropped_again_and_again_backs_off_to_the_cap() {
        // A broker that takes the client over (a cloned device id) or drops it after
        // every ConnAck must not make the agent reconnect at the smallest backoff forever.
        let mut now = Instant::now();
        let mut s = S::Connecting { attempt: 0 };
        for _ in 0..10 {
            s = s.on(I::ConnAck, now, &B, 1.0);
            now += Duration::from_secs(1);
            s = s.on(I::ConnectionLost, now, &B, 1.0);
            let S::Backoff { until, .. } = s else {
                panic!("{s:?}")
            };
            now = until;
            s = s.on(I::BackoffElapsed, now, &B, 1.0);
        }
        assert_eq!(s, S::Connecting { attempt: 10 });
        assert_eq!(B.ceiling(10), B.max);
    }

    #[test]
    fn any_state_goes_to_shutting_down_and_stays() {
        let now = Instant::now();
        for s in [
            S::Connecting { attempt: 0 },
            S::Connected {
                since: now,
                attempt: 0,
            },
            S::Backoff {
                until: now,
                attempt: 2,
            },
            S::ShuttingDown,
        ] {
            let down = s.on(I::Shutdown, now, &B, 0.5);
            assert_eq!(down, S::ShuttingDown);
            for i in [I::ConnAck, I::ConnectionLost, I::BackoffElapsed] {
                assert_eq!(down.on(i, now, &B, 0.5), S::ShuttingDown);
            }
        }
    }

    #[test]
    fn impossible_inputs_leave_the_state_alone() {
        let now = Instant::now();
        let c = S::Connected {
            since: now,
            attempt: 2,
        };
        assert_eq!(c.on(I::ConnAck, now, &B, 0.5), c);
        assert_eq!(c.on(I::BackoffElapsed, now, &B, 0.5), c);
        let b = S::Backoff {
            until: now,
            attempt: 1,
        };
        assert_eq!(b.on(I::ConnAck, now, &B, 0.5), b);
    }
}

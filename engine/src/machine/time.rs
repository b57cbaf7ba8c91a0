//! [`Time`]: the clock value every machine input carries.
//!
//! A `Time` is a point on a monotonic clock, stored as the [`Duration`] since
//! an epoch that the *driver* chose (the tokio driver: the instant its
//! connection started, read from `tokio::time::Instant` so turmoil's paused
//! clock controls it; the pair harness and the simulator: zero).
//!
//! Why a corvid newtype and not `std::time::Instant`:
//! - a `std::time::Instant` can only be made by reading the system clock, so
//!   a pure harness or simulator would need one `Instant::now()` call just to
//!   get an epoch, and traces would print opaque values; a `Time` starts at
//!   [`Time::ZERO`] and prints as `12.345s`, so traces and snapshots are
//!   byte-for-byte reproducible;
//! - machines only ever compare times and add durations (timeouts), which a
//!   `Duration` does exactly, with nanosecond resolution;
//! - the conversion lives in one place in each driver (`epoch + t.since_epoch()`
//!   and back), so tokio's and turmoil's clocks still drive it.
//!
//! It is never the wall clock. A machine that stores wall-clock values (an
//! internal date, a "last updated" stamp) receives them as data in an input
//! (a command or a completion), never derives them from a `Time`.

use core::fmt;
use core::ops::{Add, AddAssign, Sub};
use core::time::Duration;

/// A point on the driver's monotonic clock: the time elapsed since the
/// driver's epoch.
///
/// Inputs to one machine must carry non-decreasing `Time`s; a driver that
/// went backwards is a caller bug.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(Duration);

impl Time {
    /// The driver's epoch.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// The point `elapsed` after the epoch.
    pub const fn from_since_epoch(elapsed: Duration) -> Time {
        Time(elapsed)
    }

    /// The point `ms` milliseconds after the epoch (handy in tests).
    pub const fn from_millis(ms: u64) -> Time {
        Time(Duration::from_millis(ms))
    }

    /// Time elapsed since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero if `earlier` is later than `self`.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + d`, or `None` if that does not fit (about 584 years).
    pub fn checked_add(self, d: Duration) -> Option<Time> {
        self.0.checked_add(d).map(Time)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    /// Saturates instead of overflowing: a timeout centuries away is "never".
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    /// Saturating: a `Time` earlier than `rhs` gives zero.
    fn sub(self, rhs: Time) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Time {
    /// `seconds.milliseconds` since the epoch, e.g. `12.345s`; sub-millisecond
    /// parts are printed only when present, so traces stay short.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        let millis = nanos / 1_000_000;
        if millis * 1_000_000 == nanos {
            write!(f, "{}.{:03}s", secs, millis)
        } else {
            write!(f, "{}.{:09}s", secs, nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_seconds_and_millis() {
        assert_eq!(Time::ZERO.to_string(), "0.000s");
        assert_eq!(Time::from_millis(12_345).to_string(), "12.345s");
        assert_eq!(
            (Time::ZERO + Duration::from_nanos(1_500)).to_string(),
            "0.000001500s"
        );
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_millis(10);
        assert_eq!(t - Time::from_millis(20), Duration::ZERO);
        assert_eq!(Time::from_millis(20) - t, Duration::from_millis(10));
        assert_eq!(
            Time::from_since_epoch(Duration::MAX) + Duration::from_secs(1),
            Time::from_since_epoch(Duration::MAX)
        );
        assert_eq!(
            Time::from_since_epoch(Duration::MAX).checked_add(Duration::from_secs(1)),
            None
        );
    }
}

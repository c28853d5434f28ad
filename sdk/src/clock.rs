//! Wall-clock time, injectable for tests: [`SystemClock`] in the component;
//! with the `testing` feature, `FixedClock` and `ManualClock`.

/// A source of the current time.
pub trait Clock {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> u64;
}

/// The real clock (WASI wall clock inside the component).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
    }
}

/// A clock stopped at a given second, for tests.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub u64);

#[cfg(any(test, feature = "testing"))]
impl Clock for FixedClock {
    fn now_unix(&self) -> u64 {
        self.0
    }
}

/// A clock the test moves by hand.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct ManualClock(pub std::cell::Cell<u64>);

#[cfg(any(test, feature = "testing"))]
impl ManualClock {
    /// A clock at `now`.
    pub fn at(now: u64) -> Self {
        Self(std::cell::Cell::new(now))
    }

    /// Moves the clock forward.
    pub fn advance(&self, seconds: u64) {
        self.0.set(self.0.get() + seconds);
    }
}

#[cfg(any(test, feature = "testing"))]
impl Clock for ManualClock {
    fn now_unix(&self) -> u64 {
        self.0.get()
    }
}

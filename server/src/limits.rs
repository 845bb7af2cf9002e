//! How often an address may do something costly, with `governor`'s keyed
//! rate limiter. (What one person or credential may hold open at once is
//! `countersign_core::limits::Slots`.)

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// How often each address may do something: a burst, then a steady rate.
pub struct PerAddress {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl PerAddress {
    pub fn per_minute(n: u32) -> PerAddress {
        let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        PerAddress {
            limiter: RateLimiter::keyed(Quota::per_minute(n)),
        }
    }

    /// True if `addr` may go ahead now.
    pub fn allow(&self, addr: IpAddr) -> bool {
        if self.limiter.len() > 100_000 {
            // Forget addresses that have been quiet, so a spray of addresses
            // cannot grow the table without end.
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&addr).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_limited_and_another_is_not() {
        let l = PerAddress::per_minute(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| l.allow(a)));
        assert!(!l.allow(a));
        assert!(l.allow(b));
    }
}

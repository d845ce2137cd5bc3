//! Counter-based random numbers: every draw is a pure function of its key, so
//! results never depend on thread, worker or rank counts.

/// SplitMix64 generator (Steele, Lea & Flood 2014): small, fast, and good enough for
/// sampling and augmentation.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

/// Mixes one 64-bit word (the SplitMix64 finaliser).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator seeded from a tuple of keys, e.g. `&[seed, step, position]`.
    ///
    /// ```
    /// let mut a = dml::rng::SplitMix64::keyed(&[7, 3, 1]);
    /// let mut b = dml::rng::SplitMix64::keyed(&[7, 3, 1]);
    /// assert_eq!(a.next_u64(), b.next_u64());
    /// ```
    pub fn keyed(keys: &[u64]) -> Self {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for &k in keys {
            state = mix64(state ^ mix64(k.wrapping_add(0x632b_e59b_d9b4_e019)));
        }
        SplitMix64 { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in [0, n); `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = SplitMix64::keyed(&[1]);
        let mut seen = [0usize; 5];
        for _ in 0..5000 {
            seen[r.below(5)] += 1;
        }
        // Each bucket expects 1000; 5 sigma is about 140.
        assert!(seen.iter().all(|&c| (860..1140).contains(&c)), "{seen:?}");
    }

    #[test]
    fn keys_differ() {
        let a = SplitMix64::keyed(&[1, 2]).next_u64();
        let b = SplitMix64::keyed(&[2, 1]).next_u64();
        assert_ne!(a, b);
    }
}

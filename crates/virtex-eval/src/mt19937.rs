//! The random numbers scikit-learn's liblinear uses to order coordinates.
//!
//! scikit-learn replaced liblinear's `rand()` by `std::mt19937` and a "tweaked Lemire"
//! bounded draw (`sklearn/svm/src/newrand/newrand.h`). Reproducing both lets our solver visit
//! coordinates in exactly the order sklearn does for the same seed, so a fit matches
//! `LinearSVC(random_state=…)` to rounding error instead of to the solver tolerance.

/// The 32-bit Mersenne Twister, bit-compatible with C++ `std::mt19937`.
#[derive(Debug, Clone)]
pub(crate) struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    /// Seeds like `std::mt19937::seed(value)`.
    pub(crate) fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let previous = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    /// The next 32-bit output.
    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// A draw in `0..range` exactly as sklearn's `bounded_rand_int(range)`.
    ///
    /// # Panics
    /// If `range` is 0 or does not fit in 32 bits (callers pass `active_size - i ≥ 1`).
    pub(crate) fn bounded(&mut self, range: usize) -> usize {
        let range = u32::try_from(range).expect("bounded_rand_int range fits in 32 bits");
        assert!(range > 0, "bounded_rand_int range must be positive");
        let mut x = self.next_u32();
        let mut m = u64::from(x) * u64::from(range);
        let mut low = m as u32;
        if low < range {
            let mut threshold = range.wrapping_neg();
            if threshold >= range {
                threshold -= range;
                if threshold >= range {
                    threshold %= range;
                }
            }
            while low < threshold {
                x = self.next_u32();
                m = u64::from(x) * u64::from(range);
                low = m as u32;
            }
        }
        (m >> 32) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_cpp_standard_reference_values() {
        // C++11 [rand.predef]: the 10000th output of a default-constructed mt19937 (seed 5489).
        let mut rng = Mt19937::new(5489);
        assert_eq!(rng.next_u32(), 3_499_211_612);
        let mut rng = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = rng.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn bounded_draws_stay_in_range_and_use_the_high_bits() {
        let mut rng = Mt19937::new(1);
        let mut reference = Mt19937::new(1);
        for range in [1usize, 2, 3, 7, 1000, 5011] {
            let value = rng.bounded(range);
            assert!(value < range);
            // Without rejection the result is the high word of x·range.
            let x = reference.next_u32();
            let m = u64::from(x) * range as u64;
            if (m as u32) >= (range as u32) {
                assert_eq!(value, (m >> 32) as usize);
            } else {
                // Keep both generators in step when a rejection loop may have drawn more.
                reference = rng.clone();
            }
        }
    }
}

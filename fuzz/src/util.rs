//! Helpers shared by the target bodies: deterministic chunkings of one
//! input (the differential oracle "any chunking gives the same events"),
//! and a tiny seeded generator so a body's choices depend only on its input.
//!
//! Nothing here reads a clock or an unseeded random source: a body run
//! twice on the same bytes does exactly the same thing, which is what makes
//! a committed reproducer reproduce.

/// A small deterministic generator (xorshift64*), seeded from the input.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `data` (FNV-1a), never zero.
    pub fn from_data(data: &[u8]) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `1..=max` (`max >= 1`).
    pub fn below_incl(&mut self, max: usize) -> usize {
        1 + (self.next_u64() % max.max(1) as u64) as usize
    }
}

/// The three chunkings every streaming decoder is run under: the whole
/// input at once, one byte at a time, and pseudo-random pieces (1..=64
/// bytes, seeded from the input, so the same input always splits the same
/// way). Byte-by-byte is skipped above 64 KiB to keep a run fast.
pub fn chunkings(input: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut out = vec![vec![input]];
    if input.len() <= 64 * 1024 {
        out.push(input.chunks(1).collect());
    }
    let mut rng = Rng::from_data(input);
    let mut random = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let n = rng.below_incl(64).min(input.len() - at);
        random.push(&input[at..at + n]);
        at += n;
    }
    out.push(random);
    out
}

/// Splits the first byte off (a body's option selector); an empty input
/// selects 0.
pub fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&s, rest)) => (s, rest),
        None => (0, data),
    }
}

/// Appends `bytes` to the last element if it is a byte run, else pushes a
/// new one: literal and body chunks are merged so that events compare
/// equal whatever the chunk boundaries.
pub fn push_merged<E>(
    events: &mut Vec<E>,
    bytes: &[u8],
    is_run: impl Fn(&mut E) -> Option<&mut Vec<u8>>,
    make: impl FnOnce(Vec<u8>) -> E,
) {
    if let Some(last) = events.last_mut() {
        if let Some(run) = is_run(last) {
            run.extend_from_slice(bytes);
            return;
        }
    }
    events.push(make(bytes.to_vec()));
}

//! The seeded mutator. Input number `i` of a target is a pure function of (seed, target, i), so any
//! input of a run can be made again without the run's history (there is no coverage feedback on
//! stable Rust: the corpus is the seeds).

/// A small, fast, reproducible PRNG (SplitMix64): the same seed gives the same inputs on every
/// machine and every version of every crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The generator for input `index` of `target` in a run seeded with `seed`.
    pub fn for_input(seed: u64, target: &str, index: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(target.as_bytes());
        h.update(&index.to_le_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.finalize().as_bytes()[..8]);
        Rng(u64::from_le_bytes(b))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len()))
        }
    }
}

/// Largest input the mutator makes (the HTTP API's body limit).
pub const MAX_INPUT: usize = 1 << 20;

/// Integers that break arithmetic and length checks.
const INTERESTING: [u64; 16] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

/// MessagePack headers claiming far more than any frame holds: array/map/bin/str/ext with 16-
/// and 32-bit lengths.
pub const MSGPACK_BOMBS: [&[u8]; 10] = [
    &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array 32: 4 G elements
    &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map 32: 4 G pairs
    &[0xc6, 0xff, 0xff, 0xff, 0xff],       // bin 32: 4 GiB
    &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str 32: 4 GiB
    &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01], // ext 32
    &[0xdc, 0xff, 0xff],                   // array 16
    &[0xde, 0xff, 0xff],                   // map 16
    &[0xc5, 0xff, 0xff],                   // bin 16
    &[0xda, 0xff, 0xff],                   // str 16
    &[0xdd, 0x10, 0x00, 0x00, 0x00],       // array 32: 256 M elements
];

/// What a target tells the mutator about its format.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// Tokens worth inserting whole: field names, keywords, markers.
    pub dictionary: Vec<Vec<u8>>,
    /// Tokens that open one more level of nesting (`[`, `{"a":`, MessagePack fixarray 1 …).
    pub nesting: Vec<Vec<u8>>,
    /// Whether the format is MessagePack (length-field bombs apply as headers) or text (they
    /// apply as huge numbers).
    pub binary: bool,
}

/// One mutated input from `seeds`: one to eight stacked mutations of a seed.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], hints: &Hints) -> Vec<u8> {
    let mut data = rng.pick(seeds).cloned().unwrap_or_default();
    let rounds = 1 + rng.below(4) + if rng.chance(4) { rng.below(5) } else { 0 };
    for _ in 0..rounds {
        apply_one(rng, &mut data, seeds, hints);
        if data.len() > MAX_INPUT {
            data.truncate(MAX_INPUT);
        }
    }
    data
}

fn apply_one(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>], hints: &Hints) {
    let len = data.len();
    let pos = rng.below(len + 1);
    match rng.below(15) {
        // Bit flip.
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Random byte.
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        // Insert random bytes.
        2 => {
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(pos..pos, bytes);
        }
        // Delete a range.
        3 if len > 0 => {
            let n = 1 + rng.below(len.min(16));
            let start = rng.below(len - n + 1);
            data.drain(start..start + n);
        }
        // Duplicate a range elsewhere.
        4 if len > 0 => {
            let n = 1 + rng.below(len.min(64));
            let start = rng.below(len - n + 1);
            let chunk = data[start..start + n].to_vec();
            data.splice(pos..pos, chunk);
        }
        // Splice: my prefix, another seed's suffix.
        5 => {
            if let Some(other) = rng.pick(seeds) {
                let cut = rng.below(other.len() + 1);
                data.truncate(pos);
                data.extend_from_slice(&other[cut..]);
            }
        }
        // Insert a chunk of another seed.
        6 => {
            if let Some(other) = rng.pick(seeds) {
                if !other.is_empty() {
                    let n = 1 + rng.below(other.len().min(128));
                    let start = rng.below(other.len() - n + 1);
                    data.splice(pos..pos, other[start..start + n].iter().copied());
                }
            }
        }
        // Interesting integer, 1/2/4/8 bytes, big or little endian, overwriting.
        7 if len > 0 => {
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1usize, 2, 4, 8][rng.below(4)];
            let bytes = if rng.chance(2) { v.to_be_bytes() } else { v.to_le_bytes() };
            let bytes = if rng.chance(2) { &bytes[8 - width..] } else { &bytes[..width] };
            let i = rng.below(len);
            for (k, b) in bytes.iter().enumerate() {
                if let Some(slot) = data.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
        // Length bomb: a header claiming gigabytes, inserted or overwriting.
        8 | 9 => {
            let bomb: Vec<u8> = if hints.binary {
                MSGPACK_BOMBS[rng.below(MSGPACK_BOMBS.len())].to_vec()
            } else {
                let texts: [&[u8]; 6] = [
                    b"4294967295",
                    b"18446744073709551616",
                    b"-9223372036854775809",
                    b"1e999999999",
                    b"99999999999999999999999999999999999999999",
                    b"0.0000000000000000000000000000000000000000000000001e-999",
                ];
                texts[rng.below(texts.len())].to_vec()
            };
            if rng.chance(2) && pos < len {
                let end = (pos + bomb.len()).min(len);
                data.splice(pos..end, bomb);
            } else {
                data.splice(pos..pos, bomb);
            }
        }
        // Deep nesting.
        10 => {
            if let Some(token) = rng.pick(&hints.nesting) {
                let depth = [8usize, 64, 200, 1_000, 5_000, 30_000][rng.below(6)];
                let depth = depth.min(MAX_INPUT / token.len().max(1) / 2);
                let bomb: Vec<u8> = token.repeat(depth);
                data.splice(pos..pos, bomb);
            }
        }
        // Dictionary token, inserted or overwriting.
        11 | 12 => {
            if let Some(token) = rng.pick(&hints.dictionary) {
                if rng.chance(2) && pos < len {
                    let end = (pos + token.len()).min(len);
                    data.splice(pos..end, token.iter().copied());
                } else {
                    data.splice(pos..pos, token.iter().copied());
                }
            }
        }
        // Truncate.
        13 => data.truncate(pos),
        // Grow large: around the 64 KiB frame limit, or a long run of one byte.
        _ => {
            let target = [65_519usize, 65_535, 65_536, 70_000, 300_000][rng.below(5)];
            let fill = if len > 0 { data[rng.below(len)] } else { b'a' };
            if data.len() < target {
                data.resize(target, fill);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_reproducible() {
        let seeds = vec![b"hello world".to_vec(), vec![0x93, 1, 2, 3]];
        let hints = Hints { dictionary: vec![b"x".to_vec()], nesting: vec![vec![0x91]], binary: true };
        for i in 0..200 {
            let a = mutate(&mut Rng::for_input(7, "t", i), &seeds, &hints);
            let b = mutate(&mut Rng::for_input(7, "t", i), &seeds, &hints);
            assert_eq!(a, b);
            assert!(a.len() <= MAX_INPUT);
        }
    }
}

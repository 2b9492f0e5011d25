//! Deterministic input mutation for the never-panic tests of this crate and
//! of its users (no dependency, no I/O). Not part of the API.

/// xorshift64*: deterministic, no dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// One random edit of `base`: a changed byte, a truncation, an insertion or
/// a huge length where a length is expected.
pub fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    match rng.below(4) {
        0 => {
            let i = rng.below(v.len());
            v[i] = rng.next_u64() as u8;
        }
        1 => v.truncate(rng.below(v.len())),
        2 => {
            let i = rng.below(v.len());
            let extra = rng.bytes(16);
            v.splice(i..i, extra);
        }
        _ => {
            // A huge length where a length is expected.
            let i = rng.below(v.len() / 8) * 8;
            if i + 8 <= v.len() {
                v[i..i + 8].copy_from_slice(&rng.next_u64().to_le_bytes());
            }
        }
    }
    v
}

//! Nix's base32 ("nix32"): its own alphabet and its own bit order.

pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Encode bytes the way Nix prints hashes (`nix-hash --type sha256 --base32`).
pub fn encode(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    let len = (bytes.len() * 8 - 1) / 5 + 1;
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = u16::from(bytes[i]) >> j;
        let hi = bytes.get(i + 1).map_or(0, |&x| u16::from(x) << (8 - j));
        out.push(ALPHABET[usize::from((lo | hi) & 0x1f)] as char);
    }
    out
}

/// Decode; `None` on a bad character, a wrong length or non-zero padding bits.
pub fn decode(s: &str, out_len: usize) -> Option<Vec<u8>> {
    if s.len() != (out_len * 8).div_ceil(5) {
        return None;
    }
    let mut out = vec![0u8; out_len];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c)? as u16;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < out_len {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// Normalise a sha256 hash as Nix prints it (`sha256:<nix32>`,
/// `sha256:<hex>` or SRI `sha256-<base64>`) to `sha256:<nix32>`.
pub fn normalize_sha256(h: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = if let Some(b64) = h.strip_prefix("sha256-") {
        base64::engine::general_purpose::STANDARD.decode(b64).ok()?
    } else {
        let rest = h.strip_prefix("sha256:")?;
        match rest.len() {
            52 => decode(rest, 32)?,
            64 => (0..32)
                .map(|i| u8::from_str_radix(rest.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?,
            _ => return None,
        }
    };
    (bytes.len() == 32).then(|| format!("sha256:{}", encode(&bytes)))
}

pub fn is_nix32_char(c: u8) -> bool {
    matches!(c, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sha256() {
        // sha256("") as printed by `nix-hash --type sha256 --to-base32`.
        let h = [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ];
        let enc = encode(&h);
        assert_eq!(enc, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode(&enc, 32).unwrap(), h);
    }

    #[test]
    fn normalizes_sri_hex_and_nix32() {
        let n = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        assert_eq!(normalize_sha256(n).unwrap(), n);
        let sri = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        assert_eq!(normalize_sha256(sri).unwrap(), n);
        let hex = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(normalize_sha256(hex).unwrap(), n);
        assert!(normalize_sha256("md5:abc").is_none());
        assert!(normalize_sha256("sha256-AAAA").is_none());
    }

    #[test]
    fn roundtrip_and_rejects() {
        for len in [1usize, 5, 20, 32] {
            let bytes: Vec<u8> = (0..len as u8).map(|x| x.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode(&bytes), len).unwrap(), bytes);
        }
        assert!(decode("e", 1).is_none());
        assert!(decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7u", 32).is_none());
        assert!((b'a'..=b'z').filter(|&c| is_nix32_char(c)).count() == 22);
    }
}

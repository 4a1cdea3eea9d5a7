//! Lower-case hex digits of a number, sixteen at a time without a table or a loop (the ids
//! `request-id` and `trace-context` make per request).

/// The 16 lower-case hex digits of `n`, most significant first.
pub(super) fn lower_hex(n: u64) -> [u8; 16] {
    let high = spread_nibbles((n >> 32) as u32);
    let low = spread_nibbles(n as u32);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&digits(high).to_be_bytes());
    out[8..].copy_from_slice(&digits(low).to_be_bytes());
    out
}

/// The eight nibbles of `n`, one per byte, the most significant in the highest byte.
fn spread_nibbles(n: u32) -> u64 {
    let x = u64::from(n);
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f
}

/// Each byte's nibble (0..=15) as its ASCII digit: `'0' + v`, and 39 more (`'a' - '0' - 10`)
/// for the bytes above 9 (whose value plus 6 carries into bit 4).
fn digits(nibbles: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    let above_nine = ((nibbles + ONES * 6) >> 4) & ONES;
    nibbles + ONES * u64::from(b'0') + above_nine * 39
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_format_writes_them() {
        for n in [
            0,
            1,
            9,
            10,
            15,
            0xabcd_ef01_2345_6789,
            0x0123_4567_89ab_cdef,
            u64::MAX,
            0x8000_0000_0000_0000,
        ] {
            assert_eq!(lower_hex(n), format!("{n:016x}").as_bytes(), "{n:#x}");
        }
        let mut n = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            assert_eq!(lower_hex(n), format!("{n:016x}").as_bytes(), "{n:#x}");
        }
    }
}

//! CRC-32C (Castagnoli), the checksum of every VLP frame.
//!
//! Delegates to the `crc32c` crate, which uses the CPU's CRC instruction
//! (SSE4.2 on x86-64, the CRC extension on ARMv8) when present and a
//! table-driven software path otherwise; both give identical results.

/// CRC-32C of `data` (reflected polynomial `0x82F63B78`, init and final XOR
/// `0xFFFFFFFF`).
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::crc32c;

    #[test]
    fn reference_values_from_the_spec() {
        assert_eq!(crc32c(b""), 0x0000_0000);
        assert_eq!(crc32c(b"a"), 0xc1d0_4330);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
    }
}

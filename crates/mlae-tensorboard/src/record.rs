//! TFRecord framing, the container of event files: for each record, the length as a u64
//! little-endian, the masked CRC32C of those 8 bytes, the data, the masked CRC32C of the data.
//!
//! The checksum is CRC-32C (Castagnoli), not the CRC-32 of zip/PNG that `crc32fast` computes
//! (it offers no other polynomial); a table-driven CRC-32C is a few lines, so it lives here.

/// CRC-32C's polynomial, bit-reflected.
const CASTAGNOLI_REFLECTED: u32 = 0x82F6_3B78;

/// The byte-at-a-time table, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 { (c >> 1) ^ CASTAGNOLI_REFLECTED } else { c >> 1 };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C of `data`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: rotated and offset so that a CRC stored inside checksummed data does
/// not make the outer checksum degenerate.
pub(crate) fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// `data` framed as one TFRecord.
pub(crate) fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        // the catalogue's check value for CRC-32/ISCSI, and RFC 3720's 32 zero bytes
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn masked_values() {
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8, as TensorBoard's own reader computes it
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(&3u64.to_le_bytes()), 0x0E49_99B0);
    }

    #[test]
    fn frame_layout() {
        let f = frame(b"abc");
        assert_eq!(f.len(), 8 + 4 + 3 + 4);
        assert_eq!(&f[..8], &3u64.to_le_bytes());
        assert_eq!(&f[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&f[12..15], b"abc");
        assert_eq!(&f[15..], &masked_crc32c(b"abc").to_le_bytes());
    }
}

//! CRC32C header and data digests (protocols.md A.3).
//!
//! Both digests are plain CRC-32C (Castagnoli: reflected polynomial
//! 0x82F63B78, initial value and final XOR 0xFFFFFFFF), stored
//! little-endian right after the bytes they cover. The header digest
//! covers the first HLEN bytes of a PDU; the data digest covers one PDU's
//! data section only, never its padding. Data is not padded to a multiple
//! of 4 before digesting (SPDK does that for odd lengths, Linux does not;
//! block transfers are multiples of 4, so the two agree where it
//! matters).

/// Bytes of a header or data digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// CRC-32C of `bytes`: the value a header or data digest carries.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// A digest computed over data that arrives in pieces (a receive buffer
/// refilled by the socket), so the data is never walked twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crc32c(u32);

impl Crc32c {
    /// The digest of nothing yet.
    pub fn new() -> Self {
        Self(0)
    }

    /// Appends `bytes` to what has been digested.
    pub fn update(&mut self, bytes: &[u8]) {
        // `crc32c_append` continues from a finished value (it undoes and
        // redoes the final XOR), so 0, the digest of no bytes, starts it.
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }

    /// The digest of everything appended.
    pub fn value(&self) -> u32 {
        self.0
    }
}

/// Reads a digest as stored on the wire.
pub fn read(bytes: [u8; DIGEST_LEN]) -> u32 {
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time CRC-32C, written from the definition so the crate
    /// we use (table or SSE4.2 driven) is checked against something that
    /// shares no code with it.
    fn reference(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        crc ^ 0xFFFF_FFFF
    }

    #[test]
    fn known_values() {
        assert_eq!(reference(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(reference(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(reference(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(&[]), 0);
    }

    #[test]
    fn capsule_resp_header_digest() {
        // A CapsuleResp (CNTLID 1, SQHD 1) with HDGSTF set: the vector
        // from protocols.md A.3.
        let header = [
            0x05, 0x01, 0x18, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(reference(&header), 0x3233_6242);
        assert_eq!(crc32c(&header), 0x3233_6242);
        assert_eq!(crc32c(&header).to_le_bytes(), [0x42, 0x62, 0x33, 0x32]);
        assert_eq!(read([0x42, 0x62, 0x33, 0x32]), 0x3233_6242);
    }

    #[test]
    fn pieces_give_the_one_shot_value() {
        let data: Vec<u8> = (0..4099u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = crc32c(&data);
        assert_eq!(whole, reference(&data));
        for split in [0, 1, 3, 4, 64, 4095, 4098, 4099] {
            let mut d = Crc32c::new();
            d.update(&data[..split]);
            d.update(&data[split..]);
            assert_eq!(d.value(), whole, "split at {split}");
        }
        let mut bytewise = Crc32c::new();
        for b in &data {
            bytewise.update(std::slice::from_ref(b));
        }
        assert_eq!(bytewise.value(), whole);
    }
}

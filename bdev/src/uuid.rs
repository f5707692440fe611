//! RFC 4122 version-4 UUIDs: every bdev has one, usable as an alias.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub fn new_v4() -> Uuid {
        let mut b = [0u8; 16];
        // SAFETY: getrandom writes at most 16 bytes into a live local array.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 16, 0) };
        if n != 16 {
            // No entropy source: still unique enough for names in one process.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            b[..16].copy_from_slice(&(t.as_nanos() ^ reactor::ticks() as u128).to_le_bytes());
        }
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, x) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Uuid {
    type Err = ();
    fn from_str(s: &str) -> Result<Uuid, ()> {
        let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return Err(());
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).map_err(|_| ())?;
            out[i] = u8::from_str_radix(s, 16).map_err(|_| ())?;
        }
        Ok(Uuid(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_v4() {
        let u = Uuid::new_v4();
        let s = u.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_eq!(s.parse::<Uuid>(), Ok(u));
        assert!("not-a-uuid".parse::<Uuid>().is_err());
        assert!("zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"
            .parse::<Uuid>()
            .is_err());
    }
}

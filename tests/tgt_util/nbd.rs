//! A minimal NBD client (EXPORT_NAME, simple replies, one request at a
//! time): exact control over the wire for durability and abuse tests.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;

pub struct Client {
    pub s: TcpStream,
    pub size: u64,
    pub flags: u16,
    cookie: u64,
}

impl Client {
    pub fn connect(addr: &str, export: &str) -> io::Result<Client> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_nodelay(true)?;
        let mut g = [0u8; 18];
        s.read_exact(&mut g)?;
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        s.write_all(&3u32.to_be_bytes())?; // fixed newstyle, no zeroes
        let mut o = b"IHAVEOPT".to_vec();
        o.extend_from_slice(&1u32.to_be_bytes());
        o.extend_from_slice(&(export.len() as u32).to_be_bytes());
        o.extend_from_slice(export.as_bytes());
        s.write_all(&o)?;
        let mut r = [0u8; 10];
        s.read_exact(&mut r)?;
        Ok(Client {
            size: u64::from_be_bytes(r[..8].try_into().unwrap()),
            flags: u16::from_be_bytes([r[8], r[9]]),
            s,
            cookie: 0,
        })
    }

    /// Sends one request without waiting for its reply; returns its
    /// cookie.
    pub fn send(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<u64> {
        self.cookie += 1;
        let mut h = Vec::with_capacity(28 + payload.len());
        h.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&kind.to_be_bytes());
        h.extend_from_slice(&self.cookie.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(payload);
        self.s.write_all(&h)?;
        Ok(self.cookie)
    }

    /// Reads the simple reply to `cookie` (the only one outstanding);
    /// `read_len` bytes of data follow a successful read.
    pub fn recv(&mut self, cookie: u64, read_len: Option<u32>) -> io::Result<(u32, Vec<u8>)> {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r)?;
        assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()), 0x6744_6698);
        assert_eq!(u64::from_be_bytes(r[8..].try_into().unwrap()), cookie);
        let err = u32::from_be_bytes(r[4..8].try_into().unwrap());
        let mut data = Vec::new();
        if let (Some(len), 0) = (read_len, err) {
            data = vec![0u8; len as usize];
            self.s.read_exact(&mut data)?;
        }
        Ok((err, data))
    }

    /// Sends one request and reads its simple reply; returns the error
    /// field and, for a successful read, the data.
    pub fn request(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<(u32, Vec<u8>)> {
        let c = self.send(kind, flags, offset, len, payload)?;
        self.recv(c, (kind == CMD_READ).then_some(len))
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<u32> {
        Ok(self
            .request(CMD_WRITE, 0, offset, data.len() as u32, data)?
            .0)
    }

    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let (err, d) = self.request(CMD_READ, 0, offset, len, &[])?;
        if err != 0 {
            return Err(io::Error::other(format!("read error {err}")));
        }
        Ok(d)
    }

    pub fn flush(&mut self) -> io::Result<u32> {
        Ok(self.request(CMD_FLUSH, 0, 0, 0, &[])?.0)
    }
}

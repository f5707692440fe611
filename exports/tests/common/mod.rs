//! For the in-process tests: reactors, a malloc bdev exported by an
//! `NbdServer` in this process, and a small NBD client (EXPORT_NAME,
//! simple replies) that can pipeline requests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bdev::modules::malloc::{self, MallocOptions};
use exports::nbd::NbdServer;
use reactor::{ReactorOptions, ReactorSet};

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_FLUSH: u16 = 3;

/// Reactors on cores 0 and 1, a malloc bdev of `blocks` 4 KiB blocks, and
/// an export of it on a free loopback port.
pub struct Setup {
    pub set: ReactorSet,
    pub server: NbdServer,
    pub addr: String,
    pub bdev: String,
}

impl Setup {
    pub fn new(blocks: u64) -> Setup {
        Setup::with_reserved(blocks, Arc::new(Vec::new))
    }

    pub fn with_reserved(blocks: u64, reserved: exports::nbd::ReservedCores) -> Setup {
        static N: AtomicU32 = AtomicU32::new(0);
        let set = ReactorSet::start(
            &[0, 1],
            ReactorOptions {
                no_pin: true,
                ..Default::default()
            },
        )
        .unwrap();
        let bdev = format!("M{}", N.fetch_add(1, Ordering::Relaxed));
        malloc::create(MallocOptions {
            name: bdev.clone(),
            block_size: 4096,
            num_blocks: blocks,
            uuid: None,
            optimal_io_boundary: 0,
        })
        .unwrap();
        let server = NbdServer::new(set.handle(), reserved);
        let addr = server
            .start_disk(&bdev, Some("127.0.0.1:0"), Some("disk"))
            .unwrap();
        Setup {
            set,
            server,
            addr,
            bdev,
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.addr, "disk").unwrap()
    }

    /// Stops the exports, then the reactors (the order the daemon keeps).
    pub fn stop(self) {
        self.server.stop_all();
        let _ = bdev::unregister(&self.bdev);
        self.set.stop();
    }
}

pub struct Client {
    pub s: TcpStream,
    pub size: u64,
    cookie: u64,
    /// Read lengths of requests sent and not answered, by cookie.
    reads: HashMap<u64, u32>,
}

impl Client {
    pub fn connect(addr: &str, export: &str) -> io::Result<Client> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_nodelay(true)?;
        let mut g = [0u8; 18];
        s.read_exact(&mut g)?;
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes())?;
        let mut o = b"IHAVEOPT".to_vec();
        o.extend_from_slice(&1u32.to_be_bytes());
        o.extend_from_slice(&(export.len() as u32).to_be_bytes());
        o.extend_from_slice(export.as_bytes());
        s.write_all(&o)?;
        let mut r = [0u8; 10];
        s.read_exact(&mut r)?;
        Ok(Client {
            size: u64::from_be_bytes(r[..8].try_into().unwrap()),
            s,
            cookie: 0,
            reads: HashMap::new(),
        })
    }

    /// Sends a request without waiting; returns its cookie.
    pub fn send(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> io::Result<u64> {
        self.cookie += 1;
        let mut h = Vec::with_capacity(28 + payload.len());
        h.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&kind.to_be_bytes());
        h.extend_from_slice(&self.cookie.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(payload);
        self.s.write_all(&h)?;
        if kind == CMD_READ {
            self.reads.insert(self.cookie, len);
        }
        Ok(self.cookie)
    }

    /// Reads one reply: its cookie, error, and a read's data.
    pub fn recv(&mut self) -> io::Result<(u64, u32, Vec<u8>)> {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r)?;
        assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()), 0x6744_6698);
        let err = u32::from_be_bytes(r[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(r[8..].try_into().unwrap());
        let mut data = Vec::new();
        if let Some(len) = self.reads.remove(&cookie) {
            if err == 0 {
                data = vec![0u8; len as usize];
                self.s.read_exact(&mut data)?;
            }
        }
        Ok((cookie, err, data))
    }

    pub fn request(
        &mut self,
        kind: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<(u32, Vec<u8>)> {
        let c = self.send(kind, offset, len, payload)?;
        let (cookie, err, data) = self.recv()?;
        assert_eq!(cookie, c);
        Ok((err, data))
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<u32> {
        Ok(self.request(CMD_WRITE, offset, data.len() as u32, data)?.0)
    }

    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let (err, d) = self.request(CMD_READ, offset, len, &[])?;
        if err != 0 {
            return Err(io::Error::other(format!("read error {err}")));
        }
        Ok(d)
    }

    pub fn flush(&mut self) -> io::Result<u32> {
        Ok(self.request(CMD_FLUSH, 0, 0, &[])?.0)
    }
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Threads of this process, as the kernel counts them.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

//! The TCP transport's options (`nvmf_create_transport`): queue depths,
//! in-capsule data, the largest I/O, keep-alive granularity. One
//! transport per target, as there is one transport type we serve.

use serde::{Deserialize, Serialize};

/// What `nvmf_create_transport` may set. Decoding is relaxed, as SPDK's
/// is: `spdk-rpc` sends RDMA and vfio-user booleans even for TCP, and
/// those are accepted and ignored.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct TransportOpts {
    pub trtype: String,
    pub max_queue_depth: u16,
    pub max_io_qpairs_per_ctrlr: u16,
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    pub max_aq_depth: u32,
    pub iobuf_small_cache_size: u32,
    pub iobuf_large_cache_size: u32,
    pub dif_insert_or_strip: bool,
    pub zcopy: bool,
    pub c2h_success: bool,
    pub sock_priority: u32,
    pub abort_timeout_sec: u32,
    pub ack_timeout: u32,
    pub data_wr_pool_size: u32,
    pub disable_command_passthru: bool,
    pub kas: u16,
    pub min_kato: u32,
}

impl Default for TransportOpts {
    fn default() -> Self {
        TransportOpts {
            trtype: "TCP".into(),
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            max_aq_depth: 128,
            iobuf_small_cache_size: u32::MAX,
            iobuf_large_cache_size: u32::MAX,
            dif_insert_or_strip: false,
            zcopy: false,
            c2h_success: true,
            sock_priority: 0,
            abort_timeout_sec: 1,
            ack_timeout: 0,
            data_wr_pool_size: 0,
            disable_command_passthru: false,
            kas: 100,
            min_kato: 10000,
        }
    }
}

/// Why options were refused, in words for the log.
impl TransportOpts {
    pub fn check(&self) -> Result<(), String> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(format!("Invalid transport type '{}'", self.trtype));
        }
        if self.max_queue_depth < 2 {
            return Err("max_queue_depth must be at least 2".into());
        }
        if self.max_aq_depth < 32 {
            return Err("max_aq_depth must be at least 32".into());
        }
        if self.max_io_size < 4096 || !self.max_io_size.is_power_of_two() {
            return Err("max_io_size must be a power of two of at least 4096".into());
        }
        if self.max_io_size > 1 << 20 {
            return Err("max_io_size is at most 1 MiB".into());
        }
        if !self.in_capsule_data_size.is_multiple_of(16)
            || self.in_capsule_data_size > self.max_io_size
        {
            return Err(
                "in_capsule_data_size must be a multiple of 16, at most max_io_size".into(),
            );
        }
        if self.kas == 0 {
            return Err("kas must not be 0".into());
        }
        Ok(())
    }

    /// MDTS: the largest transfer in 4 KiB units, as a power of two.
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).trailing_zeros() as u8
    }

    /// The most in-capsule data an I/O command may carry.
    pub fn io_in_capsule(&self) -> u32 {
        self.in_capsule_data_size
    }

    /// MAXH2CDATA advertised in ICResp: H2CData PDUs carry at most this.
    pub fn max_h2c_data(&self) -> u32 {
        self.max_io_size
    }
}

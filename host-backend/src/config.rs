//! The virtio-blk device this daemon presents: feature bits and configuration space.
//!
//! Offered: `VERSION_1`, indirect descriptors, event-idx, `SEG_MAX`, `BLK_SIZE`, `FLUSH`
//! (writes are cached by the host until a flush, so the guest must know to send one), `MQ`,
//! and either `RO` or `DISCARD` + `WRITE_ZEROES`. Not offered: packed rings (virtio-queue
//! serves split rings), `CONFIG_WCE` (the cache mode is fixed), geometry and topology.

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::request::{Limits, IOV_MAX};

/// Bytes of `struct virtio_blk_config` up to and including the secure-erase fields.
pub const CONFIG_LEN: usize = 72;

/// What the configuration space is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The request bounds (capacity, read-only, discard/write-zeroes limits).
    pub limits: Limits,
    /// Logical block size the guest should use (512, or the image's `O_DIRECT` granularity).
    pub blk_size: u32,
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest queue the front end may set up.
    pub max_queue_size: u16,
}

impl DeviceConfig {
    /// The virtio feature bits offered (plus vhost-user's `PROTOCOL_FEATURES`).
    pub fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_MQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.limits.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.limits.discard {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if self.limits.write_zeroes {
            f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    /// Data segments per request the driver may use (`seg_max`): a request is its data
    /// plus a header and a status descriptor, and one `preadv` takes at most 1024 iovecs.
    pub fn seg_max(&self) -> u32 {
        (u32::from(self.max_queue_size).min(IOV_MAX as u32))
            .saturating_sub(2)
            .max(1)
    }

    /// `struct virtio_blk_config`, little-endian.
    pub fn bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |at: usize, v: &[u8]| c[at..at + v.len()].copy_from_slice(v);
        let lim = &self.limits;
        put(0, &lim.capacity_sectors.to_le_bytes()); // capacity
        put(12, &self.seg_max().to_le_bytes()); // seg_max
        put(20, &self.blk_size.to_le_bytes()); // blk_size
        put(34, &self.num_queues.to_le_bytes()); // num_queues
        let align = (self.blk_size / 512).max(1);
        if lim.discard {
            put(36, &lim.max_range_sectors.to_le_bytes()); // max_discard_sectors
            put(40, &lim.max_range_segments.to_le_bytes()); // max_discard_seg
            put(44, &align.to_le_bytes()); // discard_sector_alignment
        }
        if lim.write_zeroes {
            put(48, &lim.max_range_sectors.to_le_bytes()); // max_write_zeroes_sectors
            put(52, &lim.max_range_segments.to_le_bytes()); // max_write_zeroes_seg
            put(56, &[1]); // write_zeroes_may_unmap
        }
        c
    }

    /// `size` bytes of the configuration space from `offset`, zero past its end (vhost-user
    /// wants exactly the size asked for); empty when the window is absurd.
    pub fn window(&self, offset: u32, size: u32) -> Vec<u8> {
        const MAX: u32 = 256; // VHOST_USER_MAX_CONFIG_SIZE
        if size > MAX || offset > MAX {
            return Vec::new();
        }
        let bytes = self.bytes();
        (offset..offset + size)
            .map(|i| bytes.get(i as usize).copied().unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ro: bool) -> DeviceConfig {
        DeviceConfig {
            limits: Limits::new(2048, ro),
            blk_size: 512,
            num_queues: 2,
            max_queue_size: 256,
        }
    }

    #[test]
    fn config_space_layout() {
        let b = cfg(false).bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 512);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 2);
        assert_eq!(
            u32::from_le_bytes(b[36..40].try_into().unwrap()),
            crate::request::MAX_RANGE_SECTORS
        );
        assert_eq!(b[56], 1);
        let w = cfg(false).window(32, 8);
        assert_eq!(w, b[32..40]);
        assert_eq!(cfg(false).window(60, 40).len(), 40);
        assert!(cfg(false).window(0, 4096).is_empty());
    }

    #[test]
    fn read_only_offers_ro_and_no_discard() {
        let f = cfg(true).features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        let b = cfg(true).bytes();
        assert_eq!(&b[36..60], &[0u8; 24]);
        let f = cfg(false).features();
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    }
}

//! The host's view of the pair's shared region (`DIR/region.bin`): creating it with its
//! header, and a `MAP_SHARED` mapping of its header and control pages that implements the
//! guests' [`Words`] trait, so the host reads and writes the control words with the same
//! code (`owner`, `peer_silenced`, ...) as the guests.
//!
//! The mapping shares the file's page cache with QEMU's `memory-backend-file,share=on`
//! mapping of the same file, so a guest's store is visible here at once and the other way
//! round. Words are accessed as `AtomicU64` with `SeqCst` (an aligned 8-byte load or store,
//! an `xchg` for the store: a full barrier on x86), and [`Words::fence`] is a `SeqCst`
//! fence. The host writes only `REQUEST`, `REQUEST_SEQ` and `DEAD` (one writer per word).

use std::fs::{File, OpenOptions};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use anyhow::{bail, Context};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use tandem_formats::pair_region::{Header, RegionError, Words, AREAS, PAGE};
use zerocopy::IntoBytes;

use crate::size::ByteSize;

/// A shared mapping of the region's first [`AREAS`] bytes (header and control page).
pub struct RegionMap {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
    writable: bool,
    file_len: u64,
    path: PathBuf,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64` (and a byte copy of the
// header page, which nobody writes after creation); it lives until `Drop`.
unsafe impl Send for RegionMap {}
// SAFETY: as above: shared access is atomic.
unsafe impl Sync for RegionMap {}

impl RegionMap {
    /// Map the region file at `path` (read-write with `writable`).
    pub fn open(path: &Path, writable: bool) -> anyhow::Result<RegionMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .with_context(|| format!("cannot open the pair region {}", path.display()))?;
        let file_len = file.metadata()?.len();
        if file_len < AREAS {
            bail!(
                "{} is {file_len} bytes: too small for a pair region",
                path.display()
            );
        }
        let len = AREAS as usize;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a file we opened, at an address the kernel
        // picks; it aliases no Rust object. Other processes (QEMU) change it concurrently,
        // which is why it is only read through atomics.
        let ptr = unsafe {
            mmap(
                None,
                NonZeroUsize::new(len).expect("AREAS is not zero"),
                prot,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .with_context(|| format!("cannot map the pair region {}", path.display()))?;
        Ok(RegionMap {
            ptr,
            len,
            writable,
            file_len,
            path: path.to_path_buf(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length (the region's size, as QEMU maps it).
    pub fn size(&self) -> u64 {
        self.file_len
    }

    /// The header page as it is now, parsed and checked.
    pub fn header(&self) -> Result<Header, RegionError> {
        let mut page = vec![0u8; PAGE as usize];
        for (i, chunk) in page.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&self.word(i as u64 * 8).load(Ordering::SeqCst).to_ne_bytes());
        }
        Header::parse(&page, self.file_len)
    }

    fn word(&self, offset: u64) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len as u64,
            "region word offset {offset} outside the mapped control area"
        );
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned) as just checked; the
        // mapping lives as long as `self`; every access to it is atomic.
        unsafe {
            &*(self
                .ptr
                .as_ptr()
                .cast::<u8>()
                .add(offset as usize)
                .cast::<AtomicU64>())
        }
    }
}

impl Words for RegionMap {
    fn load(&self, offset: u64) -> u64 {
        self.word(offset).load(Ordering::SeqCst)
    }

    fn store(&self, offset: u64, value: u64) {
        assert!(
            self.writable,
            "store to a read-only mapping of {}",
            self.path.display()
        );
        self.word(offset).store(value, Ordering::SeqCst)
    }

    fn fence(&self) {
        fence(Ordering::SeqCst)
    }
}

impl Drop for RegionMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once; no reference into it outlives
        // `self` (every `&AtomicU64` borrows `self`).
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

impl std::fmt::Debug for RegionMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionMap")
            .field("path", &self.path)
            .field("size", &self.file_len)
            .field("writable", &self.writable)
            .finish()
    }
}

/// The region file after [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Its header.
    pub header: Header,
    /// Its size.
    pub size: ByteSize,
    /// Made now (else an existing region is kept, with its NVLOGs and claims).
    pub created: bool,
}

/// Make the region file at `path` (sparse, `size`, header written on page 0) unless it
/// exists; an existing region with a valid header is kept as it is, whatever `size` says.
/// An existing file whose page 0 is all zeros (made but never formatted) gets its header; a
/// file with another page 0 is refused, so a region is never reformatted under its data.
/// Must not be called while a QEMU maps the file.
pub fn prepare(path: &Path, size: ByteSize) -> anyhow::Result<Prepared> {
    let nv = crate::state::ensure_nvram(path, size)?;
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = nv.size.bytes();
    let mut page = vec![0u8; PAGE as usize];
    if !nv.created {
        read_page0(&file, &mut page, len)?;
        if let Ok(header) = Header::parse(&page, len) {
            super::spec::check_region_size(nv.size)
                .map_err(|why| anyhow::anyhow!("the pair region {}: {why}", path.display()))?;
            return Ok(Prepared {
                header,
                size: nv.size,
                created: false,
            });
        }
        if page.iter().any(|&b| b != 0) {
            let why = Header::parse(&page, len).unwrap_err();
            bail!(
                "{} is not a pair region ({why}); move it away or delete it to start over \
                 (it would hold the pair's write logs and claims)",
                path.display()
            );
        }
    }
    super::spec::check_region_size(nv.size)
        .map_err(|why| anyhow::anyhow!("the pair region {}: {why}", path.display()))?;
    let header = Header::new(len, random_u64())
        .map_err(|e| anyhow::anyhow!("the pair region {}: {e}", path.display()))?;
    file.write_all_at(header.as_bytes(), 0)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the header of {}", path.display()))?;
    Ok(Prepared {
        header,
        size: nv.size,
        created: true,
    })
}

fn read_page0(file: &File, page: &mut [u8], len: u64) -> anyhow::Result<()> {
    let n = (len as usize).min(page.len());
    file.read_exact_at(&mut page[..n], 0)?;
    Ok(())
}

/// A random 64-bit value (the pair id): std's randomly keyed hasher, no extra crate.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_formats::pair_region::{self as r, word};

    #[test]
    fn prepare_creates_keeps_and_refuses() {
        let dir = crate::scratch::tempdir().unwrap();
        let path = dir.path().join("region.bin");
        let p = prepare(&path, ByteSize::mib(8)).unwrap();
        assert!(p.created);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
        let page = std::fs::read(&path).unwrap();
        assert_eq!(Header::parse(&page[..4096], 8 << 20), Ok(p.header));

        // Kept, with its words, whatever size is asked for now.
        let m = RegionMap::open(&path, true).unwrap();
        r::set(&m, 1, word::CLAIM[0], 7);
        drop(m);
        let again = prepare(&path, ByteSize::mib(16)).unwrap();
        assert!(!again.created);
        assert_eq!(again.header, p.header);
        assert_eq!(again.size, ByteSize::mib(8));
        let m = RegionMap::open(&path, false).unwrap();
        assert_eq!(r::get(&m, 1, word::CLAIM[0]), 7);
        assert_eq!(m.header(), Ok(p.header));

        // A damaged header is refused, not reformatted.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", 0).unwrap();
        let e = prepare(&path, ByteSize::mib(8)).unwrap_err().to_string();
        assert!(
            e.contains("not a pair region") && e.contains("bad magic"),
            "{e}"
        );

        // A zero page 0 (made, never formatted) gets its header.
        let blank = dir.path().join("blank.bin");
        File::create(&blank).unwrap().set_len(4 << 20).unwrap();
        assert!(prepare(&blank, ByteSize::mib(4)).unwrap().created);

        // A size QEMU cannot map is refused.
        let e = prepare(&dir.path().join("odd.bin"), ByteSize::mib(6))
            .unwrap_err()
            .to_string();
        assert!(e.contains("power of two"), "{e}");
    }

    #[test]
    fn words_are_shared_between_mappings() {
        let dir = crate::scratch::tempdir().unwrap();
        let path = dir.path().join("region.bin");
        prepare(&path, ByteSize::mib(4)).unwrap();
        let a = RegionMap::open(&path, true).unwrap();
        let b = RegionMap::open(&path, false).unwrap();
        r::set(&a, 0, word::DEAD, 3);
        a.fence();
        assert_eq!(r::get(&b, 0, word::DEAD), 3);
        assert_eq!(b.load(r::offset(0, word::DEAD)), 3);
        // The file sees it too (same page cache).
        let mut buf = [0u8; 8];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut buf, r::offset(0, word::DEAD))
            .unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 3);
        // The host's owner logic runs over the mapping.
        r::set(&a, 1, word::CLAIM[0], 2);
        assert_eq!(r::owner(&b, 0), (1, 2));
        assert!(r::peer_silenced(&b, 0, 2), "DEAD=3 covers epoch 2");
    }

    #[test]
    #[should_panic(expected = "read-only")]
    fn read_only_mapping_refuses_stores() {
        let dir = crate::scratch::tempdir().unwrap();
        let path = dir.path().join("region.bin");
        prepare(&path, ByteSize::mib(4)).unwrap();
        let m = RegionMap::open(&path, false).unwrap();
        m.store(r::offset(0, word::DEAD), 1);
    }
}

//! The image file: opened once, read-write or read-only, through the host page cache or with
//! `O_DIRECT` (`--direct`), locked against a second `tandem-backend` on the same file.
//!
//! With `O_DIRECT` the kernel wants buffer addresses aligned to the file system's DMA
//! alignment and offsets/lengths to its logical block; both come from `statx`
//! (`STATX_DIOALIGN`, Linux 6.1+), else a probe read decides between 512 and 4096. A guest
//! buffer that does not meet them goes through an [`AlignedBuf`] bounce buffer (see
//! [`crate::queue`]); the offset granularity is offered to the guest as `blk_size`.

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::request::SECTOR;

/// An open image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    /// Its path, for messages.
    pub path: PathBuf,
    /// Size in 512-byte sectors (a trailing partial sector is not served).
    pub capacity_sectors: u64,
    /// Opened read-only.
    pub read_only: bool,
    /// Opened with `O_DIRECT`.
    pub direct: bool,
    /// `O_DIRECT` buffer address alignment (1 without `O_DIRECT`).
    pub mem_align: usize,
    /// `O_DIRECT` offset and length granularity (512 without `O_DIRECT`).
    pub io_align: u32,
}

impl Disk {
    /// Open `path` and lock it (shared for read-only, exclusive otherwise).
    pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<Disk> {
        let mut o = OpenOptions::new();
        o.read(true).write(!read_only);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let mut file = o.open(path).map_err(|e| annotate(e, path, "open"))?;
        let lock = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        } | libc::LOCK_NB;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), lock) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{}: locked by another process ({e}); is another tandem-backend serving it?",
                    path.display()
                ),
            ));
        }
        let bytes = file
            .seek(SeekFrom::End(0))
            .map_err(|e| annotate(e, path, "size"))?;
        let (mem_align, io_align) = if direct {
            dio_alignment(&file)?
        } else {
            (1, 512)
        };
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            capacity_sectors: bytes / SECTOR,
            read_only,
            direct,
            mem_align,
            io_align,
        })
    }

    /// The descriptor the engines submit I/O on.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `fdatasync`.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Whether a buffer at `addr` of `len` bytes can be handed to the kernel as is.
    pub fn aligned(&self, addr: usize, len: usize) -> bool {
        !self.direct
            || (addr.is_multiple_of(self.mem_align) && len.is_multiple_of(self.io_align as usize))
    }
}

fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// `(memory alignment, offset alignment)` for `O_DIRECT` on `file`.
fn dio_alignment(file: &File) -> io::Result<(usize, u32)> {
    // SAFETY: statx is plain data; all zeros is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes into the struct we pass; the path is an empty C string with
    // AT_EMPTY_PATH, so it describes the open descriptor.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 {
        if stx.stx_dio_mem_align == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this file system does not support O_DIRECT (drop --direct)",
            ));
        }
        return Ok((
            stx.stx_dio_mem_align as usize,
            stx.stx_dio_offset_align.max(512),
        ));
    }
    // No STATX_DIOALIGN: page-aligned buffers are always enough; try 512-byte I/O.
    let buf = AlignedBuf::zeroed(4096, 4096).ok_or_else(|| io::Error::other("out of memory"))?;
    // SAFETY: the buffer is 4096 bytes, we read at most 512 into it.
    let n = unsafe { libc::pread(file.as_raw_fd(), buf.ptr().cast(), 512, 0) };
    Ok((4096, if n >= 0 { 512 } else { 4096 }))
}

/// A heap buffer with a chosen alignment (bounce buffers and the zero buffer for `O_DIRECT`).
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read (as_slice) or hand out the pointer; writers go
// through &mut.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align` (a power of two); `None` for a bad layout or no
    /// memory. A zero `len` allocates one alignment unit.
    pub fn zeroed(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(align).max(1), align.max(1)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, layout })
    }

    /// The start of the buffer.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its size (at least what was asked for).
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Never: a buffer has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised (zeroed) bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in zeroed() with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf() {
        let mut b = AlignedBuf::zeroed(1000, 4096).unwrap();
        assert_eq!(b.ptr() as usize % 4096, 0);
        assert!(b.len() >= 1000);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[999] = 7;
        assert_eq!(b.as_slice()[999], 7);
        assert!(AlignedBuf::zeroed(10, 3).is_none());
    }

    #[test]
    fn open_capacity_and_lock() {
        let dir = std::env::temp_dir().join(format!("tb-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.raw");
        std::fs::write(&p, vec![0u8; 4096 + 100]).unwrap();
        let d = Disk::open(&p, false, false).unwrap();
        assert_eq!(d.capacity_sectors, 8);
        assert!(d.aligned(3, 5));
        // A second writer is refused while the first holds the image.
        let e = Disk::open(&p, false, false).unwrap_err();
        assert!(e.to_string().contains("locked"), "{e}");
        drop(d);
        let ro = Disk::open(&p, true, false).unwrap();
        assert!(ro.read_only);
        let ro2 = Disk::open(&p, true, false).unwrap();
        drop((ro, ro2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

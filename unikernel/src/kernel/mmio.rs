//! Typed access to device registers (memory-mapped I/O), after virtio-drivers'
//! `UniqueMmioPointer` (safe-mmio): constructing a register or a register block is
//! `unsafe` (whoever constructs one vouches that the address is device memory, mapped, and
//! safe to access with volatile loads and stores of that width); every access after that is
//! safe, bounds- and alignment-checked for a block. The service modules (watchdog, pair,
//! discovery) reach their registers only through these types, never through raw pointers.
//!
//! Unlike safe-mmio's pointers these are `Copy` and write through `&self`: every user here
//! shares its registers by design (the pair region is written by the peer guest and the
//! host too, a status register is written by the restart path while a driver owns the
//! device), and accesses are single loads or stores, never references into the memory.

use core::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// What a register holds: an integer the CPU loads and stores in one access.
pub trait Width: Copy + sealed::Sealed {}
impl Width for u8 {}
impl Width for u16 {}
impl Width for u32 {}
impl Width for u64 {}

/// One register of type `T` at a fixed (identity-mapped) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg<T: Width> {
    addr: usize,
    width: PhantomData<T>,
}

impl<T: Width> Reg<T> {
    /// The register at `addr`.
    ///
    /// # Safety
    /// `addr` must be aligned for `T`, mapped, and a register (or shared memory) that
    /// volatile loads and stores of `T` may access at any time for the rest of the guest's
    /// life without breaking any other code's assumptions: no Rust reference may point at
    /// it, and writing it must not make a device corrupt memory it was not given.
    pub const unsafe fn new(addr: u64) -> Self {
        Self {
            addr: addr as usize,
            width: PhantomData,
        }
    }

    /// Loads the register.
    pub fn read(self) -> T {
        // SAFETY: the contract of `new`: mapped, aligned, and safe to load as `T`.
        unsafe { (self.addr as *const T).read_volatile() }
    }

    /// Stores `value` in the register.
    pub fn write(self, value: T) {
        // SAFETY: the contract of `new`: mapped, aligned, and safe to store as `T`.
        unsafe { (self.addr as *mut T).write_volatile(value) }
    }
}

/// A block of registers: `len` bytes of device memory from `base`, each register reached by
/// its offset (checked to lie in the block and to be aligned for its width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    base: u64,
    len: u64,
}

impl Block {
    /// The `len` bytes at `base`.
    ///
    /// # Safety
    /// What [`Reg::new`] asks of one register, for every aligned register of every width
    /// in `base..base + len`.
    pub const unsafe fn new(base: u64, len: u64) -> Self {
        Self { base, len }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes in the block.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// The register of type `T` at `offset`, if it lies in the block and is aligned.
    pub fn reg<T: Width>(&self, offset: u64) -> Option<Reg<T>> {
        let size = core::mem::size_of::<T>() as u64;
        let end = offset.checked_add(size)?;
        let addr = self.base.checked_add(offset)?;
        if end > self.len || !addr.is_multiple_of(size) {
            return None;
        }
        // SAFETY: inside the block and aligned for `T`: the block's contract covers it.
        Some(unsafe { Reg::new(addr) })
    }

    /// Loads the register of type `T` at `offset`; `None` if it is not in the block.
    pub fn read<T: Width>(&self, offset: u64) -> Option<T> {
        self.reg::<T>(offset).map(Reg::read)
    }

    /// Stores `value` in the register of type `T` at `offset`; false if it is not in the
    /// block (nothing is written then).
    pub fn write<T: Width>(&self, offset: u64, value: T) -> bool {
        self.reg::<T>(offset).map(|r| r.write(value)).is_some()
    }
}

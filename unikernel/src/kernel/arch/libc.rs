//! The C memory functions the host target's `compiler_builtins` leaves to libc, and the
//! personality symbol the precompiled `core` references. String instructions keep the
//! compiler from turning these bodies back into calls to themselves.

use core::arch::asm;

/// # Safety
/// Standard `memcpy` contract: valid, non-overlapping ranges of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // Eight bytes per step for the bulk (emulated string instructions cost per iteration),
    // then the tail byte by byte.
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes and do not overlap.
    unsafe {
        asm!("rep movsq", "mov rcx, {tail}", "rep movsb",
             tail = in(reg) n % 8,
             inout("rcx") n / 8 => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// Standard `memmove` contract: valid ranges of `n` bytes, possibly overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: copy forwards.
        // SAFETY: forwarded contract.
        unsafe { memcpy(dest, src, n) };
    } else {
        // dest overlaps the tail of src: copy backwards with DF set, then clear it.
        // SAFETY: forwarded contract; DF is restored before returning.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _,
                 inout("rdi") dest.add(n).wrapping_sub(1) => _,
                 inout("rsi") src.add(n).wrapping_sub(1) => _,
                 options(nostack));
        }
    }
    dest
}

/// # Safety
/// Standard `memset` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    let pattern = u64::from(c as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees the range is valid for `n` bytes. Eight bytes per step,
    // then the tail.
    unsafe {
        asm!("rep stosq", "mov rcx, {tail}", "rep stosb",
             tail = in(reg) n % 8,
             inout("rcx") n / 8 => _, inout("rdi") dest => _, in("rax") pattern,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// Standard `memcmp` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes; volatile reads
        // keep this loop from being recognised as a call to memcmp.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// Standard `bcmp` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the precompiled `core`; never called with `panic = "abort"`.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by the precompiled `alloc` (built with unwinding); unreachable with
/// `panic = "abort"`, so reaching it is reported and stops the guest.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::console::emergency_line(format_args!("PANIC at <unwind>: _Unwind_Resume reached"));
    crate::exit::fail()
}

//! x86_64 hardware access: the PVH entry, CPU tables, port I/O, paging, and the C symbols
//! the precompiled `core` expects. This is where the guest's `unsafe` lives.

pub mod boot;
pub mod cpu;
pub mod entropy;
pub mod gdt;
pub mod idt;
pub mod libc;
pub mod paging;
pub mod rtc;

//! x86_64 hardware access: the PVH entry, CPU tables, port I/O, MSRs and interrupts,
//! paging, entropy, deliberate exceptions (`debug.fault=`), and the C symbols the
//! precompiled `core` expects. This is where most of the guest's `unsafe` lives (the
//! kernel root names the other modules allowed it).

pub mod boot;
pub mod cpu;
pub mod entropy;
pub mod fault;
pub mod gdt;
pub mod idt;
pub mod libc;
pub mod paging;
pub mod rtc;

//! HPDI, the high-performance device interface: the one zero-copy ring interface through
//! which the guest's applications reach every device (submission/completion rings, a
//! DMA-able buffer pool, the device trait and registry).
//!
//! This crate is `no_std` + `alloc` so it runs in the guest and unit-tests on the host.
//! Its contents arrive with issue 3; issue 2 only fixes its place in the workspace.
#![cfg_attr(not(test), no_std)]

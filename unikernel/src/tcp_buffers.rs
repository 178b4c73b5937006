//! Receive-buffer sizes a hostile client cannot overrun.
//!
//! smoltcp (0.13.1 and 0.14.0 alike) sends its SYN-ACK window unscaled, at most 65535, as
//! RFC 7323 wants, but until its next segment checks what arrives against that value shifted
//! by its own window scale. The scale comes from the buffer's size: a buffer of `c` bytes gets
//! the shift `bits(c) - 16`, so a 128 KiB buffer (18 bits, shift 2) accepts data up to
//! 65535 << 2 bytes ahead, past its end, and a client that sends one segment there and then
//! fills the gap makes `RingBuffer::enqueue_unallocated` assert: a remote crash of the guest
//! (found by `fuzz/tcp_peer`). A buffer of `2^k - 1` bytes gets the shift `k - 16`, and
//! `65535 << (k - 16)` is less than `2^k`: the window the SYN-ACK implies fits inside it.

/// The window shift smoltcp gives a receive buffer of `capacity` bytes (`tcp::Socket::new`).
pub const fn smoltcp_shift(capacity: usize) -> u32 {
    let bits = usize::BITS - capacity.leading_zeros();
    bits.saturating_sub(16)
}

/// The largest receive-buffer size, at most `at_most`, whose SYN-ACK window as smoltcp scales
/// it stays inside the buffer.
pub const fn rx_len(at_most: usize) -> usize {
    if at_most <= 65535 {
        return at_most;
    }
    // 2^k - 1 with 2^k <= at_most + 1.
    let k = usize::BITS - 1 - (at_most + 1).leading_zeros();
    (1 << k) - 1
}

/// Whether smoltcp's reading of its own SYN-ACK window fits in a buffer of `capacity` bytes.
pub const fn synack_window_fits(capacity: usize) -> bool {
    let window = if capacity < 65535 { capacity } else { 65535 };
    window << smoltcp_shift(capacity) <= capacity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_sizes_fit_and_powers_of_two_do_not() {
        assert!(
            !synack_window_fits(128 * 1024),
            "the guest's old NBD buffer"
        );
        assert!(!synack_window_fits(64 * 1024), "the old echo buffer");
        assert_eq!(rx_len(128 * 1024), 128 * 1024 - 1);
        assert_eq!(rx_len(64 * 1024), 64 * 1024 - 1);
        assert_eq!(rx_len(1024), 1024);
        for at_most in (1..=4 << 20)
            .step_by(997)
            .chain([65535, 65536, 131071, 131072, 1 << 22])
        {
            let c = rx_len(at_most);
            assert!(c <= at_most && synack_window_fits(c), "{at_most} -> {c}");
            // Not wastefully small: at least half of what was asked.
            assert!(c >= at_most / 2, "{at_most} -> {c}");
        }
    }
}

//! Names of the x86 CPU exceptions, for the `EXCEPTION ...` console line.

/// `(mnemonic, description, pushes an error code)` for vectors 0..32.
pub const EXCEPTIONS: [(&str, &str, bool); 32] = [
    ("#DE", "divide error", false),
    ("#DB", "debug", false),
    ("NMI", "non-maskable interrupt", false),
    ("#BP", "breakpoint", false),
    ("#OF", "overflow", false),
    ("#BR", "bound range exceeded", false),
    ("#UD", "invalid opcode", false),
    ("#NM", "device not available", false),
    ("#DF", "double fault", true),
    ("#CSO", "coprocessor segment overrun", false),
    ("#TS", "invalid TSS", true),
    ("#NP", "segment not present", true),
    ("#SS", "stack-segment fault", true),
    ("#GP", "general protection", true),
    ("#PF", "page fault", true),
    ("#15", "reserved", false),
    ("#MF", "x87 floating-point", false),
    ("#AC", "alignment check", true),
    ("#MC", "machine check", false),
    ("#XM", "SIMD floating-point", false),
    ("#VE", "virtualization", false),
    ("#CP", "control protection", true),
    ("#22", "reserved", false),
    ("#23", "reserved", false),
    ("#24", "reserved", false),
    ("#25", "reserved", false),
    ("#26", "reserved", false),
    ("#27", "reserved", false),
    ("#HV", "hypervisor injection", false),
    ("#VC", "VMM communication", true),
    ("#SX", "security", true),
    ("#31", "reserved", false),
];

/// Mnemonic and description of a vector; vectors past 31 are external interrupts.
pub fn describe(vector: u64) -> (&'static str, &'static str) {
    match EXCEPTIONS.get(vector as usize) {
        Some((m, d, _)) => (m, d),
        None => ("IRQ", "unexpected interrupt"),
    }
}

/// Decodes a page-fault error code into words (`write user ...`).
pub fn page_fault_reason(error: u64) -> [&'static str; 3] {
    [
        if error & 1 != 0 {
            "protection"
        } else {
            "not-present"
        },
        if error & 2 != 0 { "write" } else { "read" },
        if error & 16 != 0 {
            "instruction-fetch"
        } else {
            "data"
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_vectors() {
        let with: Vec<usize> = (0..32).filter(|&v| EXCEPTIONS[v].2).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert_eq!(describe(14), ("#PF", "page fault"));
        assert_eq!(describe(40).0, "IRQ");
        assert_eq!(page_fault_reason(2), ["not-present", "write", "data"]);
    }
}

//! The long-mode GDT and the TSS whose interrupt stack table gives every exception handler a
//! known-good stack (the precompiled `core` uses the red zone, so handlers must never run on
//! the interrupted stack).

use core::arch::asm;
use core::mem::size_of;

/// IST slot for ordinary exceptions.
pub const IST_EXCEPTION: u8 = 1;
/// IST slot for double faults (a broken exception stack still gets reported).
pub const IST_DOUBLE_FAULT: u8 = 2;
/// IST slot for NMI and machine check, which can arrive at any moment.
pub const IST_NMI: u8 = 3;
/// IST slot for the watchdog timer interrupt.
pub const IST_TIMER: u8 = 4;

const IST_STACK_SIZE: usize = 32 * 1024;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [Stack; 4] = [const { Stack([0; IST_STACK_SIZE]) }; 4];

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: size_of::<Tss>() as u16,
};

static mut GDT: [u64; 5] = [
    0,
    0x00AF_9A00_0000_FFFF, // 0x08: 64-bit code, ring 0
    0x00CF_9200_0000_FFFF, // 0x10: data
    0,                     // 0x18: TSS (low), filled in by init
    0,                     // 0x20: TSS (high)
];

#[repr(C, packed)]
pub struct DescriptorPointer {
    pub limit: u16,
    pub base: u64,
}

/// Installs the GDT and TSS; call once, early, before the IDT.
pub fn init() {
    // SAFETY: single-threaded early boot; nothing else references these statics yet, and
    // the descriptors written are valid for the code and data the kernel already uses.
    unsafe {
        let stacks = &raw mut IST_STACKS;
        let tss = &raw mut TSS;
        for i in 0..4 {
            let top = (&raw mut (*stacks)[i]).cast::<u8>().add(IST_STACK_SIZE) as u64;
            (*tss).ist[i] = top;
        }
        let base = (&raw const TSS) as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit available TSS
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let gdt = &raw mut GDT;
        (*gdt)[3] = low;
        (*gdt)[4] = base >> 32;
        let ptr = DescriptorPointer {
            limit: (size_of::<[u64; 5]>() - 1) as u16,
            base: gdt as u64,
        };
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = const KERNEL_CS as u64,
            ds = in(reg) u64::from(KERNEL_DS),
            tss = in(reg) u64::from(TSS_SELECTOR),
            tmp = out(reg) _,
        );
    }
}

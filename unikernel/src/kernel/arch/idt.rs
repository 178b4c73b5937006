//! Exception entry: one stub per vector 0..32 pushes a uniform frame and calls
//! [`exception_handler`], which reports vector, error code, RIP, CR2 and every register on
//! the console and then follows the panic policy. Every gate uses an IST stack.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, Ordering};

use super::gdt::{self, DescriptorPointer};

/// What the stubs push, lowest address first.
#[repr(C)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

macro_rules! stubs {
    ($($v:literal $kind:ident),* $(,)?) => {
        global_asm!(
            ".text",
            $( concat!(".global isr_", $v, "\nisr_", $v, ":\n", stubs!(@$kind), "push ", $v, "\njmp isr_common\n"), )*
            ".section .rodata.isr_table, \"a\"",
            ".p2align 3",
            ".global isr_table",
            "isr_table:",
            $( concat!(".quad isr_", $v), )*
            ".text",
        );
    };
    (@err) => { "" };
    (@noerr) => { "push 0\n" };
}

stubs!(
    0 noerr, 1 noerr, 2 noerr, 3 noerr, 4 noerr, 5 noerr, 6 noerr, 7 noerr,
    8 err, 9 noerr, 10 err, 11 err, 12 err, 13 err, 14 err, 15 noerr,
    16 noerr, 17 err, 18 noerr, 19 noerr, 20 noerr, 21 err, 22 noerr, 23 noerr,
    24 noerr, 25 noerr, 26 noerr, 27 noerr, 28 noerr, 29 err, 30 err, 31 noerr,
);

global_asm!(
    r#"
    .text
isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    call {handler}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
    "#,
    handler = sym exception_handler,
);

unsafe extern "C" {
    static isr_table: [u64; 32];
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const EMPTY: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};

static mut IDT: [Gate; 256] = [EMPTY; 256];

/// Fills the IDT with the 32 exception gates and loads it. Vectors above 31 stay absent, so
/// a stray interrupt becomes a #GP that is reported like any other exception.
pub fn init() {
    // SAFETY: single-threaded early boot; `isr_table` is defined by the assembly above and
    // holds the addresses of valid entry stubs; the IDT is static and lives forever.
    unsafe {
        let table: &[u64; 32] = &isr_table;
        let idt_ptr = &raw mut IDT;
        let idt = &mut *idt_ptr;
        for (v, &addr) in table.iter().enumerate() {
            let ist = match v {
                2 | 18 => gdt::IST_NMI,
                8 => gdt::IST_DOUBLE_FAULT,
                _ => gdt::IST_EXCEPTION,
            };
            idt[v] = Gate {
                offset_low: addr as u16,
                selector: gdt::KERNEL_CS,
                ist,
                type_attr: 0x8E, // present, ring 0, 64-bit interrupt gate
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        for (v, addr, ist) in [
            (TIMER_VECTOR, isr_timer as *const () as u64, gdt::IST_TIMER),
            (
                SPURIOUS_VECTOR,
                isr_spurious as *const () as u64,
                gdt::IST_TIMER,
            ),
        ] {
            idt[usize::from(v)] = Gate {
                offset_low: addr as u16,
                selector: gdt::KERNEL_CS,
                ist,
                type_attr: 0x8E,
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        let ptr = DescriptorPointer {
            limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
            base: idt.as_ptr() as u64,
        };
        asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
    }
}

/// The local APIC timer's vector (the watchdog tick) and the APIC's spurious vector.
pub const TIMER_VECTOR: u8 = 0x40;
pub const SPURIOUS_VECTOR: u8 = 0xff;

unsafe extern "C" {
    fn isr_timer();
    fn isr_spurious();
}

global_asm!(
    r#"
    .text
    .global isr_timer
isr_timer:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    cld
    call {tick}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
    .global isr_spurious
isr_spurious:
    iretq
    "#,
    tick = sym timer_tick,
);

extern "C" fn timer_tick() {
    crate::watchdog::tick();
}

static IN_EXCEPTION: AtomicBool = AtomicBool::new(false);

/// Forgets the exception being handled (a restart in place leaves it behind for good).
pub fn clear_nested() {
    IN_EXCEPTION.store(false, Ordering::SeqCst);
}

extern "C" fn exception_handler(frame: &mut ExceptionFrame) {
    let cr2 = super::cpu::read_cr2();
    if IN_EXCEPTION.swap(true, Ordering::SeqCst) {
        // An exception while reporting one: say so with the bare minimum and stop.
        crate::console::emergency_line(format_args!(
            "EXCEPTION vector={} (nested) rip={:#x} cr2={:#x}",
            frame.vector, frame.rip, cr2
        ));
        crate::exit::fail();
    }
    crate::console::report_exception(frame, cr2);
    let (m, d) = unikernel::exceptions::describe(frame.vector);
    panic!(
        "CPU exception {} {m} ({d}) at rip={:#x} error={:#x}",
        frame.vector, frame.rip, frame.error
    );
}

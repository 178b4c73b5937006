//! The PVH entry: an ELF note tells QEMU/Xen where the 32-bit entry is; the stub there
//! builds identity page tables for the first 4 GiB (2 MiB pages), enters long mode, enables
//! SSE (the precompiled `core` uses it) and calls [`crate::kmain`] with the physical address
//! of `hvm_start_info`.

use core::arch::global_asm;

/// Boot stack size (also the stack the whole guest runs on).
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

/// Abandons the current stack (whatever was running: a panic, an exception handler) and
/// enters [`crate::kmain_restart`] at the top of the boot stack.
pub fn restart_on_boot_stack() -> ! {
    // SAFETY: nothing on the current stack is used again; interrupts are off; the boot stack
    // is the kernel's own and `kmain_restart` never returns.
    unsafe {
        core::arch::asm!(
            "lea rsp, [rip + boot_stack_top]",
            "xor ebp, ebp",
            "call {f}",
            "ud2",
            f = sym crate::kmain_restart,
            options(noreturn)
        )
    }
}

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4          /* name size: "Xen\0" */
    .long 4          /* descriptor size */
    .long 18         /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start32
    .p2align 2

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov edi, ebx                       /* hvm_start_info paddr, kept for kmain */
    mov esp, offset boot_stack_top

    /* PD entries: 2048 x 2 MiB pages = the first 4 GiB, identity-mapped. */
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83                        /* present | writable | 2 MiB page */
    mov [boot_pd + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov [boot_pd + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 2048
    jb 2b

    /* PDPT[0..4] -> the four page directories; PML4[0] -> PDPT. */
    xor ecx, ecx
3:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 0x3
    mov [boot_pdpt + ecx * 8], eax
    mov dword ptr [boot_pdpt + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 4
    jb 3b
    mov eax, offset boot_pdpt
    or eax, 0x3
    mov [boot_pml4], eax
    mov dword ptr [boot_pml4 + 4], 0

    mov eax, cr4
    or eax, 0x20                        /* PAE */
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xC0000080                 /* EFER */
    rdmsr
    or eax, 0x100                       /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000001                  /* PG | PE */
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    mov eax, 0x08
    push eax
    mov eax, offset long_entry
    push eax
    retf

    .code64
long_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top

    /* SSE: CR0.EM=0, CR0.MP=1; CR4.OSFXSR | CR4.OSXMMEXCPT. */
    mov rax, cr0
    and rax, ~(1 << 2)
    or rax, (1 << 1)
    mov cr0, rax
    mov rax, cr4
    or rax, (3 << 9)
    mov cr4, rax
    fninit

    mov edi, edi                        /* zero-extend the start_info address */
    xor ebp, ebp
    call {kmain}
4:
    hlt
    jmp 4b

    .section .rodata.boot_gdt, "a"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF            /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .p2align 12
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4

    .global boot_stack_top
boot_stack_bottom:
    .skip {stack_size}
boot_stack_top:
    .text
    "#,
    kmain = sym crate::kmain,
    stack_size = const BOOT_STACK_SIZE,
);

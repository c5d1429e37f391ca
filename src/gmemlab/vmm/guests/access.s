# gmemlab guest_access: one guest load or store, the way gmemlab's model
# describes it (docs/CASES.md, "Guest accesses").  64-bit mode, CPL 0.
#
# In (set through KVM_SET_REGS by gmemlab.host.guest):
#   rsi  where to copy from   rdi  where to copy to   rcx  how many bytes
# A load copies from the accessed range to the runner's buffer, a store from
# the buffer to the accessed range; both addresses have the same low three
# bits, so the test of %sil below chooses the widths for the accessed range.
#
# Widths: each step moves the largest of 8, 4, 2 and 1 bytes that is
# naturally aligned at the current address and no longer than what remains,
# with one mov, in ascending address order.  So no access crosses a page, an
# aligned 2-, 4- or 8-byte access is one access of that size, and the first
# exit (MMIO or memory fault) names the first step that the accessed memory
# cannot serve.
#
# Out: an out to DONE_PORT when every byte moved.  An exception instead jumps
# to its stub in `vectors` (16 bytes each, vector n at vectors + 16 n, which
# gmemlab puts in the IDT), which reports the vector on FAULT_PORT.

        .equ DONE_PORT, 0x0ff0
        .equ FAULT_PORT, 0x0ff1
        .equ VECTOR_STUB_SIZE, 16

        .text
        .code64
        .globl access
access:
        mov     %cr3, %rax              # the window's PTEs change between runs:
        mov     %rax, %cr3              # flush stale translations
step:
        test    %rcx, %rcx
        jz      done
        test    $7, %sil
        jnz     not8
        cmp     $8, %rcx
        jb      not8
        mov     (%rsi), %rax
        mov     %rax, (%rdi)
        add     $8, %rsi
        add     $8, %rdi
        sub     $8, %rcx
        jmp     step
not8:
        test    $3, %sil
        jnz     not4
        cmp     $4, %rcx
        jb      not4
        mov     (%rsi), %eax
        mov     %eax, (%rdi)
        add     $4, %rsi
        add     $4, %rdi
        sub     $4, %rcx
        jmp     step
not4:
        test    $1, %sil
        jnz     not2
        cmp     $2, %rcx
        jb      not2
        mov     (%rsi), %ax
        mov     %ax, (%rdi)
        add     $2, %rsi
        add     $2, %rdi
        sub     $2, %rcx
        jmp     step
not2:
        mov     (%rsi), %al
        mov     %al, (%rdi)
        inc     %rsi
        inc     %rdi
        dec     %rcx
        jmp     step
done:
        mov     $DONE_PORT, %dx
        out     %al, %dx
        hlt

        .balign VECTOR_STUB_SIZE
        .globl vectors
vectors:
        .set    vec, 0
        .rept   32
        .balign VECTOR_STUB_SIZE
        mov     $vec, %eax
        jmp     fault
        .set    vec, vec + 1
        .endr
        .globl vectors_end
vectors_end:
fault:
        mov     $FAULT_PORT, %dx
        out     %eax, %dx
        hlt

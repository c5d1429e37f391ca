# gmemlab compare's validation guest: ring a doorbell once per request.
# 64-bit mode, CPL 0, no interrupts.
#
# In (set through KVM_SET_REGS by gmemlab.compare.hostops):
#   rdi  the request table: 16 bytes per request (gpa: 8, size: 4, kind: 4)
#   rsi  the mailbox: where the guest puts the request it is asking for
#   rcx  how many requests
# For request i the guest copies its 16-byte entry into the mailbox and
# writes i to DOORBELL_PORT (one exit); the host reads the mailbox, carries
# out the request and resumes the guest.  After the last one, an out to
# DONE_PORT.  The guest's own work per request is a handful of instructions:
# on a kernel that emulates the guest, a few microseconds.

        .equ DOORBELL_PORT, 0x0fe0
        .equ DONE_PORT, 0x0fe1

        .text
        .code64
        .globl start
start:
        xor     %ebx, %ebx
        mov     $DOORBELL_PORT, %dx
next:
        cmp     %rcx, %rbx
        jae     done
        mov     (%rdi), %rax
        mov     %rax, (%rsi)
        mov     8(%rdi), %rax
        mov     %rax, 8(%rsi)
        mov     %ebx, %eax
        out     %eax, %dx
        add     $16, %rdi
        inc     %rbx
        jmp     next
done:
        mov     $DONE_PORT, %dx
        out     %al, %dx
        hlt

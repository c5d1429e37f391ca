# The exit benchmark's guest (bench/exits_bench.py and bench/exits_loop.c):
# an endless `out` to port OUT_PORT, one KVM_EXIT_IO per iteration.
# 16-bit real mode, loaded at guest physical 0 with CS = 0.

        .equ OUT_PORT, 0x10

        .text
        .code16
        .globl start
start:
        mov     $OUT_PORT, %dx
        xor     %ax, %ax
again:
        inc     %ax
        out     %ax, %dx
        jmp     again

/* LD_PRELOAD helper: answers the `cpuid` instructions that patch_cpuid.py turned into `int3; nop` in a copy of a
 * shared library, with every AVX-512 and VNNI feature bit cleared. A library that picks its kernels from cpuid at
 * load time (ONNX Runtime's MLAS) then runs its AVX2 kernels on an AVX-512 VNNI CPU, at native speed: this VM has no
 * CPUID faulting (arch_prctl(ARCH_SET_CPUID) answers ENODEV), so the instructions themselves have to trap. */
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

/* leaf 7 subleaf 0, EBX: AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL */
#define L7_EBX_AVX512 ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
/* leaf 7 subleaf 0, ECX: AVX512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
#define L7_ECX_AVX512 ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
/* leaf 7 subleaf 0, EDX: AVX512 4VNNIW, 4FMAPS, VP2INTERSECT, FP16; AMX BF16, TILE, INT8 */
#define L7_EDX_AVX512 ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
/* leaf 7 subleaf 1, EAX: AVX-VNNI, AVX512 BF16, AVX-IFMA; EDX: AVX-VNNI-INT8, AVX-VNNI-INT16 */
#define L71_EAX_MASK ((1u << 4) | (1u << 5) | (1u << 23))
#define L71_EDX_MASK ((1u << 4) | (1u << 10))

static volatile unsigned long traps;

static void on_trap(int sig, siginfo_t *info, void *raw) {
    ucontext_t *uc = (ucontext_t *)raw;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *at = (const unsigned char *)r[REG_RIP];
    (void)info;
    if (at[-1] != 0xCC || at[0] != 0x90) { /* not one of ours: die as SIGTRAP would */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    unsigned int leaf = (unsigned int)r[REG_RAX], sub = (unsigned int)r[REG_RCX];
    unsigned int a, b, c, d;
    __cpuid_count(leaf, sub, a, b, c, d);
    if (leaf == 7 && sub == 0) {
        b &= ~L7_EBX_AVX512;
        c &= ~L7_ECX_AVX512;
        d &= ~L7_EDX_AVX512;
    } else if (leaf == 7 && sub == 1) {
        a &= ~L71_EAX_MASK;
        d &= ~L71_EDX_MASK;
    }
    /* cpuid writes the low 32 bits and zeroes the high ones */
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 1; /* past the nop that filled cpuid's second byte */
    traps++;
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTRAP, &sa, 0);
}

unsigned long cpuid_mask_traps(void) { return traps; }

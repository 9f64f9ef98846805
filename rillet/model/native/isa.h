/* Which code path a kernel library compiles to, from the flags it is built with
 * (rillet/model/native/__init__.py's ISAS): RILLET_AVX512 (AVX-512 with VNNI, over AVX2),
 * RILLET_AVX2 (AVX2, FMA, F16C), RILLET_NEON (AArch64, with RILLET_NEON_DOTPROD where sdot is
 * enabled), else portable C. Each library reports its path by <name>_isa(). */
#ifndef RILLET_ISA_H
#define RILLET_ISA_H

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define RILLET_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define RILLET_AVX512 1
#endif
#endif

/* AArch64: NEON with fused multiply-add (every AArch64 CPU), and the int8 dot product (sdot) where the
 * flags enable it (Armv8.2's dotprod). The portable C path is built with +nosimd. */
#if defined(__aarch64__) && defined(__ARM_NEON) && defined(__ARM_FEATURE_FMA)
#define RILLET_NEON 1
#if defined(__ARM_FEATURE_DOTPROD)
#define RILLET_NEON_DOTPROD 1
#endif
#include <arm_neon.h>
#endif

/* Weights are read as a few streams at once (one per group of outputs), each crossing a page every
 * few blocks, where the hardware prefetcher starts over: the kernels ask for the bytes PREFETCH_AHEAD
 * beyond the block they multiply (a hint, with no effect on results; measured best of 1, 2.5 and
 * 5 KB ahead: a quarter off a layer's single-row product on Zen 5). A pass takes a run of groups side
 * by side, each group_bytes long; past a group's end the bytes asked for are those at the same place
 * in the group the next pass takes, next_pass bytes on (asking for the bytes just past the end, as
 * before, fetched the next group of this pass, already read, and left each pass to start on bytes
 * nobody had asked for: a sixth more tokens/s at batch 1 on Zen 5). */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 2560
#endif
static inline void prefetch_pass(const void *group, long offset, long group_bytes, long next_pass, long bytes) {
    long at = offset + PREFETCH_AHEAD;
    if (at >= group_bytes) at += next_pass - group_bytes;
    for (long line = 0; line < bytes; line += 64) __builtin_prefetch((const char *)group + at + line);
}

/* prefetch_pass for each of a pass's groups side by side, at the block offset bytes into each. */
static inline void prefetch_groups(const void *first, int groups, long group_bytes, long offset, long bytes) {
    for (int g = 0; g < groups; g++)
        prefetch_pass((const char *)first + g * group_bytes, offset, group_bytes, groups * group_bytes, bytes);
}

/* prefetch_groups for chunk c of a block's chunks: a block's bytes asked for a share at a time as its
 * chunks are multiplied, not in one burst at its start (a burst of 37 lines filled the queue of misses
 * and stalled the loads behind it). */
static inline void prefetch_chunk(const void *first, int groups, long group_bytes, long block_offset, long bytes,
                                  int c, int chunks) {
    const long share = (bytes + chunks - 1) / chunks;
    prefetch_groups(first, groups, group_bytes, block_offset + c * share, share);
}

/* The bytes at p itself: a batch's kernels unpack one tile of groups after another, each in a burst
 * between runs of arithmetic, and ask for the next tile's bytes as they unpack this one's. */
static inline void prefetch_here(const void *p, long bytes) {
    for (long line = 0; line < bytes; line += 64) __builtin_prefetch((const char *)p + line);
}

#if defined(RILLET_AVX512)
#define RILLET_ISA_NAME "avx512"
#elif defined(RILLET_AVX2)
#define RILLET_ISA_NAME "avx2"
#elif defined(RILLET_NEON_DOTPROD)
#define RILLET_ISA_NAME "neon_dotprod"
#elif defined(RILLET_NEON)
#define RILLET_ISA_NAME "neon"
#else
#define RILLET_ISA_NAME "scalar"
#endif

#endif

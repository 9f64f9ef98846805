/* The table of block kernels: which GGUF block types matmul.c multiplies, in which activation modes,
 * and what each packed block holds. rillet/model/native/__init__.py reads MATMUL_KERNELS (below, in
 * matmul.c) and rillet/model/block_packing.py packs the file's blocks in the layout described here.
 *
 * Every type's weight is a (q - bias) + b: an integer q of `bits` bits (unsigned, or signed for 8
 * bits), with a scale a and, for the types with an offset, b per sub-block of values, as the file's
 * own dequantization computes them in float32:
 *   Q4 (Q4_1): a = d, b = m       Q4_0: a = d, b = -8 d (computed: only d is packed)     Q8 (Q8_0): a = d
 *   Q5_0: a = d, bias 16        Q5_1: a = d, b = m
 *   Q4_K, Q5_K: a = d sc, b = -(dmin m)                           Q6_K: a = d sc, bias 32
 * with d, dmin, m float16 per block and sc, m 6-bit per sub-block (sc int8 for Q6_K); both products
 * are exact in float32.
 *
 * The activation modes:
 *   FLOAT32: x stays float32; a sub-block adds a * (sum of x (q - bias)) + b * (sum of x) to an
 *       output: the file's exact weights.
 *   INT8: each block of 32 values of a row of x is rounded to dx = max|x| / 127, xq = round(x / dx)
 *       in -127..127, sx = dx * sum(xq); a sub-block adds (a dx) * sum((q - bias) xq) + b sx, the
 *       integer sum exact: llama.cpp's way, faster and not exact.
 *   INT8X2: each block of the type's own block_values of a row of x is rounded twice, x = dx1 xq1 +
 *       dx2 xq2 + e: xq1 as in INT8, then the rest r = x - dx1 xq1 (one fma) rounded the same way to
 *       xq2 (so |e| <= max|r| / 254 <= max|x| / 64516: about 16 bits). Per block of the type, in
 *       integers, Aj = sum over its sub-blocks of sc * sum((q - bias) xqj) (sc = 1 for the types
 *       without sub-block scales), and the output adds d (dx1 A1 + dx2 A2) (one product, one fma), then
 *       the offset of the same rounded x, with xc = dx1 sum(xq1) + dx2 sum(xq2) per 32 values (computed
 *       once per row, with the roundings): m xc (Q4, Q5_1, Q4_0), or -dmin B with B = the sum over
 *       sub-blocks of m xc (Q4_K, Q5_K). The weight's two terms then see one x, so their errors cancel
 *       as in the file's own dequantized weight. As exact as float16 weights, at the speed of integer
 *       dot products.
 *
 * W is packed in groups of G = 16 output rows (N padded with zero rows to a multiple of G); for each
 * group its K / block_values blocks follow one another, each a header then its values. The header holds each field for the G rows side by side:
 *   d[G] (float16); Q4, Q5_1: m[G] (Q4_0: none, m = -8 d); Q4_K, Q5_K: dmin[G], sc[8][G], m[8][G] (uint8); Q6_K: sc[16][G] (int8).
 * The values, in FLOAT32 mode, sub-block after sub-block (S values each):
 *   8-bit q: S runs of G bytes, run k the rows' q of value k;
 *   else S / 2 pairs of G bytes (byte n of pair j: the low 4 bits of q(n, 2j) | those of q(n, 2j + 1) << 4);
 *   then for 5-bit q S / 8 runs of G bytes (bit t of byte n of run c: bit 4 of q(n, 8c + t)), for
 *   6-bit q S / 4 runs (bits 2t, 2t + 1 of byte n of run c: bits 4, 5 of q(n, 4c + t)).
 * In INT8 and INT8X2 mode, 32 values after 32 values:
 *   8-bit q: eight runs of 4G bytes (byte 4n + i of run t: q(n, 4t + i));
 *   else four runs of 4G bytes (byte 4n + i of run t: the low 4 bits of q(n, 4t + i) | those of
 *   q(n, 16 + 4t + i) << 4); then for 5-bit q 4G bytes (bit u of byte 4n + i: bit 4 of q(n, 4u + i)),
 *   for 6-bit q two halves of 4G bytes (bits 2t, 2t + 1 of byte 4n + i of half h: bits 4, 5 of
 *   q(n, 16h + 4t + i)).
 */
#ifndef RILLET_MATMUL_TABLE_H
#define RILLET_MATMUL_TABLE_H

#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))

/* The block types as packed: one per layout. */
enum block_type { Q4, Q4_0, Q8, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K };
enum activations { FLOAT32, INT8, INT8X2 };

/* X(type, kernel name, the GGUF types it multiplies): the entries, in each activation mode. */
#define BLOCK_TYPES(X)                                                                                     \
    X(Q4, "q4", "Q4_1") X(Q4_0, "q4_0", "Q4_0") X(Q8, "q8", "Q8_0") X(Q5_0, "q5_0", "Q5_0") X(Q5_1, "q5_1", "Q5_1")                \
    X(Q4_K, "q4_k", "Q4_K") X(Q5_K, "q5_k", "Q5_K") X(Q6_K, "q6_k", "Q6_K")

/* An entry of the table, MATMUL_KERNELS in matmul.c (rillet/model/native/__init__.py's _Entry reads it). */
typedef int (*matmul_fn)(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y);
typedef struct {
    const char *name;       /* "float32_q4_k", "int8_q4_k"... */
    const char *ggml_types; /* the GGUF block types it multiplies, space-separated */
    int32_t mode;           /* FLOAT32 or INT8 */
    int32_t group;          /* output rows packed together */
    matmul_fn function;
} matmul_kernel_t;

/* Per type: values per block and per sub-block (one scale a each, in FLOAT32 mode; INT8 mode takes
 * runs of 32 values, two sub-blocks of Q6_K), bits of q, its bias, whether it has an offset b, and
 * the header's bytes per row. */
INLINE int block_values(int t) { return t == Q4_K || t == Q5_K || t == Q6_K ? 256 : 32; }
INLINE int sub_values(int t) { return t == Q6_K ? 16 : 32; }
INLINE int bits(int t) { return t == Q4 || t == Q4_0 || t == Q4_K ? 4 : t == Q8 ? 8 : t == Q6_K ? 6 : 5; }
INLINE int bias(int t) { return t == Q5_0 ? 16 : t == Q6_K ? 32 : 0; }
INLINE int has_offset(int t) { return t == Q4 || t == Q4_0 || t == Q5_1 || t == Q4_K || t == Q5_K; }
/* Whether b is one per block (Q4, Q5_1: m in the header; Q4_0: -8 d, computed from d, exact in float32),
 * not per sub-block from the super-block's dmin (Q4_K, Q5_K). */
INLINE int block_offset(int t) { return t == Q4 || t == Q4_0 || t == Q5_1; }
INLINE int is_signed(int t) { return bias(t) != 0 || bits(t) == 8; } /* q - bias can be negative */
INLINE int row_header_bytes(int t) {
    return t == Q8 || t == Q5_0 || t == Q4_0 ? 2 : t == Q4 || t == Q5_1 ? 4 : t == Q6_K ? 18 : 20;
}

/* Rows packed together, and the bytes of a packed block (of block_values(t) values for GROUP rows). */
#define GROUP 16
INLINE int header_bytes(int mode, int t) { return 0 * mode + GROUP * row_header_bytes(t); } /* the same in every mode */
INLINE int sub_bytes(int t) { return sub_values(t) * GROUP * bits(t) / 8; } /* FLOAT32 mode: a sub-block's values */
INLINE int run_bytes(int t) { return 32 * GROUP * bits(t) / 8; }           /* INT8, INT8X2 mode: 32 values' */
INLINE int64_t block_bytes(int mode, int t) { /* the same in every mode */
    return header_bytes(mode, t) + block_values(t) * GROUP * bits(t) / 8;
}
INLINE int has_sub_scales(int t) { return t == Q4_K || t == Q5_K || t == Q6_K; }

/* Where the header fields of a group of G rows start: m (Q4, Q5_1) or dmin (Q4_K, Q5_K) after d,
 * sub-block s's sc and (Q4_K, Q5_K) m. */
INLINE int offset_field(int G) { return 2 * G; }
INLINE int scale_field(int t, int G, int s) { return t == Q6_K ? 2 * G + G * s : 4 * G + G * s; }
INLINE int min_field(int G, int s) { return 12 * G + G * s; }

/* RUN(t) for the four runs t of a half of 32 values (INT8 mode), unrolled where the 5- and 6-bit planes'
 * shifts then become constants (about 10% faster for them), not for 4- and 8-bit q: unrolled, GCC computes
 * every product first and spills them. */
#define FOR_EACH_RUN(type, RUN)                                                                            \
    if (bits(type) == 4 || bits(type) == 8) {                                                              \
        _Pragma("GCC unroll 1") for (int t = 0; t < 4; t++) RUN(t)                                         \
    } else {                                                                                               \
        _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++) RUN(t)                                         \
    }

/* In a group's packed blocks w: the block that holds value v0, the index s of v0's sub-block in it and
 * that sub-block (FLOAT32 mode); the block (its header) that holds run b of 32 values and that run's
 * values (INT8 mode). */
#define FLOAT_SUB_BLOCK(t, w, v0)                                                                          \
    const uint8_t *block = (w) + (v0) / block_values(t) * block_bytes(FLOAT32, t);                         \
    const int s = (int)((v0) % block_values(t) / sub_values(t));                                           \
    const uint8_t *sub = block + header_bytes(FLOAT32, t) + s * sub_bytes(t)
#define INT8_RUN(t, w, b)                                                                                  \
    const uint8_t *header = (w) + (b) / (block_values(t) / 32) * block_bytes(INT8, t);                     \
    const uint8_t *values = header + header_bytes(INT8, t) + (b) % (block_values(t) / 32) * run_bytes(t)

#endif

/* Attention straight over the paged KV cache: each query row (a decode token, or one token of a
 * prefill chunk with its own context length) attends to the cached tokens of its sequence,
 * reading keys and values block by block through the block table (no gathered copy) with an
 * online softmax. A row's result depends only on its query and its cached tokens.
 *
 * cache: [2, num_blocks, block_size, num_kv_heads, head_dim] (keys, then values), float32
 *        (the _f32 entry point) or float16 (_f16); arithmetic is float32 either way.
 * q, out: [rows, num_heads, head_dim] float32; block_tables: [rows, table_width] int64 (the
 *        argument names say seqs: for decode each row is one sequence)
 * Query heads h * groups .. (h + 1) * groups - 1 share kv head h (grouped-query attention).
 * window > 0: a sliding window, each row sees only its last `window` tokens (itself included);
 *        blocks wholly before a row's window are not read for it.
 * Returns 0, or -1 when a size is beyond the limits below or memory runs out (the caller falls
 * back). Work is split by rows, up to 16 of one sequence together; where rows are few, also by
 * partition of the context and by kv head (see PART_TOKENS); each job reads its blocks in order.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADS 64
#define MAX_HEAD_DIM 256
#define MAX_BLOCK_SIZE 64
#define NEG_HUGE (-1e30f)
#define ROWS_PER_TASK 16
#define JOBS_PER_THREAD 2 /* where tasks are few: jobs a thread takes at least, of runs of kv heads */
#define AHEAD_RUN_BYTES 1024 /* a job's heads, a token, from which it reads ahead in lying order */
#define GROUP_SCORES_STRIDE (MAX_BLOCK_SIZE + 16)

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Asks for row t of the next block (dim float16 values), the row a later call reads for this head. */
static inline __attribute__((always_inline)) void prefetch_half_row(const _Float16 *next, int64_t t, int64_t stride,
                                                                    int64_t dim) {
    for (int64_t line = 0; line < dim * 2; line += 64) __builtin_prefetch((const char *)(next + t * stride) + line);
}

/* One block's float16 rows of one kv head, converted to float32 in a dense buffer; each row's
 * counterpart in the next block (next_rows of them) asked for as it goes. */
static inline __attribute__((always_inline)) void load_half_rows(float *restrict dst, const _Float16 *src, int64_t rows, int64_t stride,
                                  int64_t dim, const _Float16 *next, int64_t next_rows) {
    for (int64_t t = 0; t < rows; t++) {
        const _Float16 *row = src + t * stride;
        if (t < next_rows) prefetch_half_row(next, t, stride, dim);
        int64_t d = 0;
#if defined(__AVX512F__)
        for (; d + 16 <= dim; d += 16)
            _mm512_storeu_ps(dst + t * dim + d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + d))));
#endif
#if defined(__F16C__)
        for (; d + 8 <= dim; d += 8)
            _mm256_storeu_ps(dst + t * dim + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + d))));
#endif
        for (; d < dim; d++) dst[t * dim + d] = (float)row[d];
    }
}

#if defined(__AVX512F__)
/* Sixteen values of a row of keys or values from element i: float32, or float16 converted (exactly). */
static inline __attribute__((always_inline)) __m512 load_row16(const void *row, int64_t i, int half) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const _Float16 *)row + i)))
                : _mm512_loadu_ps((const float *)row + i);
}
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* Eight values of a row of keys or values from element i, as load_row16. */
static inline __attribute__((always_inline)) __m256 load_row8(const void *row, int64_t i, int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const _Float16 *)row + i)))
                : _mm256_loadu_ps((const float *)row + i);
}
/* Where float16 rows may be read in place, instead of from a converted copy: the head sizes whose rows
 * block_scores and block_values take in whole registers (AVX-512, or AVX2 with F16C). */
#define READS_HALF_ROWS(dim) ((dim) % 64 == 0)
#else
#define READS_HALF_ROWS(dim) 0
#endif

/* scores[t] = scale * (q . k_t) for the n rows of a block (rows row_stride elements apart): float32, or
 * float16 (half, only where READS_HALF_ROWS). */
static inline __attribute__((always_inline)) void block_scores_of(const float *q, const void *keys, int half,
                                                                   int64_t row_stride, int64_t n, int64_t dim,
                                                                   float scale, float *scores) {
    const float *k = (const float *)keys;
    (void)half; /* float16 rows come only where READS_HALF_ROWS, to the vector loops below */
#if defined(__AVX512F__)
    if (dim % 16 == 0) {
        /* Sixteen rows at a time: each row's products in one register (its dim / 16 parts fused in
         * order), then one tree of shuffles and adds turns the sixteen registers into one vector of
         * their sixteen sums, which the scale multiplies. Past the last row, the last row is read
         * again and its scores are never used. */
        for (int64_t t = 0; t < n; t += 16) {
            __m512 p[16];
#pragma GCC unroll 16 /* all sixteen sums in registers */
            for (int u = 0; u < 16; u++) {
                const int64_t at = (t + u < n ? t + u : n - 1) * row_stride;
                p[u] = _mm512_mul_ps(_mm512_loadu_ps(q), load_row16(keys, at, half));
                for (int64_t d = 16; d < dim; d += 16) p[u] = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load_row16(keys, at + d, half), p[u]);
            }
            /* Pairs of rows: lanes added in twos, then fours, eights and sixteens; each level halves
             * the registers and keeps every row's partial sums apart. */
            __m512 a[8], b[4], c[2];
            for (int u = 0; u < 8; u++)
                a[u] = _mm512_add_ps(_mm512_unpacklo_ps(p[2 * u], p[2 * u + 1]), _mm512_unpackhi_ps(p[2 * u], p[2 * u + 1]));
            for (int u = 0; u < 4; u++) {
                const __m512d x = _mm512_castps_pd(a[2 * u]), y = _mm512_castps_pd(a[2 * u + 1]);
                b[u] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
            }
            for (int u = 0; u < 2; u++)
                c[u] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * u], b[2 * u + 1], 0x88),
                                     _mm512_shuffle_f32x4(b[2 * u], b[2 * u + 1], 0xdd));
            const __m512 sums = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
            _mm512_storeu_ps(scores + t, _mm512_mul_ps(sums, _mm512_set1_ps(scale))); /* lane j: row t + j */
        }
        return;
    }
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    if (dim % 8 == 0) {
        /* Eight rows at a time, as eight independent fma chains; then one tree of horizontal adds
         * gives their eight dot products in one vector. Past the last row, the last row is read
         * again and its scores are never used. */
        for (int64_t t = 0; t < n; t += 8) {
            int64_t rows[8];
            for (int u = 0; u < 8; u++) rows[u] = (t + u < n ? t + u : n - 1) * row_stride;
            __m256 p[8];
            for (int u = 0; u < 8; u++) p[u] = _mm256_setzero_ps();
            for (int64_t d = 0; d < dim; d += 8) {
                const __m256 qd = _mm256_loadu_ps(q + d);
#pragma GCC unroll 8
                for (int u = 0; u < 8; u++) p[u] = _mm256_fmadd_ps(qd, load_row8(keys, rows[u] + d, half), p[u]);
            }
            const __m256 h01 = _mm256_hadd_ps(p[0], p[1]), h23 = _mm256_hadd_ps(p[2], p[3]);
            const __m256 h45 = _mm256_hadd_ps(p[4], p[5]), h67 = _mm256_hadd_ps(p[6], p[7]);
            const __m256 a = _mm256_hadd_ps(h01, h23), b = _mm256_hadd_ps(h45, h67);
            const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
            _mm256_storeu_ps(scores + t, _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
        }
        return;
    }
#endif
    for (int64_t t = 0; t < n; t++) {
        float dot = 0.0f;
        for (int64_t d = 0; d < dim; d++) dot += q[d] * k[t * row_stride + d];
        scores[t] = dot * scale;
    }
}

/* a += sum over the block's rows t of weights[t] * v_t (rows as in block_scores). */
static inline __attribute__((always_inline)) void block_values_of(float *a, const float *weights, const void *values,
                                                                   int half, int64_t row_stride, int64_t n, int64_t dim) {
    const float *v = (const float *)values;
    (void)half;
#if defined(__AVX512F__)
    if (dim % 64 == 0) {
        for (int64_t d0 = 0; d0 < dim; d0 += 64) { /* 4 accumulators in registers per pass over the rows */
            __m512 acc[4];
            for (int j = 0; j < 4; j++) acc[j] = _mm512_loadu_ps(a + d0 + 16 * j);
            for (int64_t t = 0; t < n; t++) {
                const __m512 w = _mm512_set1_ps(weights[t]);
                for (int j = 0; j < 4; j++)
                    acc[j] = _mm512_fmadd_ps(w, load_row16(values, t * row_stride + d0 + 16 * j, half), acc[j]);
            }
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(a + d0 + 16 * j, acc[j]);
        }
        return;
    }
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    if (dim % 64 == 0) {
        for (int64_t d0 = 0; d0 < dim; d0 += 64) { /* 8 accumulators in registers per pass over the rows */
            /* named, not an array: as an array GCC copied them through the stack at every call */
            __m256 a0 = _mm256_loadu_ps(a + d0), a1 = _mm256_loadu_ps(a + d0 + 8), a2 = _mm256_loadu_ps(a + d0 + 16);
            __m256 a3 = _mm256_loadu_ps(a + d0 + 24), a4 = _mm256_loadu_ps(a + d0 + 32), a5 = _mm256_loadu_ps(a + d0 + 40);
            __m256 a6 = _mm256_loadu_ps(a + d0 + 48), a7 = _mm256_loadu_ps(a + d0 + 56);
            for (int64_t t = 0; t < n; t++) {
                const __m256 w = _mm256_broadcast_ss(weights + t);
                const int64_t at = t * row_stride + d0;
                a0 = _mm256_fmadd_ps(w, load_row8(values, at, half), a0);
                a1 = _mm256_fmadd_ps(w, load_row8(values, at + 8, half), a1);
                a2 = _mm256_fmadd_ps(w, load_row8(values, at + 16, half), a2);
                a3 = _mm256_fmadd_ps(w, load_row8(values, at + 24, half), a3);
                a4 = _mm256_fmadd_ps(w, load_row8(values, at + 32, half), a4);
                a5 = _mm256_fmadd_ps(w, load_row8(values, at + 40, half), a5);
                a6 = _mm256_fmadd_ps(w, load_row8(values, at + 48, half), a6);
                a7 = _mm256_fmadd_ps(w, load_row8(values, at + 56, half), a7);
            }
            _mm256_storeu_ps(a + d0, a0), _mm256_storeu_ps(a + d0 + 8, a1), _mm256_storeu_ps(a + d0 + 16, a2);
            _mm256_storeu_ps(a + d0 + 24, a3), _mm256_storeu_ps(a + d0 + 32, a4), _mm256_storeu_ps(a + d0 + 40, a5);
            _mm256_storeu_ps(a + d0 + 48, a6), _mm256_storeu_ps(a + d0 + 56, a7);
        }
        return;
    }
#endif
    for (int64_t t = 0; t < n; t++)
        for (int64_t d = 0; d < dim; d++) a[d] += weights[t] * v[t * row_stride + d];
}

/* block_scores_of and block_values_of as functions of their own, one per common head size and kind of
 * row: called from attend's parallel region, inlined among its many live values, their sums did not
 * stay in registers (each FMA a load, an FMA and a store). block_scores and block_values choose one;
 * inlined where head_dim and half are literals, they choose at compile time. */
#define BLOCK_KERNELS(D, HALF, NAME)                                                                          \
    static __attribute__((noinline)) void block_scores_##NAME(const float *q, const void *k, int64_t row_stride, \
                                                              int64_t n, float scale, float *scores) {        \
        block_scores_of(q, k, HALF, row_stride, n, D, scale, scores);                                        \
    }                                                                                                         \
    static __attribute__((noinline)) void block_values_##NAME(float *a, const float *w, const void *v,       \
                                                              int64_t row_stride, int64_t n) {               \
        block_values_of(a, w, v, HALF, row_stride, n, D);                                                     \
    }
BLOCK_KERNELS(64, 0, 64)
BLOCK_KERNELS(64, 1, 64_half)
BLOCK_KERNELS(128, 0, 128)
BLOCK_KERNELS(128, 1, 128_half)
BLOCK_KERNELS(256, 0, 256)
BLOCK_KERNELS(256, 1, 256_half)

static __attribute__((noinline)) void block_scores_any(const float *q, const void *k, int half, int64_t row_stride,
                                                       int64_t n, int64_t dim, float scale, float *scores) {
    block_scores_of(q, k, half, row_stride, n, dim, scale, scores);
}

static __attribute__((noinline)) void block_values_any(float *a, const float *w, const void *v, int half,
                                                       int64_t row_stride, int64_t n, int64_t dim) {
    block_values_of(a, w, v, half, row_stride, n, dim);
}

static inline __attribute__((always_inline)) void block_scores(const float *q, const void *k, int half,
                                                               int64_t row_stride, int64_t n, int64_t dim,
                                                               float scale, float *scores) {
    if (dim == 64) (half ? block_scores_64_half : block_scores_64)(q, k, row_stride, n, scale, scores);
    else if (dim == 128) (half ? block_scores_128_half : block_scores_128)(q, k, row_stride, n, scale, scores);
    else if (dim == 256) (half ? block_scores_256_half : block_scores_256)(q, k, row_stride, n, scale, scores);
    else block_scores_any(q, k, half, row_stride, n, dim, scale, scores);
}

static inline __attribute__((always_inline)) void block_values(float *a, const float *w, const void *v, int half,
                                                               int64_t row_stride, int64_t n, int64_t dim) {
    if (dim == 64) (half ? block_values_64_half : block_values_64)(a, w, v, row_stride, n);
    else if (dim == 128) (half ? block_values_128_half : block_values_128)(a, w, v, row_stride, n);
    else if (dim == 256) (half ? block_values_256_half : block_values_256)(a, w, v, row_stride, n);
    else block_values_any(a, w, v, half, row_stride, n, dim);
}

#if defined(__AVX512F__)
/* block_values for the G query heads of one kv head at once, its float16 rows of values read in place
 * (each converted once for the G heads): a + h * dim += sum over t of weights[h * stride + t] * v_t, for
 * h < G. Each head's sums are block_values' steps in block_values' order, so the results are its own. */
static inline __attribute__((always_inline)) void group_values_of(float *a, const float *weights, int64_t stride, int G,
                                                                  const _Float16 *v, int64_t row_stride, int64_t n,
                                                                  int64_t dim) {
    for (int64_t d0 = 0; d0 < dim; d0 += 64) {
        __m512 acc[4][4];
        for (int h = 0; h < G; h++)
            for (int j = 0; j < 4; j++) acc[h][j] = _mm512_loadu_ps(a + h * dim + d0 + 16 * j);
        for (int64_t t = 0; t < n; t++) {
            __m512 row[4];
            for (int j = 0; j < 4; j++) row[j] = load_row16(v, t * row_stride + d0 + 16 * j, 1);
            for (int h = 0; h < G; h++) {
                const __m512 w = _mm512_set1_ps(weights[h * stride + t]);
                for (int j = 0; j < 4; j++) acc[h][j] = _mm512_fmadd_ps(w, row[j], acc[h][j]);
            }
        }
        for (int h = 0; h < G; h++)
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(a + h * dim + d0 + 16 * j, acc[h][j]);
    }
}

#define GROUP_VALUES(D, G)                                                                                    \
    static __attribute__((noinline)) void group_values_##D##_##G(float *a, const float *weights, int64_t stride, \
                                                                 const _Float16 *v, int64_t row_stride, int64_t n) { \
        group_values_of(a, weights, stride, G, v, row_stride, n, D);                                          \
    }
GROUP_VALUES(64, 2)
GROUP_VALUES(64, 3)
GROUP_VALUES(64, 4)
GROUP_VALUES(128, 2)
GROUP_VALUES(128, 3)
GROUP_VALUES(128, 4)
GROUP_VALUES(256, 2)
GROUP_VALUES(256, 3)
GROUP_VALUES(256, 4)
/* Where group_values runs: the head sizes and query heads a kv head it has a copy for. */
#define GROUPS_VALUES_IN_PLACE(dim, groups) (((dim) == 64 || (dim) == 128 || (dim) == 256) && (groups) >= 2 && (groups) <= 4)

static inline __attribute__((always_inline)) void group_values(float *a, const float *weights, int64_t stride, int G,
                                                               const _Float16 *v, int64_t row_stride, int64_t n,
                                                               int64_t dim) {
#define CASE(D)                                                                                               \
    if (dim == D) {                                                                                           \
        if (G == 2) group_values_##D##_2(a, weights, stride, v, row_stride, n);                               \
        else if (G == 3) group_values_##D##_3(a, weights, stride, v, row_stride, n);                          \
        else group_values_##D##_4(a, weights, stride, v, row_stride, n);                                      \
        return;                                                                                               \
    }
    CASE(64) CASE(128) CASE(256)
#undef CASE
}
#else
#define GROUPS_VALUES_IN_PLACE(dim, groups) 0
#endif

#if defined(__AVX512F__)
/* e^x in each lane, within about 2 ulp for x in [-87.3, 88.7] (x below: about 1e-38, not 0; above:
 * e^88.7): x = n ln 2 + r with |r| <= ln 2 / 2, e^r by Cephes' degree-6 polynomial, 2^n by vscalefps. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.72283f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x); /* ln 2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif

#if defined(__AVX512F__)
/* softmax_step (below) on AVX-512, for G (1 to 4) query heads of one kv head at once: their scores
 * stride floats apart, their values so far dim apart (dim a multiple of 16), their maxes and sums side
 * by side. A head's operations and their order are the same whatever G, so are its results, bit for
 * bit; with G > 1 the heads' chains of dependent steps (a max, then exponentials, then a sum)
 * interleave, where one head at a time left the core waiting on each. */
static inline __attribute__((always_inline)) void group_softmax_of(float *scores, int64_t stride, int G, int64_t n,
                                                                   float *restrict acc, int64_t dim,
                                                                   float *running_max, float *running_sum) {
    __m512 most[4], sums[4];
    float block_max[4], correction[4];
    for (int h = 0; h < G; h++) most[h] = _mm512_set1_ps(running_max[h]), sums[h] = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t += 16) {
        const __mmask16 valid = n - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - t)) - 1);
        for (int h = 0; h < G; h++)
            most[h] = _mm512_mask_max_ps(most[h], valid, most[h], _mm512_maskz_loadu_ps(valid, scores + h * stride + t));
    }
    for (int h = 0; h < G; h++) block_max[h] = _mm512_reduce_max_ps(most[h]);
    for (int64_t t = 0; t < n; t += 16) {
        const __mmask16 valid = n - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - t)) - 1);
        for (int h = 0; h < G; h++) {
            float *row = scores + h * stride + t;
            const __m512 weights = _mm512_maskz_mov_ps(
                valid, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, row), _mm512_set1_ps(block_max[h]))));
            _mm512_mask_storeu_ps(row, valid, weights);
            sums[h] = _mm512_add_ps(sums[h], weights);
        }
    }
    for (int h = 0; h < G; h++) correction[h] = _mm512_cvtss_f32(exp16(_mm512_set1_ps(running_max[h] - block_max[h])));
    for (int h = 0; h < G; h++) {
        const __m512 c = _mm512_set1_ps(correction[h]);
        for (int64_t d = 0; d < dim; d += 16)
            _mm512_storeu_ps(acc + h * dim + d, _mm512_mul_ps(c, _mm512_loadu_ps(acc + h * dim + d)));
    }
    for (int h = 0; h < G; h++) {
        running_sum[h] = running_sum[h] * correction[h] + _mm512_reduce_add_ps(sums[h]);
        running_max[h] = block_max[h];
    }
}
#endif

/* The online softmax's step for one block's n scores of a row: its running max and sum brought up to
 * date, its values so far (acc, dim floats) scaled by the change of max, and the scores turned into
 * their weights, in place. */
#if defined(__AVX512F__)
#define SOFTMAX_STEP_INLINE __attribute__((noinline))
#else /* the scalar step, inlined where it is called, as it was written there before (measured: 5% faster on AVX2) */
#define SOFTMAX_STEP_INLINE inline __attribute__((always_inline))
#endif
static SOFTMAX_STEP_INLINE void softmax_step(float *scores, int64_t n, float *restrict acc, int64_t dim,
                                             float *running_max, float *running_sum) {
#if defined(__AVX512F__)
    if (dim % 16 == 0) { /* sixteen scores a register: no call per exponential, no scalar loops */
        group_softmax_of(scores, 0, 1, n, acc, dim, running_max, running_sum);
        return;
    }
#endif
    float block_max = *running_max;
    for (int64_t t = 0; t < n; t++) block_max = scores[t] > block_max ? scores[t] : block_max;
    const float correction = expf(*running_max - block_max);
    float sum = *running_sum * correction;
    for (int64_t d = 0; d < dim; d++) acc[d] *= correction;
    for (int64_t t = 0; t < n; t++) scores[t] = expf(scores[t] - block_max);
    for (int64_t t = 0; t < n; t++) sum += scores[t];
    *running_max = block_max;
    *running_sum = sum;
}

#if defined(__AVX512F__)
#define GROUP_SOFTMAX(G)                                                                                      \
    static __attribute__((noinline)) void group_softmax_##G(float *scores, int64_t stride, int64_t n, float *acc, \
                                                            int64_t dim, float *running_max, float *running_sum) { \
        group_softmax_of(scores, stride, G, n, acc, dim, running_max, running_sum);                           \
    }
GROUP_SOFTMAX(2)
GROUP_SOFTMAX(3)
GROUP_SOFTMAX(4)

/* group_softmax_of for G of 2 to 4 (where group_values runs), dim a multiple of 16. */
static inline __attribute__((always_inline)) void group_softmax(float *scores, int64_t stride, int G, int64_t n,
                                                                float *acc, int64_t dim, float *running_max,
                                                                float *running_sum) {
    if (G == 2) group_softmax_2(scores, stride, n, acc, dim, running_max, running_sum);
    else if (G == 3) group_softmax_3(scores, stride, n, acc, dim, running_max, running_sum);
    else group_softmax_4(scores, stride, n, acc, dim, running_max, running_sum);
}
#endif

/* A row's context is taken in partitions of PART_TOKENS tokens (whole blocks), fixed by token
 * position: within a partition, an online softmax over its blocks; across partitions, fold_partition
 * in order. Where rows are few, a row's partitions run as separate jobs and are folded afterwards;
 * where they are many, one job runs them one after another and folds as it goes. Both fold the same
 * partitions in the same order with the same code, so a row's result does not depend on which. */
#define PART_TOKENS 256
#define MAX_PARTIAL_FLOATS (4 << 20) /* beyond this (16 MB) a step's partitions run in one job each */

/* Folds one partition's softmax state (its max, its sum of exponentials, its unnormalised values)
 * into a row's running total. Not inlined: one body of code for both ways of running partitions. */
static __attribute__((noinline)) void fold_partition(float *restrict total, float *total_max, float *total_sum,
                                                     const float *restrict values, float max, float sum, int64_t dim) {
    if (*total_max == NEG_HUGE && *total_sum == 0.0f) { /* the first: taken as it is */
        memcpy(total, values, dim * sizeof(float));
        *total_max = max, *total_sum = sum;
        return;
    }
    const float new_max = max > *total_max ? max : *total_max;
    const float a = expf(*total_max - new_max), b = expf(max - new_max);
    *total_sum = *total_sum * a + sum * b;
    for (int64_t d = 0; d < dim; d++) total[d] = total[d] * a + values[d] * b;
    *total_max = new_max;
}

static __attribute__((noinline)) void finish_row(float *restrict out, const float *restrict total, float sum, int64_t dim) {
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int64_t d = 0; d < dim; d++) out[d] = total[d] * inv;
}

/* What every job of one call shares (attend below works it out): the call's arguments and sizes, the
 * tasks, and how their work is split into jobs. */
typedef struct {
    const float *q;
    const void *cache;
    const int64_t *block_tables, *context_lens;
    float *out;
    int64_t num_heads, groups, token_stride, block_stride, values_offset, element, part, block_size, table_width;
    float scale;
    int64_t window;
    int half, split;
    const int64_t *task_start, *first_part, *parts, *unit_start, *partial_start;
    int64_t heads_per_job, jobs_per_unit, lanes, stride;
    float *partials;
} plan_t;

/* A thread's buffers: the running sums of a job's rows in this partition and in all its partitions so
 * far, [row][query head of the job][d], and one block's keys and values of one kv head, converted. */
typedef struct {
    float *acc, *running_max, *running_sum, *total, *total_max, *total_sum, *keys, *values;
} buffers_t;

/* One job: a task's rows, a run of kv heads (with the query heads that share each) and a run of
 * partitions (see attend). Inlined where attend's parallel region calls it with head_dim a literal,
 * so that each common head size gets loops of its exact length: inside the region, attend's own
 * head_dim is a variable (OpenMP passes the region its values through memory). */
static inline __attribute__((always_inline)) void run_job(const plan_t *plan, const buffers_t *b, int64_t job,
                                                          const int64_t head_dim) {
    const float *q = plan->q;
    const void *cache = plan->cache;
    const int64_t *block_tables = plan->block_tables, *context_lens = plan->context_lens;
    float *out = plan->out;
    const int64_t num_heads = plan->num_heads, groups = plan->groups, token_stride = plan->token_stride;
    const int64_t block_stride = plan->block_stride, values_offset = plan->values_offset, element = plan->element;
    const int64_t part = plan->part, block_size = plan->block_size, table_width = plan->table_width;
    const float scale = plan->scale;
    const int64_t window = plan->window;
    const int half = plan->half, split = plan->split;
    const int64_t *task_start = plan->task_start, *first_part = plan->first_part, *parts = plan->parts;
    const int64_t *unit_start = plan->unit_start, *partial_start = plan->partial_start;
    const int64_t heads_per_job = plan->heads_per_job, jobs_per_unit = plan->jobs_per_unit, lanes = plan->lanes;
    const int64_t stride = plan->stride;
    float *partials = plan->partials;
    float *acc = b->acc, *running_max = b->running_max, *running_sum = b->running_sum, *total = b->total;
    float *total_max = b->total_max, *total_sum = b->total_sum, *keys = b->keys, *values = b->values;
    float scores[MAX_BLOCK_SIZE + 8];
#if defined(__AVX512F__)
    float group_scores[4 * GROUP_SCORES_STRIDE]; /* each query head's scores, for group_values */
#endif
    const int64_t unit = job / jobs_per_unit, h0 = job % jobs_per_unit * heads_per_job;
    int64_t task = unit;
    if (split) /* the task whose units hold this one */
        for (task = 0; unit_start[task + 1] <= unit; task++) {}
    const int64_t first = task_start[task], rows = task_start[task + 1] - first;
    const int64_t k0 = split ? unit - unit_start[task] : 0, k1 = split ? k0 + 1 : parts[task];
    const int one_part = k1 - k0 == 1 && !split; /* then the partition's results are the row's */
    int64_t longest = 0, earliest = INT64_MAX;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < lanes && !one_part; i++) {
            total_max[r * lanes + i] = NEG_HUGE;
            total_sum[r * lanes + i] = 0.0f;
            for (int64_t d = 0; d < head_dim; d++) total[(r * lanes + i) * head_dim + d] = 0.0f;
        }
        longest = context_lens[first + r] > longest ? context_lens[first + r] : longest;
        const int64_t from = window > 0 && context_lens[first + r] > window ? context_lens[first + r] - window : 0;
        earliest = from < earliest ? from : earliest;
    }
    const int64_t *table = block_tables + first * table_width;
    for (int64_t k = k0; k < k1; k++) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < lanes; i++) {
                running_max[r * lanes + i] = NEG_HUGE;
                running_sum[r * lanes + i] = 0.0f;
                for (int64_t d = 0; d < head_dim; d++) acc[(r * lanes + i) * head_dim + d] = 0.0f;
            }
        const int64_t part_begin = (first_part[task] + k) * part;
        const int64_t begin = earliest > part_begin ? earliest / block_size * block_size : part_begin;
        const int64_t end = part_begin + part < longest ? part_begin + part : longest;
        /* The job's last token: the next block is prefetched only within the job's own work. */
        const int64_t job_end = (first_part[task] + k1) * part < longest ? (first_part[task] + k1) * part : longest;
        for (int64_t start = begin; start < end; start += block_size) {
            const int64_t block = table[start / block_size];
            const int64_t n = longest - start < block_size ? longest - start : block_size;
            /* The next block's keys and values are asked for a little at a time as this block's are read:
             * in one burst per block they stalled the reads (a sixth slower at batch 64). */
            const int64_t after = start + block_size;
            int64_t next_block = after < job_end ? table[after / block_size] : -1;
            const int64_t next_n = longest - after < block_size ? longest - after : block_size;
            /* A job whose heads lie in runs of AHEAD_RUN_BYTES or more a token asks for the next block's
             * lines in the order they lie (token by token, each token's run), a share of them before
             * each head; other jobs, head by head as they read (below). In lying order, a 1.7B model's
             * lone row (32 kv heads, 4 KB a token) read a cold cache 1.4-1.8x faster at 600-1,000 tokens,
             * and 8 and 64 rows 1.3-1.6x; 64 rows of SmolLM2-135M's 3 heads (384 bytes) 0.90-0.94x. */
            const int64_t run_lines = (heads_per_job * head_dim * element + 63) / 64; /* per token */
            const char *ahead = NULL;
            int64_t ahead_lines = 0;
            if (next_block >= 0 && heads_per_job > 1 && heads_per_job * head_dim * element >= AHEAD_RUN_BYTES) {
                ahead = (const char *)cache + (next_block * block_stride + h0 * head_dim) * element;
                ahead_lines = next_n * run_lines;
                next_block = -1;
            }
            for (int64_t h = h0; h < h0 + heads_per_job; h++) {
                const int64_t offset = block * block_stride + h * head_dim;
                const int64_t share = h - h0;
                for (int64_t j = ahead_lines * share / heads_per_job; j < ahead_lines * (share + 1) / heads_per_job; j++) {
                    const char *line = ahead + ((j / run_lines) * token_stride * element + (j % run_lines) * 64);
                    __builtin_prefetch(line);
                    __builtin_prefetch(line + values_offset * element);
                }
                if (next_block >= 0 && !half) {
                    const char *next = (const char *)cache + (next_block * block_stride + h * head_dim) * element;
                    for (int64_t t = 0; t < next_n; t++)
                        for (int64_t line = 0; line < head_dim * element; line += 64) {
                            __builtin_prefetch(next + t * token_stride * element + line);
                            __builtin_prefetch(next + (values_offset + t * token_stride) * element + line);
                        }
                }
                /* Rows of keys and values: float32 read in place. float16 converted first, once for the
                 * task's rows and query heads; but read in place (converted as each is loaded) by a lone
                 * row with one query head per kv head, where READS_HALF_ROWS: for it a converted copy is
                 * read once, and writing it cost as much as the arithmetic (1.4x faster in place, on a
                 * 1.7B model's 32 heads; with 3 query heads a kv head, converting thrice was no faster). */
                const void *kb = (const float *)cache + offset, *vb = (const float *)kb + values_offset;
                int64_t row_stride = token_stride;
                const int in_place = half && rows == 1 && groups == 1 && READS_HALF_ROWS(head_dim);
                /* A lone row whose kv head serves 2 to 4 query heads (AVX-512): keys converted as below,
                 * values read in place once for all of them (group_values). */
                const int values_in_place = half && rows == 1 && GROUPS_VALUES_IN_PLACE(head_dim, groups);
                if (values_in_place) {
                    const _Float16 *hk = (const _Float16 *)cache + offset;
                    const _Float16 *next = (const _Float16 *)cache + (next_block < 0 ? 0 : next_block) * block_stride + h * head_dim;
                    const int64_t next_rows = next_block < 0 ? 0 : next_n;
                    load_half_rows(keys, hk, n, token_stride, head_dim, next, next_rows);
                    for (int64_t t = 0; t < next_rows; t++) prefetch_half_row(next + values_offset, t, token_stride, head_dim);
                    kb = keys, vb = hk + values_offset, row_stride = head_dim;
                } else if (in_place) {
                    const _Float16 *hk = (const _Float16 *)cache + offset;
                    kb = hk, vb = hk + values_offset;
                    if (next_block >= 0) { /* the next block's rows of this head, as load_half_rows asks for them */
                        const _Float16 *next = (const _Float16 *)cache + next_block * block_stride + h * head_dim;
                        for (int64_t t = 0; t < next_n; t++) {
                            prefetch_half_row(next, t, token_stride, head_dim);
                            prefetch_half_row(next + values_offset, t, token_stride, head_dim);
                        }
                    }
                } else if (half) {
                    const _Float16 *hk = (const _Float16 *)cache + offset;
                    const _Float16 *next = (const _Float16 *)cache + (next_block < 0 ? 0 : next_block) * block_stride + h * head_dim;
                    const int64_t next_rows = next_block < 0 ? 0 : next_n;
                    load_half_rows(keys, hk, n, token_stride, head_dim, next, next_rows);
                    load_half_rows(values, hk + values_offset, n, token_stride, head_dim, next + values_offset, next_rows);
                    kb = keys, vb = values, row_stride = head_dim;
                }
                for (int64_t r = 0; r < rows; r++) {
                    const int64_t len = context_lens[first + r];
                    const int64_t from = window > 0 && len > window ? len - window : 0; /* the row's first visible token */
                    if (start >= len || start + block_size <= from) continue;
                    const int64_t skip = from > start ? from - start : 0;
                    const int64_t rn = (len - start < block_size ? len - start : block_size) - skip;
                    const int64_t element_bytes = in_place ? 2 : 4;
                    const void *kr = (const char *)kb + skip * row_stride * element_bytes;
                    const void *vr = (const char *)vb + skip * row_stride * element_bytes;
                    const float *qs = q + ((first + r) * num_heads + h * groups) * head_dim;
#if defined(__AVX512F__)
                    if (values_in_place) {
                        const int64_t lane = r * lanes + (h - h0) * groups; /* the group's first */
                        for (int64_t i = 0; i < groups; i++)
                            block_scores(qs + i * head_dim, (const float *)kb + skip * head_dim, 0, head_dim, rn, head_dim,
                                         scale, group_scores + i * GROUP_SCORES_STRIDE);
                        group_softmax(group_scores, GROUP_SCORES_STRIDE, (int)groups, rn, acc + lane * head_dim, head_dim,
                                      running_max + lane, running_sum + lane);
                        group_values(acc + lane * head_dim, group_scores, GROUP_SCORES_STRIDE, (int)groups,
                                     (const _Float16 *)vb + skip * token_stride, token_stride, rn, head_dim);
                        continue;
                    }
#endif
                    for (int64_t i = 0; i < groups; i++) {
                        const int64_t lane = r * lanes + (h - h0) * groups + i;
                        block_scores(qs + i * head_dim, kr, in_place, row_stride, rn, head_dim, scale, scores);
                        softmax_step(scores, rn, acc + lane * head_dim, head_dim, running_max + lane, running_sum + lane);
                        block_values(acc + lane * head_dim, scores, vr, in_place, row_stride, rn, head_dim);
                    }
                }
            }
        }
        /* The partition's results: folded into the rows' totals here, or kept for the fold below. */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < lanes; i++) {
                const int64_t lane = r * lanes + i;
                if (split) {
                    float *p = partials + partial_start[task] +
                               ((r * parts[task] + k) * num_heads + h0 * groups + i) * stride;
                    memcpy(p, acc + lane * head_dim, head_dim * sizeof(float));
                    p[head_dim] = running_max[lane], p[head_dim + 1] = running_sum[lane];
                } else if (!one_part) {
                    fold_partition(total + lane * head_dim, total_max + lane, total_sum + lane,
                                   acc + lane * head_dim, running_max[lane], running_sum[lane], head_dim);
                }
            }
    }
    if (!split)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < lanes; i++)
                finish_row(out + ((first + r) * num_heads + h0 * groups + i) * head_dim,
                           (one_part ? acc : total) + (r * lanes + i) * head_dim,
                           (one_part ? running_sum : total_sum)[r * lanes + i], head_dim);
}

static inline __attribute__((always_inline)) int attend(
    const float *q, const void *cache, const int64_t *block_tables, const int64_t *context_lens, float *out,
    int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t num_blocks,
    int64_t block_size, int64_t table_width, float scale, int64_t window, int half) {
    const int64_t groups = num_heads / num_kv_heads;
    if (num_heads > MAX_HEADS || head_dim > MAX_HEAD_DIM || block_size > MAX_BLOCK_SIZE) return -1;
    const int64_t token_stride = num_kv_heads * head_dim;
    const int64_t block_stride = block_size * token_stride;
    const int64_t values_offset = num_blocks * block_stride;
    const int64_t element = half ? 2 : 4;
    const int64_t part = block_size * (PART_TOKENS / block_size > 0 ? PART_TOKENS / block_size : 1);
    const int64_t threads = omp_get_max_threads();

    /* Rows that share a block table (the tokens of one prefill chunk) are taken ROWS_PER_TASK
     * together, so that a float16 block is converted once for all of them. Per task: its first row,
     * its first partition and its partition count, and where its partial results go. */
    int64_t *task_start = malloc((size_t)(num_seqs + 1) * 5 * sizeof(int64_t));
    if (task_start == NULL) return -1;
    int64_t *first_part = task_start + num_seqs + 1, *parts = first_part + num_seqs + 1;
    int64_t *unit_start = parts + num_seqs + 1, *partial_start = unit_start + num_seqs + 1;
    int64_t tasks = 0;
    for (int64_t s = 0; s < num_seqs; s++) {
        const int64_t first = tasks ? task_start[tasks - 1] : -1;
        if (first < 0 || s - first >= ROWS_PER_TASK ||
            memcmp(block_tables + s * table_width, block_tables + first * table_width, table_width * sizeof(int64_t)))
            task_start[tasks++] = s;
    }
    task_start[tasks] = num_seqs;
    const int64_t stride = head_dim + 2; /* a partial result: its values, then its max and sum */
    int64_t units = 0, partial_floats = 0;
    for (int64_t t = 0; t < tasks; t++) {
        int64_t longest = 0, earliest = INT64_MAX;
        for (int64_t s = task_start[t]; s < task_start[t + 1]; s++) {
            const int64_t len = context_lens[s], from = window > 0 && len > window ? len - window : 0;
            longest = len > longest ? len : longest;
            earliest = from < earliest ? from : earliest;
        }
        first_part[t] = earliest / part;
        parts[t] = longest > earliest ? (longest + part - 1) / part - first_part[t] : 1;
        unit_start[t] = units, partial_start[t] = partial_floats;
        units += parts[t];
        partial_floats += (task_start[t + 1] - task_start[t]) * parts[t] * num_heads * stride;
    }
    unit_start[tasks] = units;

    /* A job is one task's rows, a run of kv heads (with the query heads that share each) and a run
     * of partitions. Many tasks: each job takes every kv head and every partition of its task, so a
     * block's keys and values of all heads (one run of memory) are read together. Few: each partition
     * is a job of its own, and the kv heads are split into as few runs as give each thread
     * JOBS_PER_THREAD jobs, so that a lone decode row spreads over the threads while each job still
     * reads a token's heads as one run (a run of one head a job, 128 bytes at every 4 KB of a 1.7B
     * model's cache, read it at 11-13 GB/s); its partitions' results are folded afterwards. Each row's
     * arithmetic is the same however its work is split (above). */
    const int split = tasks < 4 * threads && units > tasks && partial_floats <= MAX_PARTIAL_FLOATS;
    const int64_t spread = split ? units : tasks;
    int64_t heads_per_job = num_kv_heads;
    if (spread < 4 * threads)
        while (heads_per_job > 1 && !(num_kv_heads % heads_per_job == 0 &&
                                      spread * (num_kv_heads / heads_per_job) >= JOBS_PER_THREAD * threads))
            heads_per_job--;
    const int64_t jobs_per_unit = num_kv_heads / heads_per_job;
    const int64_t lanes = heads_per_job * groups; /* query heads a job computes */
    float *partials = split ? malloc(sizeof(float) * partial_floats) : NULL;
    if (split && partials == NULL) {
        free(task_start);
        return -1;
    }
    const plan_t plan = {q, cache, block_tables, context_lens, out, num_heads, groups, token_stride, block_stride,
                         values_offset, element, part, block_size, table_width, scale, window, half, split, task_start,
                         first_part, parts, unit_start, partial_start, heads_per_job, jobs_per_unit, lanes, stride,
                         partials};
    int failed = 0;
#pragma omp parallel
    {
        /* Each thread's buffers (buffers_t). */
        float *acc = malloc(sizeof(float) * ROWS_PER_TASK * lanes * head_dim);
        float *running_max = malloc(sizeof(float) * ROWS_PER_TASK * lanes);
        float *running_sum = malloc(sizeof(float) * ROWS_PER_TASK * lanes);
        float *total = malloc(sizeof(float) * ROWS_PER_TASK * lanes * head_dim);
        float *total_max = malloc(sizeof(float) * ROWS_PER_TASK * lanes);
        float *total_sum = malloc(sizeof(float) * ROWS_PER_TASK * lanes);
        float *keys = malloc(sizeof(float) * block_size * head_dim), *values = malloc(sizeof(float) * block_size * head_dim);
        const buffers_t buffers = {acc, running_max, running_sum, total, total_max, total_sum, keys, values};
        const int ok = acc != NULL && running_max != NULL && running_sum != NULL && total != NULL && total_max != NULL &&
                       total_sum != NULL && keys != NULL && values != NULL;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        const int64_t jobs = (split ? units : tasks) * jobs_per_unit;
#pragma omp for schedule(dynamic, 1)
        for (int64_t job = 0; job < jobs; job++) {
            if (!ok) continue;
            if (head_dim == 64) run_job(&plan, &buffers, job, 64);
            else if (head_dim == 128) run_job(&plan, &buffers, job, 128);
            else if (head_dim == 256) run_job(&plan, &buffers, job, 256);
            else run_job(&plan, &buffers, job, head_dim);
        }
        if (split) {
            /* Each row and query head: its partitions folded in order, as one job would have. */
#pragma omp for schedule(static)
            for (int64_t row_head = 0; row_head < num_seqs * num_heads; row_head++) {
                if (!ok) continue;
                const int64_t row = row_head / num_heads, head = row_head % num_heads;
                int64_t task = 0;
                while (task_start[task + 1] <= row) task++;
                float *sums = total; /* one lane of this thread's buffer */
                float max = NEG_HUGE, sum = 0.0f;
                for (int64_t d = 0; d < head_dim; d++) sums[d] = 0.0f;
                for (int64_t k = 0; k < parts[task]; k++) {
                    const float *p = partials + partial_start[task] +
                                     (((row - task_start[task]) * parts[task] + k) * num_heads + head) * stride;
                    fold_partition(sums, &max, &sum, p, p[head_dim], p[head_dim + 1], head_dim);
                }
                finish_row(out + row_head * head_dim, sums, sum, head_dim);
            }
        }
        free(acc), free(running_max), free(running_sum), free(total), free(total_max), free(total_sum);
        free(keys), free(values);
    }
    free(partials);
    free(task_start);
    return failed ? -1 : 0;
}

/* Entry points, one per cache type, each with a copy of attend per common head size (inside attend's
 * parallel region the size is a variable again: run_job is where it is made a literal). */
#define ENTRY_POINT(NAME, KV_TYPE, HALF)                                                                      \
    int NAME(const float *q, const KV_TYPE *cache, const int64_t *block_tables, const int64_t *context_lens, \
             float *out, int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,        \
             int64_t num_blocks, int64_t block_size, int64_t table_width, float scale, int64_t window) {      \
        if (head_dim == 64)                                                                                  \
            return attend(q, cache, block_tables, context_lens, out, num_seqs, num_heads, num_kv_heads, 64,  \
                          num_blocks, block_size, table_width, scale, window, HALF);                         \
        if (head_dim == 128)                                                                                 \
            return attend(q, cache, block_tables, context_lens, out, num_seqs, num_heads, num_kv_heads, 128, \
                          num_blocks, block_size, table_width, scale, window, HALF);                         \
        if (head_dim == 256)                                                                                 \
            return attend(q, cache, block_tables, context_lens, out, num_seqs, num_heads, num_kv_heads, 256, \
                          num_blocks, block_size, table_width, scale, window, HALF);                         \
        return attend(q, cache, block_tables, context_lens, out, num_seqs, num_heads, num_kv_heads,          \
                      head_dim, num_blocks, block_size, table_width, scale, window, HALF);                   \
    }

ENTRY_POINT(paged_decode_attention_f32, float, 0)
ENTRY_POINT(paged_decode_attention_f16, _Float16, 1)

/* The limits above, read by Python (rillet/model/native/__init__.py) rather than copied there. */
void decode_attention_limits(int64_t *out) {
    out[0] = MAX_HEADS;
    out[1] = MAX_HEAD_DIM;
    out[2] = MAX_BLOCK_SIZE;
}

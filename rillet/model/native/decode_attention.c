/* Decode attention straight over the paged KV cache: one new query token per sequence
 * attends to every cached token of its sequence, reading keys and values block by block
 * through the block table (no gathered copy) with an online softmax.
 *
 * cache: [2, num_blocks, block_size, num_kv_heads, head_dim] (keys, then values), float32
 *        (the _f32 entry point) or float16 (_f16); arithmetic is float32 either way.
 * q, out: [num_seqs, num_heads, head_dim] float32; block_tables: [num_seqs, table_width] int64
 * Query heads h * groups .. (h + 1) * groups - 1 share kv head h (grouped-query attention).
 * Returns 0, or -1 when a size is beyond the fixed buffers below (the caller falls back).
 * Work is split by sequence; each reads its blocks in order, all heads of a block together.
 */
#include <math.h>
#include <stdint.h>

#define MAX_HEADS 64
#define MAX_HEAD_DIM 256
#define MAX_BLOCK_SIZE 64
#define NEG_HUGE (-1e30f)

#if defined(__F16C__)
#include <immintrin.h>
#endif

/* One block's float16 rows of one kv head, converted to float32 in a dense buffer. */
static inline __attribute__((always_inline)) void load_half_rows(float *restrict dst, const _Float16 *src, int64_t rows, int64_t stride,
                                  int64_t dim) {
    for (int64_t t = 0; t < rows; t++) {
        const _Float16 *row = src + t * stride;
        int64_t d = 0;
#if defined(__F16C__)
        for (; d + 8 <= dim; d += 8)
            _mm256_storeu_ps(dst + t * dim + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + d))));
#endif
        for (; d < dim; d++) dst[t * dim + d] = (float)row[d];
    }
}

static inline __attribute__((always_inline)) int attend(
    const float *q, const void *cache, const int64_t *block_tables, const int64_t *context_lens, float *out,
    int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t num_blocks,
    int64_t block_size, int64_t table_width, float scale, int half) {
    const int64_t groups = num_heads / num_kv_heads;
    if (num_heads > MAX_HEADS || head_dim > MAX_HEAD_DIM || block_size > MAX_BLOCK_SIZE) return -1;
    const int64_t token_stride = num_kv_heads * head_dim;
    const int64_t block_stride = block_size * token_stride;
    const int64_t values_offset = num_blocks * block_stride;
    const int64_t element = half ? 2 : 4;

    /* One sequence per task: its blocks are read front to back, every head of a block at once. */
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t s = 0; s < num_seqs; s++) {
        float acc[MAX_HEADS][MAX_HEAD_DIM];
        float keys[MAX_BLOCK_SIZE * MAX_HEAD_DIM], values[MAX_BLOCK_SIZE * MAX_HEAD_DIM];
        float scores[MAX_BLOCK_SIZE];
        float running_max[MAX_HEADS], running_sum[MAX_HEADS];
        const float *qs = q + s * num_heads * head_dim;
        for (int64_t i = 0; i < num_heads; i++) {
            running_max[i] = NEG_HUGE;
            running_sum[i] = 0.0f;
            for (int64_t d = 0; d < head_dim; d++) acc[i][d] = 0.0f;
        }
        const int64_t len = context_lens[s];
        const int64_t *table = block_tables + s * table_width;
        for (int64_t start = 0; start < len; start += block_size) {
            const int64_t block = table[start / block_size];
            const int64_t n = len - start < block_size ? len - start : block_size;
            if (start + block_size < len) { /* the next block's first lines, while this one computes */
                const char *next = (const char *)cache + table[start / block_size + 1] * block_stride * element;
                __builtin_prefetch(next);
                __builtin_prefetch(next + values_offset * element);
            }
            for (int64_t h = 0; h < num_kv_heads; h++) {
                const int64_t offset = block * block_stride + h * head_dim;
                /* Rows of keys and values: float32 read in place, float16 converted first. */
                const float *kb = (const float *)cache + offset, *vb = kb + values_offset;
                int64_t row_stride = token_stride;
                if (half) {
                    const _Float16 *hk = (const _Float16 *)cache + offset;
                    load_half_rows(keys, hk, n, token_stride, head_dim);
                    load_half_rows(values, hk + values_offset, n, token_stride, head_dim);
                    kb = keys, vb = values, row_stride = head_dim;
                }
                for (int64_t i = h * groups; i < (h + 1) * groups; i++) {
                    const float *qi = qs + i * head_dim;
                    float block_max = running_max[i];
                    for (int64_t t = 0; t < n; t++) {
                        float dot = 0.0f;
                        for (int64_t d = 0; d < head_dim; d++) dot += qi[d] * kb[t * row_stride + d];
                        scores[t] = dot * scale;
                        block_max = scores[t] > block_max ? scores[t] : block_max;
                    }
                    const float correction = expf(running_max[i] - block_max);
                    float sum = running_sum[i] * correction;
                    float *a = acc[i];
                    for (int64_t d = 0; d < head_dim; d++) a[d] *= correction;
                    for (int64_t t = 0; t < n; t++) scores[t] = expf(scores[t] - block_max);
                    for (int64_t t = 0; t < n; t++) {
                        sum += scores[t];
                        for (int64_t d = 0; d < head_dim; d++) a[d] += scores[t] * vb[t * row_stride + d];
                    }
                    running_max[i] = block_max;
                    running_sum[i] = sum;
                }
            }
        }
        for (int64_t i = 0; i < num_heads; i++) {
            float *o = out + (s * num_heads + i) * head_dim;
            const float inv = running_sum[i] > 0.0f ? 1.0f / running_sum[i] : 0.0f;
            for (int64_t d = 0; d < head_dim; d++) o[d] = acc[i][d] * inv;
        }
    }
    return 0;
}

/* Entry points: the common head sizes get loops the compiler unrolls for their exact length. */
#define ENTRY_POINT(NAME, KV_TYPE, HALF)                                                                      \
    int NAME(const float *q, const KV_TYPE *cache, const int64_t *block_tables, const int64_t *context_lens, \
             float *out, int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,        \
             int64_t num_blocks, int64_t block_size, int64_t table_width, float scale) {                     \
        if (head_dim == 64)                                                                                  \
            return attend(q, cache, block_tables, context_lens, out, num_seqs, num_heads, num_kv_heads, 64,  \
                          num_blocks, block_size, table_width, scale, HALF);                                 \
        if (head_dim == 128)                                                                                 \
            return attend(q, cache, block_tables, context_lens, out, num_seqs, num_heads, num_kv_heads, 128, \
                          num_blocks, block_size, table_width, scale, HALF);                                 \
        return attend(q, cache, block_tables, context_lens, out, num_seqs, num_heads, num_kv_heads,          \
                      head_dim, num_blocks, block_size, table_width, scale, HALF);                           \
    }

ENTRY_POINT(paged_decode_attention_f32, float, 0)
ENTRY_POINT(paged_decode_attention_f16, _Float16, 1)

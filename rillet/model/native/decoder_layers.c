/* Every decoder layer of a step, and the final norm, in one call: the same kernels, in the same
 * order and on the same values as DecoderModel's forward (rillet/model/decoder.py), so the result
 * is bit for bit the one its Python loop computes. What it saves is the loop itself: at a batch of one token,
 * calling ten kernels a layer from Python took about as long as the kernels.
 *
 * The kernels live in their own libraries, built with their own flags (matmuls without fp
 * contraction, the others with -ffast-math); Python hands over their addresses.
 *
 * hidden: [T, dim] float32, the embeddings in; the residual stream out (as the Python loop
 * leaves it). out: [T, dim], the final RMSNorm of the stream. Returns 0, or the failing kernel's
 * status (a matmul's allocation, attention's size limits).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int (*matmul_fn)(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y);
typedef void (*add_rms_norm_fn)(float *hidden, const float *delta, const float *weight, float *out, int64_t rows,
                                int64_t dim, float eps);
typedef void (*rope_fn)(float *x, const float *cos, const float *sin, int64_t rows, int64_t row_stride,
                        int64_t heads, int64_t dim);
typedef void (*gate_fn)(const float *x, float *out, int64_t rows, int64_t width);
typedef void (*add_bias_fn)(float *x, const float *bias, int64_t rows, int64_t row_stride, int64_t width);
typedef void (*head_rms_norm_fn)(float *x, const float *weight, int64_t rows, int64_t row_stride, int64_t heads,
                                 int64_t dim, float eps);
typedef void (*write_kv_fn)(const float *keys, const float *values, int64_t row_stride, const int64_t *slots,
                            int64_t rows, int64_t width, void *cache, int64_t num_slots, int half);
typedef int (*attention_fn)(const float *q, const void *cache, const int64_t *block_tables,
                            const int64_t *context_lens, float *out, int64_t num_seqs, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, int64_t num_blocks, int64_t block_size,
                            int64_t table_width, float scale, int64_t window);

typedef struct {
    matmul_fn multiply;
    const uint8_t *packed;
    int64_t in_features, out_features;
} linear_t;

/* The parts a family may lack are NULL (rillet/model/architecture.py says which each has). */
typedef struct {
    const float *attn_norm, *mlp_norm;
    linear_t qkv, o, gate_up, down;
    int64_t window;     /* the layer's sliding window, 0 for full attention */
    int64_t rope_index; /* which of the step's RoPE tables (a base each) the layer rotates with */
    const float *qkv_bias, *q_norm, *k_norm, *post_attn_norm, *post_mlp_norm;
} layer_t;

typedef struct {
    int64_t num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim;
    float eps, scale;
    add_rms_norm_fn add_rms_norm;
    rope_fn rope;
    gate_fn gate; /* silu_mul or gelu_mul */
    write_kv_fn write_kv;
    add_bias_fn add_bias;
    head_rms_norm_fn head_rms_norm;
    const float *final_norm;
    const layer_t *layers;
} decoder_t;

/* The paged cache of every layer: [2, num_blocks, block_size, kv_heads, head_dim] each. */
typedef struct {
    void *const *layers;
    int64_t num_blocks, block_size;
    int half;
    attention_fn attention;
} kv_caches_t;

/* The structs above as Python's ctypes classes must lay them out (rillet/model/native/decoder_layers.py
 * compares its classes with this before it builds a decoder): each struct's size under its name, and
 * each field's offset under struct.field. */
#define SIZE(type) {#type, sizeof(type)}
#define FIELD(type, field) {#type "." #field, offsetof(type, field)}
static const struct {
    const char *name;
    int64_t value;
} layout[] = {
    SIZE(linear_t), FIELD(linear_t, multiply), FIELD(linear_t, packed), FIELD(linear_t, in_features),
    FIELD(linear_t, out_features),
    SIZE(layer_t), FIELD(layer_t, attn_norm), FIELD(layer_t, mlp_norm), FIELD(layer_t, qkv), FIELD(layer_t, o),
    FIELD(layer_t, gate_up), FIELD(layer_t, down), FIELD(layer_t, window), FIELD(layer_t, rope_index),
    FIELD(layer_t, qkv_bias), FIELD(layer_t, q_norm), FIELD(layer_t, k_norm), FIELD(layer_t, post_attn_norm),
    FIELD(layer_t, post_mlp_norm),
    SIZE(decoder_t), FIELD(decoder_t, num_layers), FIELD(decoder_t, hidden_size), FIELD(decoder_t, intermediate_size),
    FIELD(decoder_t, num_heads), FIELD(decoder_t, num_kv_heads), FIELD(decoder_t, head_dim), FIELD(decoder_t, eps),
    FIELD(decoder_t, scale), FIELD(decoder_t, add_rms_norm), FIELD(decoder_t, rope), FIELD(decoder_t, gate),
    FIELD(decoder_t, write_kv), FIELD(decoder_t, add_bias), FIELD(decoder_t, head_rms_norm),
    FIELD(decoder_t, final_norm), FIELD(decoder_t, layers),
    SIZE(kv_caches_t), FIELD(kv_caches_t, layers), FIELD(kv_caches_t, num_blocks), FIELD(kv_caches_t, block_size),
    FIELD(kv_caches_t, half), FIELD(kv_caches_t, attention),
};

/* Entry i of the layout: its value, and its name through *name; -1 past the last. */
int64_t decoder_layout(int64_t i, const char **name) {
    if (i < 0 || i >= (int64_t)(sizeof layout / sizeof layout[0])) return -1;
    *name = layout[i].name;
    return layout[i].value;
}

/* A matmul_fn for rows stacked from matrices of different block types (q and k in Q4_K, v in Q6_K):
 * packed is int64 [parts, then (kernel, packed, out_features) per part], and each part's outputs go to
 * its own columns of y, in order. The same numbers as the parts' kernels called one by one. */
int stacked_matmul(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    const int64_t *parts = (const int64_t *)packed;
    int64_t widest = 0, column = 0;
    for (int64_t i = 0; i < parts[0]; i++) widest = parts[3 + 3 * i] > widest ? parts[3 + 3 * i] : widest;
    float *part_y = malloc((size_t)(M * widest) * sizeof(float));
    if (part_y == NULL) return -1;
    int status = 0;
    for (int64_t i = 0; i < parts[0] && status == 0; i++) {
        const matmul_fn multiply = (matmul_fn)(intptr_t)parts[1 + 3 * i];
        const int64_t n = parts[3 + 3 * i];
        status = multiply(x, M, K, (const uint8_t *)(intptr_t)parts[2 + 3 * i], n, part_y);
        for (int64_t m = 0; m < M && status == 0; m++) memcpy(y + m * N + column, part_y + m * n, n * sizeof(float));
        column += n;
    }
    free(part_y);
    return status;
}

static int linear(const linear_t *l, const float *x, int64_t rows, float *y) {
    return l->multiply(x, rows, l->in_features, l->packed, l->out_features, y);
}

/* cos, sin: the step's rows of each RoPE table ([T, head_dim] each), indexed by a layer's rope_index.
 * slots, block_tables, table_widths: each KV group's (rillet/engine/kv_layout.py), indexed by
 * layer_groups[layer]; a model with one group passes one of each and zeros. */
int run_decoder_layers(const decoder_t *d, const kv_caches_t *caches, float *hidden, float *out, int64_t T,
                       const float *const *cos, const float *const *sin, const int64_t *const *slots,
                       const int64_t *const *block_tables, const int64_t *context_lens,
                       const int64_t *table_widths, const int64_t *layer_groups) {
    const int64_t dim = d->hidden_size, hd = d->head_dim;
    const int64_t q_width = d->num_heads * hd, kv_width = d->num_kv_heads * hd;
    const int64_t qkv_width = q_width + 2 * kv_width, inter = d->intermediate_size;
    const int64_t sizes[] = {T * dim, T * qkv_width, T * q_width, T * q_width, T * dim, T * 2 * inter, T * inter};
    float *buffers[7];
    int64_t total = 0;
    for (int i = 0; i < 7; i++) total += sizes[i];
    float *scratch = malloc((size_t)total * sizeof(float));
    if (scratch == NULL) return -1;
    float *p = scratch;
    for (int i = 0; i < 7; i++) buffers[i] = p, p += sizes[i];
    float *x = buffers[0], *qkv = buffers[1], *q = buffers[2], *attn = buffers[3], *delta = buffers[4];
    float *gate_up = buffers[5], *act = buffers[6];
    const int64_t num_slots = caches->num_blocks * caches->block_size;
    int status = 0;
    for (int64_t i = 0; i < d->num_layers && status == 0; i++) {
        const layer_t *l = d->layers + i;
        void *cache = caches->layers[i];
        const int64_t group = layer_groups[i];
        d->add_rms_norm(hidden, i == 0 ? NULL : delta, l->attn_norm, x, T, dim, d->eps);
        if ((status = linear(&l->qkv, x, T, qkv)) != 0) break;
        if (l->qkv_bias != NULL) d->add_bias(qkv, l->qkv_bias, T, qkv_width, qkv_width);
        if (l->q_norm != NULL) {
            d->head_rms_norm(qkv, l->q_norm, T, qkv_width, d->num_heads, hd, d->eps);
            d->head_rms_norm(qkv + q_width, l->k_norm, T, qkv_width, d->num_kv_heads, hd, d->eps);
        }
        d->rope(qkv, cos[l->rope_index], sin[l->rope_index], T, qkv_width, d->num_heads + d->num_kv_heads, hd);
        d->write_kv(qkv + q_width, qkv + q_width + kv_width, qkv_width, slots[group], T, kv_width, cache, num_slots,
                    caches->half);
        for (int64_t t = 0; t < T; t++) memcpy(q + t * q_width, qkv + t * qkv_width, q_width * sizeof(float));
        if ((status = caches->attention(q, cache, block_tables[group], context_lens, attn, T, d->num_heads, d->num_kv_heads,
                                        hd, caches->num_blocks, caches->block_size, table_widths[group], d->scale,
                                        l->window)) != 0)
            break;
        if ((status = linear(&l->o, attn, T, delta)) != 0) break;
        if (l->post_attn_norm != NULL) d->add_rms_norm(delta, NULL, l->post_attn_norm, delta, T, dim, d->eps);
        d->add_rms_norm(hidden, delta, l->mlp_norm, x, T, dim, d->eps);
        if ((status = linear(&l->gate_up, x, T, gate_up)) != 0) break;
        d->gate(gate_up, act, T, inter);
        if ((status = linear(&l->down, act, T, delta)) != 0) break;
        if (l->post_mlp_norm != NULL) d->add_rms_norm(delta, NULL, l->post_mlp_norm, delta, T, dim, d->eps);
    }
    if (status == 0) d->add_rms_norm(hidden, d->num_layers ? delta : NULL, d->final_norm, out, T, dim, d->eps);
    free(scratch);
    return status;
}

/* The small per-token steps of a decoder layer, each one pass over its rows instead of the
 * dozen PyTorch ops (and their dispatch) it takes otherwise. Every row is computed on its own,
 * the same way whatever else is in the batch. float32 throughout; rows may be strided.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* hidden[t] += delta[t] (when delta is not NULL), then out[t] = hidden[t] * weight / rms(hidden[t]). */
void add_rms_norm(float *hidden, const float *delta, const float *weight, float *out, int64_t rows, int64_t dim,
                  float eps) {
#pragma omp parallel for schedule(static) if (rows > 16)
    for (int64_t t = 0; t < rows; t++) {
        float *h = hidden + t * dim;
        if (delta != NULL) {
            const float *d = delta + t * dim;
            for (int64_t i = 0; i < dim; i++) h[i] += d[i];
        }
        float squares = 0.0f;
        for (int64_t i = 0; i < dim; i++) squares += h[i] * h[i];
        const float scale = 1.0f / sqrtf(squares / (float)dim + eps);
        float *o = out + t * dim;
        for (int64_t i = 0; i < dim; i++) o[i] = h[i] * scale * weight[i];
    }
}

/* Rotates the first `heads` heads of each row of x in place (Hugging Face layout: the two
 * halves of a head are the pair). x rows are row_stride floats apart; cos, sin: [rows, dim]. */
void rope(float *x, const float *cos, const float *sin, int64_t rows, int64_t row_stride, int64_t heads,
          int64_t dim) {
    const int64_t half = dim / 2;
#pragma omp parallel for schedule(static) if (rows > 16)
    for (int64_t t = 0; t < rows; t++) {
        const float *c = cos + t * dim, *s = sin + t * dim;
        for (int64_t h = 0; h < heads; h++) {
            float *v = x + t * row_stride + h * dim;
            for (int64_t i = 0; i < half; i++) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i + half] + a * s[i + half];
            }
        }
    }
}

/* out[t][i] = silu(x[t][i]) * x[t][width + i]: gate and up side by side in each row of x. The exponent
 * stops at 88, where expf is still finite: below gate -88 it overflowed to inf, and -ffast-math's
 * gate / inf is NaN, not 0. */
void silu_mul(const float *x, float *out, int64_t rows, int64_t width) {
#pragma omp parallel for schedule(static) if (rows > 4)
    for (int64_t t = 0; t < rows; t++) {
        const float *gate = x + t * 2 * width, *up = gate + width;
        float *o = out + t * width;
        for (int64_t i = 0; i < width; i++) o[i] = gate[i] / (1.0f + expf(fminf(-gate[i], 88.0f))) * up[i];
    }
}

/* Copies each row's keys and values (width floats, rows row_stride apart) into its cache slot:
 * cache [2][num_slots][width], float32 or float16 (half != 0). */
void write_kv(const float *keys, const float *values, int64_t row_stride, const int64_t *slots, int64_t rows,
              int64_t width, void *cache, int64_t num_slots, int half) {
    for (int64_t t = 0; t < rows; t++) {
        const int64_t slot = slots[t];
        if (slot < 0 || slot >= num_slots) continue;
        const float *k = keys + t * row_stride, *v = values + t * row_stride;
        if (half) {
            _Float16 *kc = (_Float16 *)cache + slot * width, *vc = kc + num_slots * width;
            for (int64_t i = 0; i < width; i++) kc[i] = (_Float16)k[i];
            for (int64_t i = 0; i < width; i++) vc[i] = (_Float16)v[i];
        } else {
            float *kc = (float *)cache + slot * width, *vc = kc + num_slots * width;
            for (int64_t i = 0; i < width; i++) kc[i] = k[i];
            for (int64_t i = 0; i < width; i++) vc[i] = v[i];
        }
    }
}

/* out[t][i] = gelu_tanh(x[t][i]) * x[t][width + i] (GeGLU, Gemma's gate): gelu with the tanh
 * approximation, 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))). */
void gelu_mul(const float *x, float *out, int64_t rows, int64_t width) {
#pragma omp parallel for schedule(static) if (rows > 4)
    for (int64_t t = 0; t < rows; t++) {
        const float *gate = x + t * 2 * width, *up = gate + width;
        float *o = out + t * width;
        for (int64_t i = 0; i < width; i++) {
            const float g = gate[i];
            o[i] = 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g))) * up[i];
        }
    }
}

/* x[t][i] += bias[i] for the first width floats of each row (rows row_stride apart). */
void add_bias(float *x, const float *bias, int64_t rows, int64_t row_stride, int64_t width) {
    for (int64_t t = 0; t < rows; t++)
        for (int64_t i = 0; i < width; i++) x[t * row_stride + i] += bias[i];
}

/* RMSNorm of each of the `heads` heads (dim floats each, side by side from the row's start) of each
 * row of x, in place, times weight [dim]: the query and key norms of Qwen3 and Gemma 3. */
void head_rms_norm(float *x, const float *weight, int64_t rows, int64_t row_stride, int64_t heads, int64_t dim,
                   float eps) {
    for (int64_t t = 0; t < rows; t++)
        for (int64_t h = 0; h < heads; h++) {
            float *v = x + t * row_stride + h * dim;
            float squares = 0.0f;
            for (int64_t i = 0; i < dim; i++) squares += v[i] * v[i];
            const float scale = 1.0f / sqrtf(squares / (float)dim + eps);
            for (int64_t i = 0; i < dim; i++) v[i] = v[i] * scale * weight[i];
        }
}

/* A decoded token's attention over a KV cache on a CPU: one query per head.
 *
 * Built by tts.attention at load with the machine's own C compiler (-O3 -march=native). A decode
 * step reads every cached key and value once (Turbo's 375 conditioning positions make that about
 * 80 MB of fp32 per step over 24 layers); ATen's two batched matrix products and a softmax over
 * the same views ran at about half the bandwidth of a plain read, this at close to it. With F16C
 * (every AVX2 CPU) it also reads fp16 keys and values, widening them in registers: half the bytes.
 *
 * Layout: heads h = 0..heads-1 (decoding rows x attention heads, row-major); head h's keys and
 * values start at h * head_stride elements, one row of `dim` (a multiple of 8) per position; q and
 * out are (heads, dim) fp32, contiguous; `scores` is scratch for kv_len floats. One head's sums
 * run in a fixed order whatever the machine's thread count (this code has no threads).
 */
#include <math.h>

/* scores[0:n] -> exp(scores - max), in place; returns their sum. */
static float exponentiate(float *restrict scores, long n, float top) {
    float total = 0.f;
    for (long l = 0; l < n; l++) {
        const float e = expf(scores[l] - top);
        scores[l] = e;
        total += e;
    }
    return total;
}

void one_query_attention_f32(const float *restrict q, const float *restrict keys, const float *restrict values,
                             float *restrict out, long heads, long kv_len, long head_stride, long dim, float scale,
                             float *restrict scores) {
    for (long h = 0; h < heads; h++) {
        const float *qh = q + h * dim, *kh = keys + h * head_stride, *vh = values + h * head_stride;
        float top = -INFINITY;
        for (long l = 0; l < kv_len; l++) {
            const float *kr = kh + l * dim;
            /* Eight independent partial sums: one vector register's lanes. */
            float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            for (long d = 0; d < dim; d += 8)
                for (int j = 0; j < 8; j++) acc[j] += qh[d + j] * kr[d + j];
            const float s = (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) * scale;
            scores[l] = s;
            top = s > top ? s : top;
        }
        const float inv = 1.f / exponentiate(scores, kv_len, top);
        float *oh = out + h * dim;
        for (long d = 0; d < dim; d++) oh[d] = 0.f;
        for (long l = 0; l < kv_len; l++) {
            const float *vr = vh + l * dim;
            const float p = scores[l];
            for (long d = 0; d < dim; d++) oh[d] += p * vr[d];
        }
        for (long d = 0; d < dim; d++) oh[d] *= inv;
    }
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define MAX_DIM 256

/* The same arithmetic over fp16 keys and values (GCC's portable _Float16 widening is scalar and
   ran slower than fp32; F16C's vcvtph2ps widens eight at a time). dim <= MAX_DIM. */
void one_query_attention_f16(const float *restrict q, const unsigned short *restrict keys,
                             const unsigned short *restrict values, float *restrict out, long heads, long kv_len,
                             long head_stride, long dim, float scale, float *restrict scores) {
    const long lanes = dim / 8;
    for (long h = 0; h < heads; h++) {
        const float *qh = q + h * dim;
        const unsigned short *kh = keys + h * head_stride, *vh = values + h * head_stride;
        float top = -INFINITY;
        for (long l = 0; l < kv_len; l++) {
            const unsigned short *kr = kh + l * dim;
            __m256 acc = _mm256_setzero_ps();
            for (long j = 0; j < lanes; j++)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * j),
                                      _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + 8 * j))), acc);
            float a[8];
            _mm256_storeu_ps(a, acc);
            const float s = (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))) * scale;
            scores[l] = s;
            top = s > top ? s : top;
        }
        const __m256 inv = _mm256_set1_ps(1.f / exponentiate(scores, kv_len, top));
        __m256 o[MAX_DIM / 8];
        for (long j = 0; j < lanes; j++) o[j] = _mm256_setzero_ps();
        for (long l = 0; l < kv_len; l++) {
            const unsigned short *vr = vh + l * dim;
            const __m256 p = _mm256_set1_ps(scores[l]);
            for (long j = 0; j < lanes; j++)
                o[j] = _mm256_fmadd_ps(p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vr + 8 * j))), o[j]);
        }
        for (long j = 0; j < lanes; j++) _mm256_storeu_ps(out + h * dim + 8 * j, _mm256_mul_ps(o[j], inv));
    }
}
#endif

/* HiFT's Snake activation, y = x + sin(alpha x)^2 / alpha (alpha per channel), in one pass.

   Upstream's torch expression makes five passes over the tensor (x * alpha, its sine, the square,
   the scaled square, the sum; tts.vocoder._Snake makes four), and ATen's vectorised sine is the
   larger part of the time. Here each element is read once and written once, and sin^2 is a
   polynomial: sin^2 has period pi, so t = alpha x is reduced to u in [-pi/2, pi/2] (pi in four
   parts, Cody-Waite: exact for |t| below ~10^4, far beyond HiFT's activations) and sin(u) is its
   Taylor polynomial to u^11 (truncation below 6e-8 there). Written so that GCC vectorises the
   inner loop at -O3 (no calls, no branches). */

#include <stddef.h>

static inline float sin_squared(float t) {
    float r = (t * 0.318309886183790671f + 12582912.0f) - 12582912.0f; /* nearest integer to t/pi */
    float u = t - r * 3.140625f;
    u -= r * 0.0009670257568359375f;
    u -= r * 6.2771141529083251953e-07f;
    u -= r * 1.2154201256553420762e-10f;
    float u2 = u * u;
    float p = -2.50521083854417187751e-08f; /* -1/11! */
    p = p * u2 + 2.75573192239858906526e-06f;
    p = p * u2 - 1.98412698412698412698e-04f;
    p = p * u2 + 8.33333333333333333333e-03f;
    p = p * u2 - 1.66666666666666666667e-01f;
    float s = u + u * u2 * p;
    return s * s;
}

/* x, y: rows x cols fp32, contiguous. per_column: time-major rows (T, C), alpha[j] for column j;
   else channel-major rows (C, T), alpha[i % channels] for row i. */
void snake_f32(const float *restrict x, float *restrict y, const float *restrict alpha,
               const float *restrict inv_alpha, long rows, long cols, long channels, int per_column) {
    for (long i = 0; i < rows; i++) {
        const float *xr = x + i * cols;
        float *yr = y + i * cols;
        if (per_column) {
            for (long j = 0; j < cols; j++)
                yr[j] = xr[j] + inv_alpha[j] * sin_squared(alpha[j] * xr[j]);
        } else {
            const float a = alpha[i % channels], ia = inv_alpha[i % channels];
            for (long j = 0; j < cols; j++)
                yr[j] = xr[j] + ia * sin_squared(a * xr[j]);
        }
    }
}

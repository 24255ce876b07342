/*
 * Native int8 x int8 -> int32 matrix products for the sentence encoder's Linear layers (model/encoder_quant.py):
 *
 *   out[M, N] = (sa[m] * sw[n]) * sum_k qa[m, k] * qw[n, k]  +  bias[n]
 *
 * qa: activations quantised per row (token), symmetric, scale sa = max|x| / 127, stored as u8 = qa + 128
 *     (ei_quantize_rows), rows padded to Kp = K rounded up to 4 with 128 (= 0).
 * qw: weights quantised per output channel, symmetric int8 in -127..127, packed by model/encoder_quant.py into
 *     panels of PANEL (64) output columns: bpack[N/64][Kp/4][64][4] (4 consecutive k of one column are 4 bytes,
 *     so one 32-bit lane of a vector holds one column's 4-k slice: the operand layout of vpdpbusd).
 *     Columns past N are zero.
 *
 * The SIMD path is chosen at compile time (-march=native):
 *   AVX512-VNNI: vpdpbusd zmm, u8 x s8 -> i32 over 64 columns x 4 k per instruction pair of 4 vectors;
 *                the u8 offset adds 128 * colsum(qw) to every sum, subtracted in the epilogue (comp[n]).
 *   AVX-VNNI:    the same on 256-bit vectors.
 *   AVX2:        maddubs(|qa|, sign(qw, qa)) + madd: exact too, since |qa|, |qw| <= 127 keep the int16 pair sums
 *                below 32767 (no saturation); no offset to undo.
 *   portable C:  the plain loop.
 * Every path computes the same int32 sums exactly (ei_gemm_s32 returns them; tests compare with an integer
 * reference). Tiles of MC rows x NC columns are spread over OpenMP threads; within a tile the microkernel holds
 * MR rows x 64 columns of int32 accumulators in registers across the whole K.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define EI_SIMD 3
#elif defined(__AVXVNNI__) && defined(__AVX2__)
#define EI_SIMD 2
#elif defined(__AVX2__)
#define EI_SIMD 1
#else
#define EI_SIMD 0
#endif

#define PANEL 64 /* output columns per packed weight panel */
#define MR 6     /* rows per microkernel */
#define MC 96    /* rows per tile */
#define NC 256   /* columns per tile */

int ei_simd(void) { return EI_SIMD; }
int ei_panel(void) { return PANEL; }

static int n_threads(int threads) { return threads > 0 ? threads : 1; }

/* x [M, K] float -> q [M, Kp] u8 (round(x / s) + 128, round half to even), s [M] = max|x| / 127. */
void ei_quantize_rows(const float *x, int64_t M, int64_t K, int64_t Kp, uint8_t *q, float *scale, int threads) {
#pragma omp parallel for num_threads(n_threads(threads)) schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *src = x + m * K;
        uint8_t *dst = q + m * Kp;
        int64_t k = 0;
        float amax = 0.0f;
#if defined(__AVX512F__) && defined(__AVX512BW__)
        __m512 mx = _mm512_setzero_ps();
        for (; k + 16 <= K; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(src + k)));
        amax = _mm512_reduce_max_ps(mx);
#endif
        for (; k < K; k++) amax = fmaxf(amax, fabsf(src[k]));
        const float d = amax / 127.0f;
        const float inv = d > 0.0f ? 1.0f / d : 0.0f;
        k = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
        const __m512 vinv = _mm512_set1_ps(inv);
        const __m512i off = _mm512_set1_epi32(128);
        for (; k + 16 <= K; k += 16) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src + k), vinv)); /* nearest even */
            v = _mm512_add_epi32(v, off);
            _mm_storeu_si128((__m128i *)(dst + k), _mm512_cvtusepi32_epi8(v));
        }
#endif
        for (; k < K; k++) dst[k] = (uint8_t)(lrintf(src[k] * inv) + 128);
        for (; k < Kp; k++) dst[k] = 128;
        scale[m] = d;
    }
}

/* acc[r][c] for r < MR, c < PANEL: the int32 sums of rows a_rows[r] against one packed panel. Writes the
   exact sum_k qa * qw (offset already removed). */
static void micro_panel(const uint8_t *const a_rows[MR], const int8_t *panel, int64_t Kp, const int32_t *comp,
                        int32_t acc_out[MR][PANEL]) {
    const int64_t k4n = Kp / 4;
#if EI_SIMD == 3
    __m512i c[MR][4];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 4; j++) c[r][j] = _mm512_setzero_si512();
    for (int64_t k4 = 0; k4 < k4n; k4++) {
        const int8_t *bp = panel + k4 * (PANEL * 4);
        const __m512i b0 = _mm512_loadu_si512(bp), b1 = _mm512_loadu_si512(bp + 64),
                      b2 = _mm512_loadu_si512(bp + 128), b3 = _mm512_loadu_si512(bp + 192);
        for (int r = 0; r < MR; r++) {
            int32_t word;
            memcpy(&word, a_rows[r] + 4 * k4, 4);
            const __m512i a = _mm512_set1_epi32(word);
            c[r][0] = _mm512_dpbusd_epi32(c[r][0], a, b0);
            c[r][1] = _mm512_dpbusd_epi32(c[r][1], a, b1);
            c[r][2] = _mm512_dpbusd_epi32(c[r][2], a, b2);
            c[r][3] = _mm512_dpbusd_epi32(c[r][3], a, b3);
        }
    }
    for (int j = 0; j < 4; j++) {
        const __m512i cj = _mm512_loadu_si512(comp + 16 * j);
        for (int r = 0; r < MR; r++) _mm512_storeu_si512(&acc_out[r][16 * j], _mm512_sub_epi32(c[r][j], cj));
    }
#elif EI_SIMD >= 1
    /* 256-bit: the 64 columns as two halves of 32 (4 vectors each) to keep 4 x MR accumulators in registers */
    for (int half = 0; half < 2; half++) {
        __m256i c[MR][4];
        for (int r = 0; r < MR; r++)
            for (int j = 0; j < 4; j++) c[r][j] = _mm256_setzero_si256();
#if EI_SIMD == 1
        const __m256i ones = _mm256_set1_epi16(1);
        const __m256i flip = _mm256_set1_epi8((char)0x80);
#endif
        for (int64_t k4 = 0; k4 < k4n; k4++) {
            const int8_t *bp = panel + k4 * (PANEL * 4) + half * 128;
            __m256i b[4];
            for (int j = 0; j < 4; j++) b[j] = _mm256_loadu_si256((const __m256i *)(bp + 32 * j));
            for (int r = 0; r < MR; r++) {
                int32_t word;
                memcpy(&word, a_rows[r] + 4 * k4, 4);
                const __m256i a = _mm256_set1_epi32(word);
#if EI_SIMD == 2
                for (int j = 0; j < 4; j++) c[r][j] = _mm256_dpbusd_avx_epi32(c[r][j], a, b[j]);
#else
                const __m256i as = _mm256_xor_si256(a, flip); /* u8 - 128 as s8, in -127..127 */
                const __m256i aabs = _mm256_abs_epi8(as);
                for (int j = 0; j < 4; j++) {
                    const __m256i prod = _mm256_maddubs_epi16(aabs, _mm256_sign_epi8(b[j], as));
                    c[r][j] = _mm256_add_epi32(c[r][j], _mm256_madd_epi16(prod, ones));
                }
#endif
            }
        }
        for (int j = 0; j < 4; j++) {
#if EI_SIMD == 2
            const __m256i cj = _mm256_loadu_si256((const __m256i *)(comp + half * 32 + 8 * j));
#else
            const __m256i cj = _mm256_setzero_si256();
#endif
            for (int r = 0; r < MR; r++)
                _mm256_storeu_si256((__m256i *)&acc_out[r][half * 32 + 8 * j], _mm256_sub_epi32(c[r][j], cj));
        }
    }
#else
    for (int r = 0; r < MR; r++)
        for (int col = 0; col < PANEL; col++) acc_out[r][col] = -comp[col];
    for (int64_t k4 = 0; k4 < k4n; k4++) {
        const int8_t *bp = panel + k4 * (PANEL * 4);
        for (int r = 0; r < MR; r++) {
            const uint8_t *a = a_rows[r] + 4 * k4;
            for (int col = 0; col < PANEL; col++) {
                const int8_t *w = bp + 4 * col;
                acc_out[r][col] += a[0] * w[0] + a[1] * w[1] + a[2] * w[2] + a[3] * w[3];
            }
        }
    }
#endif
}

/* The shared driver. comp [Np] = 128 * colsum(qw) (ignored by the AVX2 path, which has no offset). Either
   out_i32 [M, N] receives the exact int32 sums, or out [M, N] float receives the dequantised result
   (sa[m] * sw[n] * sum + bias[n], bias may be NULL). */
static int gemm(const uint8_t *a, int64_t M, int64_t Kp, const int8_t *bpack, int64_t N, const int32_t *comp_in,
                int32_t *out_i32, const float *sa, const float *sw, const float *bias, float *out, int threads) {
    if (M <= 0 || N <= 0) return 0;
    if (Kp % 4) return 1;
    const int64_t n_panels = (N + PANEL - 1) / PANEL;
    const int64_t m_tiles = (M + MC - 1) / MC, n_tiles = (N + NC - 1) / NC;
    const int64_t tiles = m_tiles * n_tiles;
#if EI_SIMD == 1
    (void)comp_in;
    static const int32_t zeros[PANEL];
#endif
#pragma omp parallel for num_threads(n_threads(threads)) schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t m0 = (t / n_tiles) * MC, n0 = (t % n_tiles) * NC;
        const int64_t m1 = m0 + MC < M ? m0 + MC : M, n1 = n0 + NC < N ? n0 + NC : N;
        int32_t acc[MR][PANEL];
        for (int64_t p = n0 / PANEL; p * PANEL < n1 && p < n_panels; p++) {
            const int8_t *panel = bpack + p * Kp * PANEL;
            const int64_t c0 = p * PANEL, cw = N - c0 < PANEL ? N - c0 : PANEL;
#if EI_SIMD == 1
            const int32_t *comp = zeros;
#else
            const int32_t *comp = comp_in + c0;
#endif
            for (int64_t m = m0; m < m1; m += MR) {
                const int rows = m1 - m < MR ? (int)(m1 - m) : MR;
                const uint8_t *a_rows[MR];
                for (int r = 0; r < MR; r++) a_rows[r] = a + (m + (r < rows ? r : 0)) * Kp;
                micro_panel(a_rows, panel, Kp, comp, acc);
                for (int r = 0; r < rows; r++) {
                    const int64_t row = m + r;
                    if (out_i32) {
                        memcpy(out_i32 + row * N + c0, acc[r], sizeof(int32_t) * (size_t)cw);
                        continue;
                    }
                    float *dst = out + row * N + c0;
                    const float s = sa[row];
                    int64_t col = 0;
#if defined(__AVX512F__)
                    const __m512 vs = _mm512_set1_ps(s);
                    for (; col < cw; col += 16) {
                        const __mmask16 mask = cw - col >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cw - col)) - 1);
                        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(&acc[r][col])),
                                                 _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(mask, sw + c0 + col)));
                        if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias + c0 + col));
                        _mm512_mask_storeu_ps(dst + col, mask, v);
                    }
#endif
                    for (; col < cw; col++) {
                        float v = (float)acc[r][col] * (s * sw[c0 + col]);
                        dst[col] = bias ? v + bias[c0 + col] : v;
                    }
                }
            }
        }
    }
    return 0;
}

int ei_gemm_s32(const uint8_t *a, int64_t M, int64_t Kp, const int8_t *bpack, int64_t N, const int32_t *comp,
                int32_t *out, int threads) {
    return gemm(a, M, Kp, bpack, N, comp, out, NULL, NULL, NULL, NULL, threads);
}

int ei_gemm_f32(const uint8_t *a, int64_t M, int64_t Kp, const int8_t *bpack, int64_t N, const int32_t *comp,
                const float *sa, const float *sw, const float *bias, float *out, int threads) {
    return gemm(a, M, Kp, bpack, N, comp, NULL, sa, sw, bias, out, threads);
}

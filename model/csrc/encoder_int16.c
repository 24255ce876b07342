/*
 * The sentence encoder's "int16" mode (model/encoder_quant.py): each block linear as an int16 x int16 -> int32
 * matrix product with its row-wise epilogue fused in:
 *
 *   y[m, n] = sa[m] * sw[n] * sum_k qa[m, k] * qw[n, k] + bias[n]
 *   then, per row and in this order (each optional): GELU (erf form), + residual[m, n], LayerNorm over n,
 *   and quantisation of the finished row to int16 for the next product (q = rint(y * levels / max|y|)).
 *
 * qa: activations, one scale per row (token): sa = max|x| / levels_a, |qa| <= levels_a.
 * qw: weights, one scale per output channel: |qw| <= levels_w, packed by model/encoder_quant.py into panels of
 *     NR (16) output columns: bpack[ceil(N/16)][Kp/2][16][2] (two consecutive k of one column are one 32-bit
 *     lane: the operand layout of vpmaddwd). Columns past N and k past K are zero. Kp = K rounded up to 2.
 * The caller picks levels_a * levels_w * Kp < 2^31, so no int32 sum can overflow and every SIMD path computes
 * the same exact sums (e16_gemm_s32 returns them; the tests compare them with an integer reference).
 *
 * Why int16 and not int8 on AVX2: without VNNI, an int8 product needs vpmaddubsw + vpmaddwd per 32 products
 * (and a sign trick to avoid int16 saturation), while vpmaddwd alone does 16 int16 products: the same 16
 * products per multiply instruction, twice float32's 8 per FMA, but with ~11-12-bit operands instead of 8,
 * which keeps MiniLM's outlier channels (cosine >= 0.9999 to float32 instead of 0.995).
 *
 * SIMD (compile time, -march=native): AVX2 (vpmaddwd + vpaddd, 6 rows x 16 columns of int32 accumulators in
 * 12 registers) or portable C. Rows are split into blocks of MB over OpenMP threads; a block computes its whole
 * output rows (all panels), then runs the row epilogue while the rows are in cache.
 *
 * e16_attention (at the end) runs the self-attention on the same microkernel, from the qkv product written
 * head-major (e16_linear with head_dim > 0).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define E16_SIMD 1
#else
#define E16_SIMD 0
#endif

#define NR 16 /* output columns per packed weight panel */
#define MR 6  /* rows per microkernel */
#define MB 48 /* rows per block (one OpenMP work item) */
#define TINY 1e-30f /* a row or column whose max |x| is not above this quantises to zeros */

int e16_simd(void) { return E16_SIMD; }
int e16_panel(void) { return NR; }

static int n_threads(int threads) { return threads > 0 ? threads : 1; }

/* ---------------------------------------------------------------------------------------------------------- */
/* vector math: 2^x and erf (float32, AVX2) */

#if E16_SIMD
static inline __m256 exp2_256(__m256 x) {
    /* 2^x = 2^n * 2^f, n = round(x), f in [-0.5, 0.5], 2^f by a degree-5 polynomial fitted for relative error
       (<= 3.5e-7 in float); x clamped to [-64, 64] (the softmax's p below 2^-64 is 0 once quantised, and no
       result is ever a denormal: those cost microcode assists when multiplied) */
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-64.0f)), _mm256_set1_ps(64.0f));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(0.0012915651313960552f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.009668535552918911f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.055516887456178665f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.24022264778614044f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.6931464672088623f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 erf256(__m256 x) {
    /* A rational minimax approximation on [-4, 4] (x clamped there; erf(4) = 1 - 1.5e-8): odd numerator of
       degree 13 over an even denominator of degree 8 (the coefficients of Eigen's fast float erf); |error| <=
       4.2e-7, no exp. */
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
    const __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-2.72614225801306e-10f);
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.77068142495902e-08f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-2.10102402082508e-06f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-5.69250639462346e-05f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-7.34990630326855e-04f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-2.95459980854025e-03f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-1.60960333262415e-02f));
    p = _mm256_mul_ps(p, x);
    __m256 q = _mm256_set1_ps(-1.45660718464996e-05f);
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-2.13374055278905e-04f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-1.68282697438203e-03f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-7.37332916720468e-03f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-1.42647390514189e-02f));
    return _mm256_div_ps(p, q);
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#endif

/* GELU, erf form: 0.5 x (1 + erf(x / sqrt 2)), in place on n floats. */
static void gelu_row(float *y, int64_t n) {
    int64_t i = 0;
#if E16_SIMD
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), r2 = _mm256_set1_ps(0.70710678118654752f);
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(y + i);
        const __m256 e = erf256(_mm256_mul_ps(v, r2));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e)));
    }
#endif
    for (; i < n; i++) y[i] = 0.5f * y[i] * (1.0f + erff(y[i] * 0.70710678118654752f));
}

/* y += r, then LayerNorm (biased variance, two passes) with gamma/beta; either may be skipped (NULL). */
static void residual_norm_row(float *y, const float *r, const float *gamma, const float *beta, float eps,
                              int64_t n) {
    int64_t i = 0;
    if (r) {
#if E16_SIMD
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(r + i)));
#endif
        for (; i < n; i++) y[i] += r[i];
    }
    if (!gamma) return;
    float sum = 0.0f, sq = 0.0f;
    i = 0;
#if E16_SIMD
    __m256 vs = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) vs = _mm256_add_ps(vs, _mm256_loadu_ps(y + i));
    sum = hsum256(vs);
#endif
    for (; i < n; i++) sum += y[i];
    const float mean = sum / (float)n;
    i = 0;
#if E16_SIMD
    const __m256 vm = _mm256_set1_ps(mean);
    __m256 vq = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(y + i), vm);
        vq = _mm256_fmadd_ps(d, d, vq);
    }
    sq = hsum256(vq);
#endif
    for (; i < n; i++) sq += (y[i] - mean) * (y[i] - mean);
    const float inv = 1.0f / sqrtf(sq / (float)n + eps);
    i = 0;
#if E16_SIMD
    const __m256 vi = _mm256_set1_ps(inv);
    for (; i + 8 <= n; i += 8) {
        const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(y + i), vm), vi);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(gamma + i), _mm256_loadu_ps(beta + i)));
    }
#endif
    for (; i < n; i++) y[i] = (y[i] - mean) * inv * gamma[i] + beta[i];
}

/* round half to even (the current rounding mode, like the SIMD conversions), inline */
static inline float round_even(float x) {
#if E16_SIMD
    return (float)_mm_cvtss_si32(_mm_set_ss(x));
#else
    return nearbyintf(x);
#endif
}

/* One row x [K] float -> q [Kp] int16 = rint(x * (levels / max|x|)) (zeros past K), returns the scale
   max|x| / levels (0 for an all-zero row). rint = round half to even, like the SIMD conversion. */
static float quantize_row(const float *x, int64_t K, int64_t Kp, int levels, int16_t *q) {
    int64_t k = 0;
    float amax = 0.0f;
#if E16_SIMD
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vm = _mm256_setzero_ps();
    for (; k + 8 <= K; k += 8) vm = _mm256_max_ps(vm, _mm256_and_ps(_mm256_loadu_ps(x + k), absmask));
    amax = hmax256(vm);
#endif
    for (; k < K; k++) {
        const float a = x[k] < 0 ? -x[k] : x[k];
        amax = a > amax ? a : amax;
    }
    const float inv = amax > TINY ? (float)levels / amax : 0.0f; /* levels / amax must stay finite */
    k = 0;
#if E16_SIMD
    const __m256 vi = _mm256_set1_ps(inv);
    for (; k + 16 <= K; k += 16) {
        const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vi));
        const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), vi));
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
        _mm256_storeu_si256((__m256i *)(q + k), packed);
    }
#endif
    for (; k < K; k++) q[k] = (int16_t)round_even(x[k] * inv);
    for (; k < Kp; k++) q[k] = 0;
    return amax / (float)levels;
}

void e16_quantize_rows(const float *x, int64_t M, int64_t K, int64_t Kp, int levels, int16_t *q, float *scale,
                       int threads) {
#pragma omp parallel for num_threads(n_threads(threads)) schedule(static)
    for (int64_t m = 0; m < M; m++) scale[m] = quantize_row(x + m * K, K, Kp, levels, q + m * Kp);
}

/* Weights w [N, K] float -> per-row scales [N] = max(max|w|, 1e-12) / levels and q = rint(w / scale) clamped to
   +-levels, packed into the panels above (packed: ceil(N/16) * (Kp/2) * 16 * 2 int16, zeros past N and K). */
void e16_pack_weight(const float *w, int64_t N, int64_t K, int64_t Kp, int levels, int16_t *packed, float *scales,
                     int threads) {
    const int64_t n_panels = (N + NR - 1) / NR;
#pragma omp parallel for num_threads(n_threads(threads)) schedule(static)
    for (int64_t p = 0; p < n_panels; p++) {
        float scale[NR];
        for (int c = 0; c < NR; c++) {
            const int64_t n = p * NR + c;
            float amax = 0.0f;
            for (int64_t k = 0; n < N && k < K; k++) amax = fmaxf(amax, fabsf(w[n * K + k]));
            scale[c] = fmaxf(amax, 1e-12f) / (float)levels;
            if (n < N) scales[n] = scale[c];
        }
        int16_t *dst = packed + p * Kp * NR; /* [Kp/2][NR][2], written in order */
        for (int64_t k = 0; k < Kp; k += 2)
            for (int c = 0; c < NR; c++)
                for (int64_t i = k; i < k + 2; i++) {
                    const int64_t n = p * NR + c;
                    float q = 0.0f;
                    if (n < N && i < K) {
                        q = rintf(w[n * K + i] / scale[c]);
                        q = q > (float)levels ? (float)levels : (q < -(float)levels ? -(float)levels : q);
                    }
                    *dst++ = (int16_t)q;
                }
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* the microkernel: acc[r][c] = sum_k a_rows[r][k] * panel column c, for MR rows x NR columns (a_rows: int16
   rows of at least 2 * kpairs values; 4-byte broadcasts of each row's k pairs) */

#if E16_SIMD
/* the microkernel's loop: MR x 16 int32 sums in c00..c51 over kpairs pairs of a0..a5 (rows) and panel */
#define E16_ROW(ap, lo, hi)                                                      \
    do {                                                                         \
        int32_t w_;                                                              \
        memcpy(&w_, (ap) + 2 * kk, 4);                                           \
        const __m256i a_ = _mm256_set1_epi32(w_);                                \
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(a_, b0));                    \
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(a_, b1));                    \
    } while (0)
#define E16_MICRO_LOOP(a_rows, panel, kpairs)                                                       \
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;    \
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;                       \
    {                                                                                               \
        const int16_t *a0 = a_rows[0], *a1 = a_rows[1], *a2 = a_rows[2];                            \
        const int16_t *a3 = a_rows[3], *a4 = a_rows[4], *a5 = a_rows[5];                            \
        for (int64_t kk = 0; kk < kpairs; kk++) {                                                   \
            const __m256i b0 = _mm256_loadu_si256((const __m256i *)(panel + kk * 2 * NR));          \
            const __m256i b1 = _mm256_loadu_si256((const __m256i *)(panel + kk * 2 * NR + 16));     \
            E16_ROW(a0, c00, c01);                                                                  \
            E16_ROW(a1, c10, c11);                                                                  \
            E16_ROW(a2, c20, c21);                                                                  \
            E16_ROW(a3, c30, c31);                                                                  \
            E16_ROW(a4, c40, c41);                                                                  \
            E16_ROW(a5, c50, c51);                                                                  \
        }                                                                                           \
    }
#endif

static void micro(const int16_t *const a_rows[MR], const int16_t *panel, int64_t kpairs, int32_t acc[MR][NR]) {
#if E16_SIMD
    E16_MICRO_LOOP(a_rows, panel, kpairs)
#define E16_STORE(r, lo, hi)                                          \
    _mm256_storeu_si256((__m256i *)&acc[r][0], lo);                   \
    _mm256_storeu_si256((__m256i *)&acc[r][8], hi);
    E16_STORE(0, c00, c01) E16_STORE(1, c10, c11) E16_STORE(2, c20, c21)
    E16_STORE(3, c30, c31) E16_STORE(4, c40, c41) E16_STORE(5, c50, c51)
#undef E16_STORE
#else
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) acc[r][c] = 0;
    for (int64_t kk = 0; kk < kpairs; kk++) {
        const int16_t *bp = panel + kk * 2 * NR;
        for (int r = 0; r < MR; r++) {
            const int32_t x0 = a_rows[r][2 * kk], x1 = a_rows[r][2 * kk + 1];
            for (int c = 0; c < NR; c++) acc[r][c] += x0 * bp[2 * c] + x1 * bp[2 * c + 1];
        }
    }
#endif
}

/* The same products scaled to floats in registers: out[r * stride + c] = rs[r] * cs[c] * sum (attention's scores) */
static void micro_scaled(const int16_t *const a_rows[MR], const int16_t *panel, int64_t kpairs, const float rs[MR],
                         const float *cs, float *out, int64_t stride) {
#if E16_SIMD
    E16_MICRO_LOOP(a_rows, panel, kpairs)
    const __m256 s0 = _mm256_loadu_ps(cs), s1 = _mm256_loadu_ps(cs + 8);
#define E16_SCALED(r, lo, hi)                                                                                  \
    do {                                                                                                       \
        const __m256 f_ = _mm256_set1_ps(rs[r]);                                                               \
        _mm256_storeu_ps(out + (r) * stride, _mm256_mul_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(f_, s0)));    \
        _mm256_storeu_ps(out + (r) * stride + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(f_, s1))); \
    } while (0)
    E16_SCALED(0, c00, c01); E16_SCALED(1, c10, c11); E16_SCALED(2, c20, c21);
    E16_SCALED(3, c30, c31); E16_SCALED(4, c40, c41); E16_SCALED(5, c50, c51);
#undef E16_SCALED
#else
    int32_t acc[MR][NR];
    micro(a_rows, panel, kpairs, acc);
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) out[r * stride + c] = (float)acc[r][c] * (rs[r] * cs[c]);
#endif
}

/* Where the product's rows go: row-major [rows, N] from y (row m at y + (m - m0) * N), or head-major when
   head_dim > 0: element (m, n) of sequence b = m / seq, token t = m % seq, group g = n / head_dim,
   lane d = n % head_dim
   at y[((b * (N / head_dim) + g) * seq + t) * head_dim + d] (y = the whole output; BertLayer's qkv as
   [B, 3, n_heads, T, hd], so each head's q, k and v are contiguous [T, hd] blocks). With row_pos, row m is the
   token at position row_pos[m] = b * seq + t instead (packed rows: the padding's rows are never computed). */
typedef struct {
    float *y;
    int32_t *y_i32; /* exact sums instead, row-major [M, N] (for the tests) */
    int64_t m0, seq, head_dim;
    const int64_t *row_pos; /* head-major only: each row's b * seq + t (NULL: the row index itself) */
} dest_t;

static inline float *dest_at(const dest_t *dst, int64_t row, int64_t col, int64_t N) {
    if (dst->head_dim <= 0) return dst->y + (row - dst->m0) * N + col;
    const int64_t pos = dst->row_pos ? dst->row_pos[row] : row;
    const int64_t b = pos / dst->seq, t = pos % dst->seq, g = col / dst->head_dim, d = col % dst->head_dim;
    return dst->y + ((b * (N / dst->head_dim) + g) * dst->seq + t) * dst->head_dim + d;
}

/* rows m0..m1 (at most MB) of the product (sa * sw * sum + bias, or the exact sums) into dst */
static void block_product(const int16_t *a, int64_t m0, int64_t m1, int64_t Kp, const int16_t *bpack, int64_t N,
                          const float *sa, const float *sw, const float *bias, const dest_t *dst) {
    const int64_t n_panels = (N + NR - 1) / NR, kpairs = Kp / 2;
    /* a panel's columns are contiguous in the destination unless the head-major layout splits them */
    const int contiguous = dst->head_dim <= 0 || dst->head_dim % NR == 0;
    /* each row's and each panel's offset into dst, computed once (the head-major one takes divisions) */
    int64_t row_off[MB];
    for (int64_t row = m0; row < m1 && !dst->y_i32; row++)
        row_off[row - m0] = dest_at(dst, row, 0, N) - dst->y;
    int32_t acc[MR][NR];
    for (int64_t p = 0; p < n_panels; p++) {
        const int16_t *panel = bpack + p * Kp * NR;
        const int64_t c0 = p * NR, cw = N - c0 < NR ? N - c0 : NR;
        const int64_t col_off = dst->y_i32 ? 0 : dest_at(dst, m0, c0, N) - dst->y - row_off[0];
        for (int64_t m = m0; m < m1; m += MR) {
            const int rows = m1 - m < MR ? (int)(m1 - m) : MR;
            const int16_t *a_rows[MR];
            for (int r = 0; r < MR; r++) a_rows[r] = a + (m + (r < rows ? r : 0)) * Kp;
            micro(a_rows, panel, kpairs, acc);
            for (int r = 0; r < rows; r++) {
                const int64_t row = m + r;
                if (dst->y_i32) {
                    memcpy(dst->y_i32 + row * N + c0, acc[r], sizeof(int32_t) * (size_t)cw);
                    continue;
                }
                const float s = sa[row];
                int64_t c = 0;
                if (contiguous) {
                    float *out = dst->y + row_off[row - m0] + col_off;
#if E16_SIMD
                    if (cw == NR) {
                        const __m256 vs = _mm256_set1_ps(s);
                        for (; c < NR; c += 8) {
                            const __m256i sums = _mm256_loadu_si256((const __m256i *)&acc[r][c]);
                            const __m256 scale = _mm256_mul_ps(vs, _mm256_loadu_ps(sw + c0 + c));
                            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), scale);
                            if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + c0 + c));
                            _mm256_storeu_ps(out + c, v);
                        }
                    }
#endif
                    for (; c < cw; c++) {
                        const float v = (float)acc[r][c] * (s * sw[c0 + c]);
                        out[c] = bias ? v + bias[c0 + c] : v;
                    }
                } else {
                    for (; c < cw; c++) {
                        const float v = (float)acc[r][c] * (s * sw[c0 + c]);
                        *dest_at(dst, row, c0 + c, N) = bias ? v + bias[c0 + c] : v;
                    }
                }
            }
        }
    }
}

/* The fused linear. a [M, Kp] int16 with row scales sa [M]; bpack as above with column scales sw [N] (and bias
   [N] or NULL). Per row: y = product + bias; gelu (if set); y += residual[m] (if not NULL); LayerNorm with
   gamma/beta (if not NULL); y is written to out [M, N] (if not NULL), and quantised to q_out [M, q_kp] int16 with
   scales q_scale [M] at q_levels (if q_out is not NULL). head_dim > 0 writes out head-major instead (see dest_t;
   M = sequences * seq, or with row_pos [M] any number of rows each at its position; N a multiple of head_dim; no
   row epilogue then). Returns 0, 1 on bad arguments, 2 when out of memory. */
int e16_linear(const int16_t *a, const float *sa, int64_t M, int64_t Kp, const int16_t *bpack, int64_t N,
               const float *sw, const float *bias, int gelu, const float *residual, const float *gamma,
               const float *beta, float eps, float *out, int16_t *q_out, float *q_scale, int64_t q_kp,
               int q_levels, int64_t seq, int64_t head_dim, const int64_t *row_pos, int threads) {
    if (M <= 0 || N <= 0) return 0;
    if (Kp % 2 || (!out && !q_out) || (q_out && (q_kp < N || q_kp % 2 || q_levels < 1))) return 1;
    if (head_dim > 0 && (!out || q_out || gelu || residual || gamma || seq <= 0 || (!row_pos && M % seq) ||
                         N % head_dim))
        return 1;
    if (row_pos && head_dim <= 0) return 1;
    const int64_t blocks = (M + MB - 1) / MB;
    int failed = 0;
#pragma omp parallel num_threads(n_threads(threads))
    {
        float *scratch = out ? NULL : (float *)malloc(sizeof(float) * (size_t)(MB * N));
        const int ok = out || scratch;
        if (!ok) {
#pragma omp atomic write
            failed = 2;
        }
#pragma omp for schedule(dynamic, 1) /* blocks of rows: a thread the OS pauses does not hold up the rest */
        for (int64_t b = 0; b < blocks; b++) {
            if (!ok) continue;
            const int64_t m0 = b * MB, m1 = m0 + MB < M ? m0 + MB : M;
            float *y = out ? (head_dim > 0 ? out : out + m0 * N) : scratch;
            const dest_t dst = {y, NULL, m0, seq, head_dim, row_pos};
            block_product(a, m0, m1, Kp, bpack, N, sa, sw, bias, &dst);
            if (head_dim > 0) continue;
            for (int64_t row = m0; row < m1; row++) {
                float *yr = y + (row - m0) * N;
                if (gelu) gelu_row(yr, N);
                if (residual || gamma) residual_norm_row(yr, residual ? residual + row * N : NULL, gamma, beta, eps, N);
                if (q_out) q_scale[row] = quantize_row(yr, N, q_kp, q_levels, q_out + row * q_kp);
            }
        }
        free(scratch);
    }
    return failed;
}

/* The exact int32 sums a @ qw^T -> out [M, N] (for the tests). */
int e16_gemm_s32(const int16_t *a, int64_t M, int64_t Kp, const int16_t *bpack, int64_t N, int32_t *out,
                 int threads) {
    if (M <= 0 || N <= 0) return 0;
    if (Kp % 2) return 1;
    const int64_t blocks = (M + MB - 1) / MB;
#pragma omp parallel for num_threads(n_threads(threads)) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t m0 = b * MB, m1 = m0 + MB < M ? m0 + MB : M;
        const dest_t dst = {NULL, out, m0, 0, 0, NULL};
        block_product(a, m0, m1, Kp, bpack, N, NULL, NULL, NULL, &dst);
    }
    return 0;
}

/* The row epilogue alone on y [M, N] float, in place (for the tests and for rows that come from elsewhere). */
void e16_rows(float *y, int64_t M, int64_t N, int gelu, const float *residual, const float *gamma,
              const float *beta, float eps, int16_t *q_out, float *q_scale, int64_t q_kp, int q_levels,
              int threads) {
#pragma omp parallel for num_threads(n_threads(threads)) schedule(static)
    for (int64_t row = 0; row < M; row++) {
        float *yr = y + row * N;
        if (gelu) gelu_row(yr, N);
        if (residual || gamma) residual_norm_row(yr, residual ? residual + row * N : NULL, gamma, beta, eps, N);
        if (q_out) q_scale[row] = quantize_row(yr, N, q_kp, q_levels, q_out + row * q_kp);
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* attention in int16: the encoder's bidirectional multi-head attention straight from the qkv product.
 *
 * qkv: head-major [B, 3, n_heads, T, hd] float (e16_linear with head_dim = hd writes it so): each head's q, k and v
 * are contiguous [T, hd] blocks. lengths [B] (or NULL = all T): sequence b has its lengths[b] first tokens real,
 * the rest padding (keys past the length are masked out; query rows past it are written as zeros).
 * out [B*T, H] = softmax(q k^T / sqrt(hd)) v per head, heads side by side (transpose(1, 2).reshape's layout).
 * With starts [B] (and lengths), sequence b's real rows go to out rows starts[b] .. starts[b] + lengths[b] - 1
 * instead and no padding row is written (packed rows: out [sum of lengths, H] when starts are their prefix sums).
 *
 * Both products run on the GEMM microkernel, in exact int32 sums:
 *   scores = (q_i . k_j) with q and k quantised per row (token) at levels_for(hd) -> times sq_i * sk_j / sqrt(hd);
 *   p = exp(score - row max) in float (so max p = 1), quantised as rint(p * Lp), Lp = levels_for(len);
 *   out_i = sum_j pq_ij vq_j * sv / sum_j pq_ij, v quantised per column (head dim) over the real tokens at Lp.
 * Cosine to float attention on MiniLM: 0.99997 for the whole model. Work items are (sequence, head) pairs over
 * the OpenMP threads; each quantises and packs its k (as key panels) and v (as head-dim panels) once, then takes
 * MR query rows at a time. */

/* the largest L with L * L * kp <= 2^31 - 1, at most 32767 (model.encoder_quant.int16_levels) */
static int levels_for(int64_t kp) {
    const int64_t limit = 2147483647LL / (kp > 0 ? kp : 1);
    int64_t l = (int64_t)sqrt((double)limit);
    while (l * l > limit) l--;
    while ((l + 1) * (l + 1) <= limit) l++;
    return (int)(l < 32767 ? l : 32767);
}

#define SROW 512 /* the scores' row stride for sequences up to 512 tokens */

typedef struct {
    int16_t *qi;     /* [T][hdp]: the query rows, quantised */
    float *sq;       /* [T] */
    int16_t *kpan;   /* [lp / 16][hdp / 2][16][2]: the keys as weight panels (16 keys each) */
    float *sk;       /* [lp] */
    int16_t *vpan;   /* [ceil(hd / 16)][lp / 2][16][2]: v^T as weight panels (16 head dims each) */
    float *sv;       /* [ceil(hd / 16) * 16], then as many for the inverse scales */
    float *scores;   /* [MR][srow] */
    int16_t *prow;   /* [MR][lp] */
    int16_t *tmp;    /* [hdp] */
} att_scratch_t;

static void attention_head(const float *qbase, const float *kbase, const float *vbase, int64_t H, int64_t hd,
                           int64_t len, int64_t srow, float *out, const att_scratch_t *w) {
    /* qbase, kbase, vbase: this head's [T, hd] blocks; out: this head's first output column of row 0 (stride H) */
    const int64_t hdp = (hd + 1) / 2 * 2, lp = (len + 15) / 16 * 16, dpan = (hd + NR - 1) / NR;
    const int lq = levels_for(hdp), lv = levels_for((len + 1) / 2 * 2);
    const float scale = 1.0f / sqrtf((float)hd);
    /* quantise q and k rows; k goes into key panels (zeros past len) */
    for (int64_t t = 0; t < len; t++) w->sq[t] = quantize_row(qbase + t * hd, hd, hdp, lq, w->qi + t * hdp);
    memset(w->kpan, 0, sizeof(int16_t) * (size_t)(lp * hdp));
    for (int64_t j = 0; j < lp; j++) {
        w->sk[j] = 0.0f;
        if (j >= len) continue;
        w->sk[j] = quantize_row(kbase + j * hd, hd, hdp, lq, w->tmp);
        int16_t *dst = w->kpan + (j / NR) * hdp * NR + (j % NR) * 2;
        for (int64_t dp = 0; dp < hdp / 2; dp++) memcpy(dst + dp * 2 * NR, w->tmp + 2 * dp, 4);
    }
    /* v: one scale per head dim over the real tokens, as panels of 16 dims (zeros past len and hd) */
    memset(w->vpan, 0, sizeof(int16_t) * (size_t)(dpan * lp * NR));
    float *vinv = w->sv + dpan * NR; /* [dpan * 16]: levels / max|v| per dim (0 for an all-zero dim) */
    for (int64_t d = 0; d < dpan * NR; d++) w->sv[d] = 0.0f;
    for (int64_t j = 0; j < len; j++)
        for (int64_t d = 0; d < hd; d++) {
            const float a = vbase[j * hd + d] < 0 ? -vbase[j * hd + d] : vbase[j * hd + d];
            w->sv[d] = a > w->sv[d] ? a : w->sv[d];
        }
    for (int64_t d = 0; d < dpan * NR; d++) {
        vinv[d] = w->sv[d] > TINY ? (float)lv / w->sv[d] : 0.0f;
        w->sv[d] /= (float)lv;
    }
    int64_t j = 0;
#if E16_SIMD
    if (hd % NR == 0) { /* two rows at a time: their int16 values interleaved (j, j+1) per head dim */
        for (; j + 2 <= len; j += 2)
            for (int64_t dp = 0; dp < dpan; dp++) {
                const float *v0 = vbase + j * hd + dp * NR, *v1 = v0 + hd;
                const __m256 i0 = _mm256_loadu_ps(vinv + dp * NR), i1 = _mm256_loadu_ps(vinv + dp * NR + 8);
                const __m256i a = _mm256_permute4x64_epi64(
                    _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v0), i0)),
                                       _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v0 + 8), i1))), 0xD8);
                const __m256i b = _mm256_permute4x64_epi64(
                    _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v1), i0)),
                                       _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v1 + 8), i1))), 0xD8);
                const __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);
                int16_t *dst = w->vpan + dp * lp * NR + j * NR; /* pair j/2: 2 * NR values */
                _mm256_storeu_si256((__m256i *)dst, _mm256_permute2x128_si256(lo, hi, 0x20));
                _mm256_storeu_si256((__m256i *)(dst + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
            }
    }
#endif
    for (; j < len; j++)
        for (int64_t d = 0; d < hd; d++)
            w->vpan[(d / NR) * lp * NR + (j / 2) * 2 * NR + (d % NR) * 2 + (j % 2)] =
                (int16_t)round_even(vbase[j * hd + d] * vinv[d]);
    int32_t acc[MR][NR];
    for (int64_t t0 = 0; t0 < len; t0 += MR) {
        const int rows = len - t0 < MR ? (int)(len - t0) : MR;
        const int16_t *a_rows[MR];
        float sq[MR];
        for (int r = 0; r < MR; r++) {
            const int64_t t = t0 + (r < rows ? r : 0);
            a_rows[r] = w->qi + t * hdp;
            sq[r] = w->sq[t] * scale * 1.4426950408889634f; /* log2(e): the softmax works in powers of 2 */
        }
        /* scores [MR, lp] = sq_i sk_j (q_i . k_j) / sqrt(hd), in log2 units */
        for (int64_t p = 0; p < lp / NR; p++)
            micro_scaled(a_rows, w->kpan + p * hdp * NR, hdp / 2, sq, w->sk + p * NR, w->scores + p * NR, srow);
        /* p = 2^(s - max) = exp of the natural scores' difference, over the len real keys (the pads' scores set
           to -1e30 give 0), quantised to prow = rint(p * lv); psum = its row sum */
        float inv_sum[MR];
        const int16_t *p_rows[MR];
        for (int r = 0; r < MR; r++) {
            float *s = w->scores + r * srow;
            int16_t *pq = w->prow + r * lp;
            p_rows[r] = pq;
            for (int64_t j = len; j < lp; j++) s[j] = -1e30f;
            float mx = s[0];
            int64_t j = 0;
            int32_t psum = 0;
#if E16_SIMD
            __m256 vm = _mm256_loadu_ps(s);
            for (j = 8; j < lp; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
            mx = hmax256(vm);
            const __m256 vmx = _mm256_set1_ps(mx), vl = _mm256_set1_ps((float)lv);
            __m256i vsum = _mm256_setzero_si256();
            for (j = 0; j < lp; j += 16) {
                const __m256 e0 = exp2_256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx));
                const __m256 e1 = exp2_256(_mm256_sub_ps(_mm256_loadu_ps(s + j + 8), vmx));
                const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(e0, vl));
                const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(e1, vl));
                vsum = _mm256_add_epi32(vsum, _mm256_add_epi32(lo, hi));
                _mm256_storeu_si256((__m256i *)(pq + j), _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8));
            }
            int32_t lanes[8];
            _mm256_storeu_si256((__m256i *)lanes, vsum);
            for (int i = 0; i < 8; i++) psum += lanes[i];
#else
            for (j = 1; j < lp; j++) mx = s[j] > mx ? s[j] : mx;
            for (j = 0; j < lp; j++) {
                pq[j] = (int16_t)round_even(exp2f(s[j] - mx) * (float)lv);
                psum += pq[j];
            }
#endif
            inv_sum[r] = 1.0f / (float)psum;
        }
        /* out rows = sum_j pq_ij vq_j * sv / psum_i, 16 head dims per panel */
        for (int64_t dp = 0; dp < dpan; dp++) {
            micro(p_rows, w->vpan + dp * lp * NR, lp / 2, acc);
            const int64_t d0 = dp * NR, dw = hd - d0 < NR ? hd - d0 : NR;
            for (int r = 0; r < rows; r++) {
                float *o = out + (t0 + r) * H + d0;
                for (int64_t c = 0; c < dw; c++) o[c] = (float)acc[r][c] * (w->sv[d0 + c] * inv_sum[r]);
            }
        }
    }
}

/* Returns 0, 1 on bad arguments, 2 when out of memory. */
int e16_attention(const float *qkv, int64_t B, int64_t T, int64_t H, int64_t n_heads, const int32_t *lengths,
                  const int64_t *starts, float *out, int threads) {
    if (B <= 0 || T <= 0) return 0;
    if (n_heads <= 0 || H % n_heads || (starts && !lengths)) return 1;
    const int64_t hd = H / n_heads, hdp = (hd + 1) / 2 * 2, lp = (T + 15) / 16 * 16, dpan = (hd + NR - 1) / NR;
    const int64_t srow = lp > SROW ? lp : SROW;
    int failed = 0;
#pragma omp parallel num_threads(n_threads(threads))
    {
        const size_t n16 = (size_t)(T * hdp + lp * hdp + dpan * lp * NR + MR * lp + hdp);
        const size_t n32 = (size_t)(T + lp + 2 * dpan * NR + MR * srow);
        int16_t *buf16 = (int16_t *)malloc(sizeof(int16_t) * n16);
        float *buf32 = (float *)malloc(sizeof(float) * n32);
        const int ok = buf16 && buf32;
        if (!ok) {
#pragma omp atomic write
            failed = 2;
        }
        att_scratch_t w = {0};
        if (ok) {
            w.qi = buf16;
            w.kpan = w.qi + T * hdp;
            w.vpan = w.kpan + lp * hdp;
            w.prow = w.vpan + dpan * lp * NR;
            w.tmp = w.prow + MR * lp;
            w.sq = buf32;
            w.sk = w.sq + T;
            w.sv = w.sk + lp;
            w.scores = w.sv + 2 * dpan * NR;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < B * n_heads; item++) {
            if (!ok) continue;
            const int64_t b = item / n_heads, head = item % n_heads;
            int64_t len = lengths ? lengths[b] : T;
            len = len < 0 ? 0 : (len > T ? T : len);
            const float *q = qkv + ((b * 3 + 0) * n_heads + head) * T * hd;
            const float *k = qkv + ((b * 3 + 1) * n_heads + head) * T * hd;
            const float *v = qkv + ((b * 3 + 2) * n_heads + head) * T * hd;
            float *o = out + (starts ? starts[b] : b * T) * H + head * hd;
            attention_head(q, k, v, H, hd, len, srow, o, &w);
            for (int64_t t = len; t < T && !starts; t++) memset(o + t * H, 0, sizeof(float) * (size_t)hd);
        }
        free(buf16);
        free(buf32);
    }
    return failed;
}

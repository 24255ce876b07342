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

int e16_simd(void) { return E16_SIMD; }
int e16_panel(void) { return NR; }

static int n_threads(int threads) { return threads > 0 ? threads : 1; }

/* ---------------------------------------------------------------------------------------------------------- */
/* vector math: exp and erf (float32, AVX2) */

#if E16_SIMD
static inline __m256 exp256(__m256 x) {
    /* exp(x) = 2^n * p(r), n = round(x / ln2), r = x - n ln2 (ln2 split in two), p: degree-6 minimax-style
       polynomial (Cephes expf); relative error ~2 ulp on [-87, 88]. */
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
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
    for (; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    const float inv = amax > 0.0f ? (float)levels / amax : 0.0f;
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
    for (; k < K; k++) q[k] = (int16_t)lrintf(x[k] * inv);
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
/* the microkernel: acc[r][c] = sum_k qa[row r][k] * panel column c, for MR rows x NR columns. ap: the MR rows
   packed pair by pair, ap[kk * MR + r] = the int16 pair (qa[r][2kk], qa[r][2kk+1]) as one int32 (pack_rows), so the
   six broadcasts of a step read one contiguous 24-byte run. */

static void micro(const int32_t *ap, const int16_t *panel, int64_t kpairs, int32_t acc[MR][NR]) {
#if E16_SIMD
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define E16_ROW(r, lo, hi)                                                       \
    do {                                                                         \
        const __m256i a_ = _mm256_set1_epi32(ap[kk * MR + (r)]);                 \
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(a_, b0));                    \
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(a_, b1));                    \
    } while (0)
    for (int64_t kk = 0; kk < kpairs; kk++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(panel + kk * 2 * NR));
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(panel + kk * 2 * NR + 16));
        E16_ROW(0, c00, c01);
        E16_ROW(1, c10, c11);
        E16_ROW(2, c20, c21);
        E16_ROW(3, c30, c31);
        E16_ROW(4, c40, c41);
        E16_ROW(5, c50, c51);
    }
#undef E16_ROW
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
            int16_t pair[2];
            memcpy(pair, ap + kk * MR + r, 4);
            for (int c = 0; c < NR; c++) acc[r][c] += pair[0] * bp[2 * c] + pair[1] * bp[2 * c + 1];
        }
    }
#endif
}

/* rows m0..m1 of a [M, Kp] into groups of MR rows, each [Kp/2][MR] int32 pairs (the last group repeats its
   first row to fill MR) */
static void pack_rows(const int16_t *a, int64_t m0, int64_t m1, int64_t Kp, int32_t *ap) {
    const int64_t kpairs = Kp / 2;
    for (int64_t m = m0; m < m1; m += MR, ap += kpairs * MR) {
        const int rows = m1 - m < MR ? (int)(m1 - m) : MR;
        for (int r = 0; r < MR; r++) {
            const int16_t *row = a + (m + (r < rows ? r : 0)) * Kp;
            for (int64_t kk = 0; kk < kpairs; kk++) memcpy(ap + kk * MR + r, row + 2 * kk, 4);
        }
    }
}

/* Where the product's rows go: row-major [rows, N] from y (row m at y + (m - m0) * N), or head-major when
   head_dim > 0: element (m, n) of sequence b = m / seq, token t = m % seq, group g = n / head_dim, lane d = n % head_dim
   at y[((b * (N / head_dim) + g) * seq + t) * head_dim + d] (y = the whole output; BertLayer's qkv as
   [B, 3, n_heads, T, hd], so each head's q, k and v are contiguous [T, hd] blocks). */
typedef struct {
    float *y;
    int32_t *y_i32; /* exact sums instead, row-major [M, N] (for the tests) */
    int64_t m0, seq, head_dim;
} dest_t;

static inline float *dest_at(const dest_t *dst, int64_t row, int64_t col, int64_t N) {
    if (dst->head_dim <= 0) return dst->y + (row - dst->m0) * N + col;
    const int64_t b = row / dst->seq, t = row % dst->seq, g = col / dst->head_dim, d = col % dst->head_dim;
    return dst->y + ((b * (N / dst->head_dim) + g) * dst->seq + t) * dst->head_dim + d;
}

/* rows m0..m1 (at most MB) of the product (sa * sw * sum + bias, or the exact sums) into dst; ap: scratch of
   MB * Kp int16 for the packed rows */
static void block_product(const int16_t *a, int64_t m0, int64_t m1, int64_t Kp, const int16_t *bpack, int64_t N,
                          const float *sa, const float *sw, const float *bias, const dest_t *dst, int32_t *ap) {
    const int64_t n_panels = (N + NR - 1) / NR, kpairs = Kp / 2;
    pack_rows(a, m0, m1, Kp, ap);
    /* a panel's columns are contiguous in the destination unless the head-major layout splits them */
    const int contiguous = dst->head_dim <= 0 || dst->head_dim % NR == 0;
    int32_t acc[MR][NR];
    for (int64_t p = 0; p < n_panels; p++) {
        const int16_t *panel = bpack + p * Kp * NR;
        const int64_t c0 = p * NR, cw = N - c0 < NR ? N - c0 : NR;
        for (int64_t m = m0; m < m1; m += MR) {
            const int rows = m1 - m < MR ? (int)(m1 - m) : MR;
            micro(ap + ((m - m0) / MR) * kpairs * MR, panel, kpairs, acc);
            for (int r = 0; r < rows; r++) {
                const int64_t row = m + r;
                if (dst->y_i32) {
                    memcpy(dst->y_i32 + row * N + c0, acc[r], sizeof(int32_t) * (size_t)cw);
                    continue;
                }
                const float s = sa[row];
                int64_t c = 0;
                if (contiguous) {
                    float *out = dest_at(dst, row, c0, N);
#if E16_SIMD
                    if (cw == NR) {
                        const __m256 vs = _mm256_set1_ps(s);
                        for (; c < NR; c += 8) {
                            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)&acc[r][c])),
                                                     _mm256_mul_ps(vs, _mm256_loadu_ps(sw + c0 + c)));
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
   M = sequences * seq, N a multiple of head_dim; no row epilogue then). Returns 0, 1 on bad arguments, 2 when
   out of memory. */
int e16_linear(const int16_t *a, const float *sa, int64_t M, int64_t Kp, const int16_t *bpack, int64_t N,
               const float *sw, const float *bias, int gelu, const float *residual, const float *gamma,
               const float *beta, float eps, float *out, int16_t *q_out, float *q_scale, int64_t q_kp,
               int q_levels, int64_t seq, int64_t head_dim, int threads) {
    if (M <= 0 || N <= 0) return 0;
    if (Kp % 2 || (!out && !q_out) || (q_out && (q_kp < N || q_kp % 2 || q_levels < 1))) return 1;
    if (head_dim > 0 && (!out || q_out || gelu || residual || gamma || seq <= 0 || M % seq || N % head_dim))
        return 1;
    const int64_t blocks = (M + MB - 1) / MB;
    int failed = 0;
#pragma omp parallel num_threads(n_threads(threads))
    {
        float *scratch = out ? NULL : (float *)malloc(sizeof(float) * (size_t)(MB * N));
        int32_t *ap = (int32_t *)malloc(sizeof(int16_t) * (size_t)((MB + MR) * Kp));
        const int ok = (out || scratch) && ap;
        if (!ok) {
#pragma omp atomic write
            failed = 2;
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            if (!ok) continue;
            const int64_t m0 = b * MB, m1 = m0 + MB < M ? m0 + MB : M;
            float *y = out ? (head_dim > 0 ? out : out + m0 * N) : scratch;
            const dest_t dst = {y, NULL, m0, seq, head_dim};
            block_product(a, m0, m1, Kp, bpack, N, sa, sw, bias, &dst, ap);
            if (head_dim > 0) continue;
            for (int64_t row = m0; row < m1; row++) {
                float *yr = y + (row - m0) * N;
                if (gelu) gelu_row(yr, N);
                if (residual || gamma) residual_norm_row(yr, residual ? residual + row * N : NULL, gamma, beta, eps, N);
                if (q_out) q_scale[row] = quantize_row(yr, N, q_kp, q_levels, q_out + row * q_kp);
            }
        }
        free(scratch);
        free(ap);
    }
    return failed;
}

/* The exact int32 sums a @ qw^T -> out [M, N] (for the tests). */
int e16_gemm_s32(const int16_t *a, int64_t M, int64_t Kp, const int16_t *bpack, int64_t N, int32_t *out,
                 int threads) {
    if (M <= 0 || N <= 0) return 0;
    if (Kp % 2) return 1;
    const int64_t blocks = (M + MB - 1) / MB;
    int failed = 0;
#pragma omp parallel num_threads(n_threads(threads))
    {
        int32_t *ap = (int32_t *)malloc(sizeof(int16_t) * (size_t)((MB + MR) * Kp));
        if (!ap) {
#pragma omp atomic write
            failed = 2;
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            if (!ap) continue;
            const int64_t m0 = b * MB, m1 = m0 + MB < M ? m0 + MB : M;
            const dest_t dst = {NULL, out, m0, 0, 0};
            block_product(a, m0, m1, Kp, bpack, N, NULL, NULL, NULL, &dst, ap);
        }
        free(ap);
    }
    return failed;
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
/* attention (float32): the encoder's bidirectional multi-head attention straight from the qkv product.
 *
 * qkv: head-major [B, 3, n_heads, T, hd] float (e16_linear with head_dim = hd writes it so): each head's q, k and v
 * are contiguous [T, hd] blocks. lengths [B] (or NULL = all T): sequence b has its lengths[b] first tokens real,
 * the rest padding (keys past the length are masked out; query rows past it are written as zeros).
 * out [B*T, H] = softmax(q k^T / sqrt(hd)) v per head, heads side by side (transpose(1, 2).reshape's layout).
 * Work items are (sequence, head) pairs over the OpenMP threads; each packs its k^T in blocks of 16 keys, then
 * takes 6 query rows at a time: scores [6, L] with 12 FMA accumulators, an exact-max softmax in place, then
 * p @ v 16 dims at a time. */

#define AQ 6 /* query rows per step */

/* One (sequence, head): kT / vp / qT / scores are scratch ([lp/16][hd][16], [lp][hd], [hd][AQ], [AQ][srow]).
   `srow` is the scores' row stride: a compile-time 512 at the hot call site (so the microkernels address every
   row from one register), else lp. */
static inline __attribute__((always_inline)) void attention_head_impl(
    const float *qbase, const float *kbase, const float *vp, int64_t T, int64_t H, int64_t hd, int64_t len,
    float *out, float *kT, float *qT, float *scores, const int64_t srow) {
    /* qbase, kbase, vp: this head's [T, hd] blocks; out: this head's first output column of row 0 (stride H) */
    const int64_t lp = (len + 15) / 16 * 16;
    const float scale = 1.0f / sqrtf((float)hd);
    /* kT in blocks of 16 keys: kT[j / 16][d][j % 16] (each block contiguous), zeros past len */
    for (int64_t j = 0; j < lp; j++) {
        float *kb = kT + (j / 16) * hd * 16 + (j % 16);
        const float *k = kbase + j * hd;
        for (int64_t d = 0; d < hd; d++) kb[d * 16] = j < len ? k[d] : 0.0f;
    }
    for (int64_t t0 = 0; t0 < len; t0 += AQ) {
        const int rows = len - t0 < AQ ? (int)(len - t0) : AQ;
        for (int r = 0; r < AQ; r++) { /* qT [hd][AQ]: the query block, transposed */
            const float *q = qbase + (t0 + (r < rows ? r : 0)) * hd;
            for (int64_t d = 0; d < hd; d++) qT[d * AQ + r] = q[d];
        }
        /* scores [AQ, lp] = q k^T (unscaled) */
        int64_t j = 0;
#if E16_SIMD
        for (; j < lp; j += 16) {
            const float *kb = kT + (j / 16) * hd * 16;
            __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00;
            __m256 s30 = s00, s31 = s00, s40 = s00, s41 = s00, s50 = s00, s51 = s00;
            for (int64_t d = 0; d < hd; d++) {
                const __m256 k0 = _mm256_loadu_ps(kb + d * 16), k1 = _mm256_loadu_ps(kb + d * 16 + 8);
                const float *qd = qT + d * AQ;
                __m256 a;
                a = _mm256_broadcast_ss(qd + 0); s00 = _mm256_fmadd_ps(a, k0, s00); s01 = _mm256_fmadd_ps(a, k1, s01);
                a = _mm256_broadcast_ss(qd + 1); s10 = _mm256_fmadd_ps(a, k0, s10); s11 = _mm256_fmadd_ps(a, k1, s11);
                a = _mm256_broadcast_ss(qd + 2); s20 = _mm256_fmadd_ps(a, k0, s20); s21 = _mm256_fmadd_ps(a, k1, s21);
                a = _mm256_broadcast_ss(qd + 3); s30 = _mm256_fmadd_ps(a, k0, s30); s31 = _mm256_fmadd_ps(a, k1, s31);
                a = _mm256_broadcast_ss(qd + 4); s40 = _mm256_fmadd_ps(a, k0, s40); s41 = _mm256_fmadd_ps(a, k1, s41);
                a = _mm256_broadcast_ss(qd + 5); s50 = _mm256_fmadd_ps(a, k0, s50); s51 = _mm256_fmadd_ps(a, k1, s51);
            }
            float *sj = scores + j;
            _mm256_storeu_ps(sj + 0 * srow, s00); _mm256_storeu_ps(sj + 0 * srow + 8, s01);
            _mm256_storeu_ps(sj + 1 * srow, s10); _mm256_storeu_ps(sj + 1 * srow + 8, s11);
            _mm256_storeu_ps(sj + 2 * srow, s20); _mm256_storeu_ps(sj + 2 * srow + 8, s21);
            _mm256_storeu_ps(sj + 3 * srow, s30); _mm256_storeu_ps(sj + 3 * srow + 8, s31);
            _mm256_storeu_ps(sj + 4 * srow, s40); _mm256_storeu_ps(sj + 4 * srow + 8, s41);
            _mm256_storeu_ps(sj + 5 * srow, s50); _mm256_storeu_ps(sj + 5 * srow + 8, s51);
        }
#else
        for (int r = 0; r < AQ; r++)
            for (j = 0; j < lp; j++) {
                float acc = 0.0f;
                for (int64_t d = 0; d < hd; d++) acc += qT[d * AQ + r] * kT[(j / 16) * hd * 16 + d * 16 + j % 16];
                scores[r * srow + j] = acc;
            }
#endif
        /* softmax over the len real keys: p = exp((s - max) * scale), zero past len; 1 / sum kept per row */
        float inv_sum[AQ];
        for (int r = 0; r < AQ; r++) {
            float *s = scores + r * srow;
            float mx = s[0];
            j = 0;
#if E16_SIMD
            if (len >= 8) {
                __m256 vm = _mm256_loadu_ps(s);
                for (j = 8; j + 8 <= len; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
                mx = hmax256(vm);
            }
#endif
            for (; j < len; j++) mx = s[j] > mx ? s[j] : mx;
            float sum = 0.0f;
            j = 0;
#if E16_SIMD
            const __m256 vmx = _mm256_set1_ps(mx), vsc = _mm256_set1_ps(scale);
            __m256 vsum = _mm256_setzero_ps();
            for (; j + 8 <= len; j += 8) {
                const __m256 e = exp256(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx), vsc));
                vsum = _mm256_add_ps(vsum, e);
                _mm256_storeu_ps(s + j, e);
            }
            sum = hsum256(vsum);
#endif
            for (; j < len; j++) {
                s[j] = expf((s[j] - mx) * scale);
                sum += s[j];
            }
            for (; j < lp; j++) s[j] = 0.0f;
            inv_sum[r] = 1.0f / sum;
        }
        /* out rows = (p @ v) / sum, 16 dims at a time for all AQ rows (12 accumulators) */
#if E16_SIMD
        if (hd % 16 == 0) {
            for (int64_t d0 = 0; d0 < hd; d0 += 16) {
                __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
                __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
                const float *v = vp + d0;
                for (j = 0; j < len; j++, v += hd) {
                    const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
                    const float *pj = scores + j;
                    __m256 x;
                    x = _mm256_broadcast_ss(pj + 0 * srow); a00 = _mm256_fmadd_ps(x, v0, a00); a01 = _mm256_fmadd_ps(x, v1, a01);
                    x = _mm256_broadcast_ss(pj + 1 * srow); a10 = _mm256_fmadd_ps(x, v0, a10); a11 = _mm256_fmadd_ps(x, v1, a11);
                    x = _mm256_broadcast_ss(pj + 2 * srow); a20 = _mm256_fmadd_ps(x, v0, a20); a21 = _mm256_fmadd_ps(x, v1, a21);
                    x = _mm256_broadcast_ss(pj + 3 * srow); a30 = _mm256_fmadd_ps(x, v0, a30); a31 = _mm256_fmadd_ps(x, v1, a31);
                    x = _mm256_broadcast_ss(pj + 4 * srow); a40 = _mm256_fmadd_ps(x, v0, a40); a41 = _mm256_fmadd_ps(x, v1, a41);
                    x = _mm256_broadcast_ss(pj + 5 * srow); a50 = _mm256_fmadd_ps(x, v0, a50); a51 = _mm256_fmadd_ps(x, v1, a51);
                }
                /* rows past `rows` repeat row 0 (same values) and are not stored */
#define E16_OUT(r, lo, hi)                                                                       \
                if ((r) < rows) {                                                                \
                    float *o_ = out + (t0 + (r)) * H + d0;                                       \
                    const __m256 is_ = _mm256_set1_ps(inv_sum[r]);                               \
                    _mm256_storeu_ps(o_, _mm256_mul_ps(lo, is_));                                \
                    _mm256_storeu_ps(o_ + 8, _mm256_mul_ps(hi, is_));                            \
                }
                E16_OUT(0, a00, a01) E16_OUT(1, a10, a11) E16_OUT(2, a20, a21)
                E16_OUT(3, a30, a31) E16_OUT(4, a40, a41) E16_OUT(5, a50, a51)
#undef E16_OUT
            }
            continue;
        }
#endif
        for (int r = 0; r < rows; r++) {
            const float *pr = scores + r * srow;
            float *o = out + (t0 + r) * H;
            for (int64_t d = 0; d < hd; d++) {
                float acc = 0.0f;
                for (j = 0; j < len; j++) acc += pr[j] * vp[j * hd + d];
                o[d] = acc * inv_sum[r];
            }
        }
    }
    for (int64_t t = len; t < T; t++) memset(out + t * H, 0, sizeof(float) * (size_t)hd);
}

#define SROW 512 /* the scores' row stride for sequences up to 512 tokens */

static void attention_head(const float *q, const float *k, const float *v, int64_t T, int64_t H, int64_t hd,
                           int64_t len, float *out, float *kT, float *qT, float *scores) {
    if (len <= SROW)
        attention_head_impl(q, k, v, T, H, hd, len, out, kT, qT, scores, SROW);
    else
        attention_head_impl(q, k, v, T, H, hd, len, out, kT, qT, scores, (len + 15) / 16 * 16);
}

/* Returns 0, 1 on bad arguments, 2 when out of memory. */
int e16_attention(const float *qkv, int64_t B, int64_t T, int64_t H, int64_t n_heads, const int32_t *lengths,
                  float *out, int threads) {
    if (B <= 0 || T <= 0) return 0;
    if (n_heads <= 0 || H % n_heads) return 1;
    const int64_t hd = H / n_heads, lp = (T + 15) / 16 * 16;
    int failed = 0;
#pragma omp parallel num_threads(n_threads(threads))
    {
        const int64_t srow = lp > SROW ? lp : SROW;
        float *buf = (float *)malloc(sizeof(float) * (size_t)(hd * lp + hd * AQ + AQ * srow));
        if (!buf) {
#pragma omp atomic write
            failed = 2;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < B * n_heads; item++) {
            if (!buf) continue;
            const int64_t b = item / n_heads, head = item % n_heads;
            int64_t len = lengths ? lengths[b] : T;
            len = len < 0 ? 0 : (len > T ? T : len);
            const float *q = qkv + ((b * 3 + 0) * n_heads + head) * T * hd;
            const float *k = qkv + ((b * 3 + 1) * n_heads + head) * T * hd;
            const float *v = qkv + ((b * 3 + 2) * n_heads + head) * T * hd;
            attention_head(q, k, v, T, H, hd, len, out + b * T * H + head * hd, buf, buf + hd * lp,
                           buf + hd * lp + hd * AQ);
        }
        free(buf);
    }
    return failed;
}

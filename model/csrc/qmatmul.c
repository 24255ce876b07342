/*
 * Native CPU decoding for model/: weight-only quantised matrix products, out[M, N] = x[M, K] @ W[N, K]^T for
 * few rows M (qm_q4_matmul, qm_q8_matmul), and a whole decode step through every decoder block in one call
 * (qm_decode_layers: RMSNorm, q/k/v, RoPE, KV-cache write, grouped-query attention, output projection,
 * SwiGLU, residuals; LoRA side paths; a float32 or float16 KV cache).
 *
 * Built at first use by model/cpu_kernels.py (the system C compiler, -O3 -march=native -fopenmp) and loaded
 * with ctypes; every pointer is a contiguous row-major buffer owned by a torch tensor. OpenMP resolves to the
 * libgomp torch has already loaded, so both share one thread pool.
 *
 * The activations are quantised to int8 per block of 32 (scale = max|x| / 127, as llama.cpp's Q8 dot products
 * do), so a block's dot product is an integer dot product (AVX2: maddubs + madd), scaled once per block:
 *
 *   int4 (asymmetric, Q4_1-like):  w = q * d_w + m_w = (q - 8) * d_w + (m_w + 8 d_w), q in 0..15
 *       sum_i w_i x_i  ~  d_w * d_x * sum_i (q_i - 8) xq_i  +  (m_w + 8 d_w) * sum_i x_i
 *                       = d_w * d_x * sum_i q_i xq_i  +  m_w * s  +  8 d_w * (s - d_x * sum_i xq_i)
 *   with s = sum_i x_i exact (in float). Only the centred weights (q - 8) meet the activations' rounding
 *   error, which halves the error of using q_i directly (llama.cpp's Q4_1 x Q8_1).
 *   int8 (symmetric, Q8_0-like):   w = q * d_w, q in -127..127, one d_w per block (per channel: repeated)
 *       sum_i w_i x_i  ~  d_w * d_x * sum_i q_i xq_i
 *
 * Nibble layout of the int4 weights (model.quant._pack_nibbles): byte j of a row holds column 2j in its low
 * nibble and column 2j+1 in its high nibble. Each quantised activation block is stored even columns first,
 * then odd ones, so the 16 low nibbles of a block line up with its first 16 activation bytes.
 */
#define _POSIX_C_SOURCE 200112L /* sched_yield under -std=c11 */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define QM_AVX2 1
#else
#define QM_AVX2 0
#endif

#define QK 32     /* block size */
#define TILE_M 4  /* activation rows sharing one pass over a weight row */

#if QM_AVX2 && defined(__F16C__)
#define QM_F16C 1  /* float16 <-> float32 conversion instructions: the float16 KV cache */
#else
#define QM_F16C 0
#endif

int qm_block_size(void) { return QK; }
int qm_has_avx2(void) { return QM_AVX2; }
int qm_has_f16c(void) { return QM_F16C; }

#if QM_AVX2
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* x [M, K] -> xq [M, K] int8, xd [M, K/32] scales, xs [M, K/32] exact block sums, xe [M, K/32] the sums'
   rounding residuals s - d_x * sum(xq). */
static void quantize_rows(const float *x, int64_t M, int64_t K, int interleave, int8_t *xq, float *xd, float *xs,
                          float *xe) {
    const int64_t nb = K / QK;
#if QM_AVX2
    /* Vectorised: the same scales and int8 values as the scalar loop below (cvtps rounds to nearest even, as
       lrintf does); the float block sum adds in another order. */
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undo packs' per-lane interleaving */
    const __m256i deint = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *src = x + m * K + b * QK;
            const __m256 v0 = _mm256_loadu_ps(src), v1 = _mm256_loadu_ps(src + 8), v2 = _mm256_loadu_ps(src + 16),
                         v3 = _mm256_loadu_ps(src + 24);
            const __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                            _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            const float amax = _mm_cvtss_f32(h);
            const float sum = hsum8(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
            const float d = amax / 127.0f;
            const __m256 inv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
            const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), q1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv)),
                          q2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), q3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
            const __m256i qs = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(qs), _mm256_extracti128_si256(qs, 1));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
            const int32_t qsum = _mm_cvtsi128_si32(t);
            /* 32 int32 -> 32 int8 in order: packs work per 128-bit lane, the permutation restores the order */
            __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
            q = _mm256_permutevar8x32_epi32(q, perm);
            if (interleave)  /* even columns first, then odd ones (see the nibble layout above) */
                q = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(q, deint), 0xD8);
            _mm256_storeu_si256((__m256i *)(xq + m * K + b * QK), q);
            xd[m * nb + b] = d;
            xs[m * nb + b] = sum;
            xe[m * nb + b] = sum - d * (float)qsum;
        }
    }
#else
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *src = x + m * K + b * QK;
            float amax = 0.0f, sum = 0.0f;
            for (int i = 0; i < QK; i++) {
                const float a = fabsf(src[i]);
                amax = a > amax ? a : amax;
                sum += src[i];
            }
            const float d = amax / 127.0f;
            const float inv = d > 0.0f ? 1.0f / d : 0.0f;
            int8_t *dst = xq + m * K + b * QK;
            int32_t qsum = 0;
            for (int i = 0; i < QK; i++) {
                const int pos = interleave ? ((i & 1) ? QK / 2 + (i >> 1) : (i >> 1)) : i;
                dst[pos] = (int8_t)lrintf(src[i] * inv);
                qsum += dst[pos];
            }
            xd[m * nb + b] = d;
            xs[m * nb + b] = sum;
            xe[m * nb + b] = sum - d * (float)qsum;
        }
    }
#endif
}

#if QM_AVX2
/* exp(x) for 8 floats: Cody-Waite range reduction x = k ln2 + r, a degree-6 polynomial for exp(r) (the
   classic single-precision coefficients, ~1 ulp), then scaling by 2^k through the exponent bits. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.0f));
    const __m256 k = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

/* x[i] = exp(x[i] - shift) over n floats; returns their sum. */
static float exp_shift_sum(float *x, int64_t n, float shift) {
    int64_t i = 0;
    float sum = 0.0f;
#if QM_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256 sh = _mm256_set1_ps(shift);
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum8(acc);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - shift);
        sum += x[i];
    }
    return sum;
}

/* out[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up over n floats. */
static void silu_mul(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
#if QM_AVX2
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 den = _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, den), _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

#define MAX_BLOCKS 1024  /* blocks per row for the batch-1 fast path (K <= 32768) */

/* ds[b] = d[b] * xd[b] over n floats */
static inline void scale_products(const float *d, const float *xd, float *ds, int64_t n) {
    int64_t b = 0;
#if QM_AVX2
    for (; b + 8 <= n; b += 8) _mm256_storeu_ps(ds + b, _mm256_mul_ps(_mm256_loadu_ps(d + b), _mm256_loadu_ps(xd + b)));
#endif
    for (; b < n; b++) ds[b] = d[b] * xd[b];
}

/* dot(a, b) over n floats */
static inline float dotf(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s = 0.0f;
#if QM_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();  /* four chains: an FMA's latency is four instructions' throughput */
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    s = hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Activations quantised for one matrix product: q [M, K] int8, then d, s, e [M, K/32] float each, in one
   buffer of act_bytes(M, K) bytes. */
typedef struct {
    int8_t *q;
    float *d, *s, *e;
    int64_t M, K;
} act_t;

static size_t act_bytes(int64_t M, int64_t K) {
    return sizeof(float) * (size_t)(3 * M * (K / QK)) + (size_t)(M * K) + 64;
}

static void act_quantize(act_t *a, void *buf, const float *x, int64_t M, int64_t K, int interleave) {
    const int64_t nb = K / QK;
    float *f = (float *)buf;
    a->d = f;
    a->s = f + M * nb;
    a->e = f + 2 * M * nb;
    a->q = (int8_t *)(f + 3 * M * nb);
    a->M = M;
    a->K = K;
    quantize_rows(x, M, K, interleave, a->q, a->d, a->s, a->e);
}

#if QM_F16C
/* dot(a, b) over n values, a float32, b float16 */
static inline float dot_f16(const float *a, const uint16_t *b, int64_t n) {
    int64_t i = 0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i))), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8),
                               _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 8))), acc1);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i))), acc0);
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * _cvtsh_ss(b[i]);
    return s;
}

/* dst[0:n] = float16(src[0:n]), rounding to nearest even (as torch's .to(torch.float16)) */
static inline void to_f16(uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
#endif

/* ---- threads: the OpenMP team, rows split evenly, and a spinning barrier ------------------------------------
   A decode step runs as one parallel region whose threads meet at barrier_wait() between phases. With
   OMP_WAIT_POLICY=PASSIVE (which the CLI sets, so idle OpenMP threads do not compete with the UI), every
   region boundary would put the helper threads to sleep and wake them again (~10 us each, ~10 per block);
   this barrier spins briefly instead and yields the CPU if a thread is late (an oversubscribed machine). */
static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int thread_count(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static void split(int64_t n, int tid, int nth, int64_t *lo, int64_t *hi) {
    *lo = n * tid / nth;
    *hi = n * (tid + 1) / nth;
}

typedef struct {
    atomic_int arrived;
    atomic_int phase;
    int n;
} qm_barrier;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void barrier_wait(qm_barrier *b) {
    if (b->n <= 1) return;
    const int phase = atomic_load_explicit(&b->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->phase, 1, memory_order_release);
        return;
    }
    for (long spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) == phase; spins++) {
        if (spins < 20000)
            cpu_relax();
        else
            sched_yield();
    }
}

#if QM_AVX2
/* For one weight row (block scales d, minimums mn) and one activation row (block scales xd, sums xs, sum
   residuals xe), over nb blocks: ds[b] = d[b] * xd[b], and returns 8 partial sums of the int4 correction
   sum_b mn[b] xs[b] + 8 d[b] xe[b] (the last nb % 8 blocks through masked loads), to be reduced together with
   the dot product's accumulators: one horizontal sum per output instead of three. */
static inline __m256 q4_scales(const float *d, const float *mn, const float *xd, const float *xs, const float *xe,
                               float *ds, int64_t nb) {
    const __m256 eight = _mm256_set1_ps(8.0f);
    __m256 tail = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const __m256 vd = _mm256_loadu_ps(d + b);
        _mm256_storeu_ps(ds + b, _mm256_mul_ps(vd, _mm256_loadu_ps(xd + b)));
        tail = _mm256_fmadd_ps(_mm256_loadu_ps(mn + b), _mm256_loadu_ps(xs + b), tail);
        tail = _mm256_fmadd_ps(_mm256_mul_ps(vd, eight), _mm256_loadu_ps(xe + b), tail);
    }
    if (b < nb) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(nb - b)), lane);
        const __m256 vd = _mm256_maskload_ps(d + b, mask);
        _mm256_maskstore_ps(ds + b, mask, _mm256_mul_ps(vd, _mm256_maskload_ps(xd + b, mask)));
        tail = _mm256_fmadd_ps(_mm256_maskload_ps(mn + b, mask), _mm256_maskload_ps(xs + b, mask), tail);
        tail = _mm256_fmadd_ps(_mm256_mul_ps(vd, eight), _mm256_maskload_ps(xe + b, mask), tail);
    }
    return tail;
}

/* One weight row n of int4 W against activation rows [m0, m0 + mt) (mt <= TILE_M, a compile-time constant at
   each call, so the accumulators stay in registers). Each row's arithmetic is the same whatever mt and m0 are
   (two FMA chains over even/odd blocks, the same scale products, the same final sums): a row's result never
   depends on which other rows share the batch, so greedy decoding is identical alone and batched. */
static inline __attribute__((always_inline)) void q4_tile(const act_t *a, const uint8_t *wr, const float *d,
                                                          const float *mn, int64_t m0, const int mt, float *out,
                                                          int64_t ldo, int64_t n) {
    const int64_t K = a->K, nb = K / QK;
    float ds[TILE_M][MAX_BLOCKS];  /* per-row block scale products, broadcast from memory (a load, not a shuffle) */
    __m256 tails[TILE_M];          /* per-row partial sums of the minimums' correction */
    for (int t = 0; t < mt; t++) {
        const int64_t m = m0 + t;
        tails[t] = q4_scales(d, mn, a->d + m * nb, a->s + m * nb, a->e + m * nb, ds[t], nb);
    }
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc0[TILE_M], acc1[TILE_M];  /* two chains per row: FMA latency */
    for (int t = 0; t < mt; t++) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const __m128i r0 = _mm_loadu_si128((const __m128i *)(wr + b * (QK / 2)));
        const __m128i r1 = _mm_loadu_si128((const __m128i *)(wr + (b + 1) * (QK / 2)));
        const __m256i w0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r0, 4), r0), low4);
        const __m256i w1 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r1, 4), r1), low4);
        for (int t = 0; t < mt; t++) {
            const int8_t *xq = a->q + (m0 + t) * K;
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * QK));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * QK));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, x0), ones);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w1, x1), ones);
            acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(ds[t] + b), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(ds[t] + b + 1), acc1[t]);
        }
    }
    for (; b < nb; b++) {
        const __m128i r0 = _mm_loadu_si128((const __m128i *)(wr + b * (QK / 2)));
        const __m256i w0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r0, 4), r0), low4);
        for (int t = 0; t < mt; t++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(a->q + (m0 + t) * K + b * QK));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, x0), ones);
            acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(ds[t] + b), acc0[t]);
        }
    }
    for (int t = 0; t < mt; t++)
        out[(m0 + t) * ldo + n] = hsum8(_mm256_add_ps(_mm256_add_ps(acc0[t], acc1[t]), tails[t]));
}

/* The same for int8 W (w: [K] int8 row, d: its block scales). */
static inline __attribute__((always_inline)) void q8_tile(const act_t *a, const int8_t *wr, const float *d,
                                                          int64_t m0, const int mt, float *out, int64_t ldo,
                                                          int64_t n) {
    const int64_t K = a->K, nb = K / QK;
    float ds[TILE_M][MAX_BLOCKS];
    for (int t = 0; t < mt; t++) scale_products(d, a->d + (m0 + t) * nb, ds[t], nb);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc0[TILE_M], acc1[TILE_M];
    for (int t = 0; t < mt; t++) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wr + b * QK));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wr + (b + 1) * QK));
        const __m256i aw0 = _mm256_sign_epi8(w0, w0), aw1 = _mm256_sign_epi8(w1, w1);  /* |w| as unsigned */
        for (int t = 0; t < mt; t++) {
            const int8_t *xq = a->q + (m0 + t) * K;
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * QK));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * QK));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw0, _mm256_sign_epi8(x0, w0)), ones);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw1, _mm256_sign_epi8(x1, w1)), ones);
            acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(ds[t] + b), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(ds[t] + b + 1), acc1[t]);
        }
    }
    for (; b < nb; b++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wr + b * QK));
        const __m256i aw0 = _mm256_sign_epi8(w0, w0);
        for (int t = 0; t < mt; t++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(a->q + (m0 + t) * K + b * QK));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw0, _mm256_sign_epi8(x0, w0)), ones);
            acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(ds[t] + b), acc0[t]);
        }
    }
    for (int t = 0; t < mt; t++) out[(m0 + t) * ldo + n] = hsum8(_mm256_add_ps(acc0[t], acc1[t]));
}

/* Rows [0, M) in tiles of TILE_M, each tile size a constant for q4_tile / q8_tile. */
#define FOR_TILES(M, CALL)                                                 \
    for (int64_t m0 = 0; m0 < (M); m0 += TILE_M) {                         \
        switch ((M) - m0 < TILE_M ? (int)((M) - m0) : TILE_M) {            \
        case 1: { const int mt = 1; CALL; break; }                         \
        case 2: { const int mt = 2; CALL; break; }                         \
        case 3: { const int mt = 3; CALL; break; }                         \
        default: { const int mt = TILE_M; CALL; break; }                   \
        }                                                                  \
    }
#endif

/* out[m * ldo + n] = (x W^T)[m, n] for n in [n0, n1), int4 W: w [N, K/2] packed nibbles, wd/wm [N, K/32]
   scales and minimums; a quantised with interleave = 1. */
static void q4_rows(const act_t *a, const uint8_t *w, const float *wd, const float *wm, int64_t n0, int64_t n1,
                    float *out, int64_t ldo) {
    const int64_t K = a->K, M = a->M, nb = K / QK;
    const int8_t *xq = a->q;
    const float *xd = a->d, *xs = a->s, *xe = a->e;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wr = w + n * (K / 2);
        const float *d = wd + n * nb;
        const float *mn = wm + n * nb;
#if QM_AVX2
        if (nb <= MAX_BLOCKS) {
            FOR_TILES(M, q4_tile(a, wr, d, mn, m0, mt, out, ldo, n))
            continue;
        }
#endif
        for (int64_t m0 = 0; m0 < M; m0 += TILE_M) {
            const int mt = (int)(M - m0 < TILE_M ? M - m0 : TILE_M);
#if QM_AVX2
            const __m128i low4 = _mm_set1_epi8(0x0F);
            const __m256i ones = _mm256_set1_epi16(1);
            __m256 acc[TILE_M];
            for (int t = 0; t < TILE_M; t++) acc[t] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const __m128i raw = _mm_loadu_si128((const __m128i *)(wr + b * (QK / 2)));
                const __m256i wv = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low4),
                                                    _mm_and_si128(raw, low4));  /* [evens | odds], 0..15 */
                const float dw = d[b];
                for (int t = 0; t < mt; t++) {
                    const int64_t m = m0 + t;
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + m * K + b * QK));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);  /* 8 x int32 */
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * xd[m * nb + b]), acc[t]);
                }
            }
            for (int t = 0; t < mt; t++) {
                const int64_t m = m0 + t;
                out[m * ldo + n] = hsum8(acc[t]) + dotf(mn, xs + m * nb, nb) + 8.0f * dotf(d, xe + m * nb, nb);
            }
#else
            for (int t = 0; t < mt; t++) {
                const int64_t m = m0 + t;
                float s = 0.0f;
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *blk = wr + b * (QK / 2);
                    const int8_t *xb = xq + m * K + b * QK;
                    int32_t isum = 0;
                    for (int j = 0; j < QK / 2; j++)
                        isum += (blk[j] & 15) * xb[j] + (blk[j] >> 4) * xb[QK / 2 + j];
                    s += d[b] * xd[m * nb + b] * (float)isum;
                }
                out[m * ldo + n] = s + dotf(mn, xs + m * nb, nb) + 8.0f * dotf(d, xe + m * nb, nb);
            }
#endif
        }
    }
}

/* out[m * ldo + n] = (x W^T)[m, n] for n in [n0, n1), int8 W: w [N, K], wd [N, K/32] block scales; a quantised
   with interleave = 0. */
static void q8_rows(const act_t *a, const int8_t *w, const float *wd, int64_t n0, int64_t n1, float *out,
                    int64_t ldo) {
    const int64_t K = a->K, M = a->M, nb = K / QK;
    const int8_t *xq = a->q;
    const float *xd = a->d;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *wr = w + n * K;
        const float *d = wd + n * nb;
#if QM_AVX2
        if (nb <= MAX_BLOCKS) {  /* batch-invariant tiles (see q4_tile) */
            FOR_TILES(M, q8_tile(a, wr, d, m0, mt, out, ldo, n))
            continue;
        }
#endif
        for (int64_t m0 = 0; m0 < M; m0 += TILE_M) {
            const int mt = (int)(M - m0 < TILE_M ? M - m0 : TILE_M);
#if QM_AVX2
            const __m256i ones = _mm256_set1_epi16(1);
            __m256 acc[TILE_M];
            for (int t = 0; t < TILE_M; t++) acc[t] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + b * QK));
                const __m256i aw = _mm256_sign_epi8(wv, wv);  /* |w| as unsigned bytes */
                const float dw = d[b];
                for (int t = 0; t < mt; t++) {
                    const int64_t m = m0 + t;
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + m * K + b * QK));
                    const __m256i sx = _mm256_sign_epi8(xv, wv);  /* x * sign(w) */
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * xd[m * nb + b]), acc[t]);
                }
            }
            for (int t = 0; t < mt; t++) out[(m0 + t) * ldo + n] = hsum8(acc[t]);
#else
            for (int t = 0; t < mt; t++) {
                const int64_t m = m0 + t;
                float s = 0.0f;
                for (int64_t b = 0; b < nb; b++) {
                    const int8_t *wb = wr + b * QK;
                    const int8_t *xb = xq + m * K + b * QK;
                    int32_t isum = 0;
                    for (int j = 0; j < QK; j++) isum += wb[j] * xb[j];
                    s += d[b] * xd[m * nb + b] * (float)isum;
                }
                out[m * ldo + n] = s;
            }
#endif
        }
    }
}

/* ---- one whole decoder block for decode (one new token per row) ------------------------------------------- */

/* A quantised linear layer, optionally with a bias and an unmerged low-rank update (LoRA): y = W x + b + B (A x).
   Mirrors model/native_decode.py's QLinear. */
typedef struct {
    int32_t kind;          /* 4 = int4 (w: nibbles, m: minimums), 8 = int8 (w: int8, m unused) */
    int32_t rank;          /* rows of A; 0 = no low-rank update */
    int64_t n, k;          /* output and input features */
    const void *w;
    const float *d, *m;    /* [N, K/32] scales (and minimums) */
    const float *bias;     /* [N] or NULL */
    const float *lora_a;   /* [rank, K] */
    const float *lora_b;   /* [N, rank], the adapter's scaling folded in */
} qm_linear;

/* A pre-norm Llama block: x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x)). Mirrors model/native_decode.py's QBlock. */
typedef struct {
    const float *attn_norm, *ffn_norm;  /* [D] */
    qm_linear qkv, o, w13, w2;          /* q/k/v stacked; gate/up stacked */
    int64_t dim, n_heads, n_kv_heads, head_dim, ffn_dim;
    float eps;
} qm_block;

/* Thread 0, before a barrier: quantise the input rows x [M, K] into a, and t [M, rank] = x A^T. */
static void linear_prepare(const qm_linear *L, const float *x, int64_t M, act_t *a, void *buf, float *t) {
    act_quantize(a, buf, x, M, L->k, L->kind == 4);
    for (int64_t m = 0; m < M; m++)
        for (int64_t r = 0; r < L->rank; r++) t[m * L->rank + r] = dotf(L->lora_a + r * L->k, x + m * L->k, L->k);
}

/* Thread tid of nth: its share of the output columns of out [M, N] = W x + bias + B t. */
static void linear_split(const qm_linear *L, const act_t *a, const float *t, int64_t M, float *out, int tid,
                         int nth) {
    const int64_t N = L->n, R = L->rank;
    int64_t n0, n1;
    split(N, tid, nth, &n0, &n1);
    if (L->kind == 4)
        q4_rows(a, (const uint8_t *)L->w, L->d, L->m, n0, n1, out, N);
    else
        q8_rows(a, (const int8_t *)L->w, L->d, n0, n1, out, N);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = n0; n < n1; n++) {
            float v = out[m * N + n];
            if (L->bias) v += L->bias[n];
            if (R > 0) v += dotf(L->lora_b + n * R, t + m * R, R);
            out[m * N + n] = v;
        }
}

/* out [M, N] = x W^T for one layer: the activations quantised once, the output columns split over threads. */
static int matmul_linear(const qm_linear *L, const float *x, int64_t M, float *out, int nthreads) {
    if (L->k % QK != 0 || M < 1) return -1;
    void *buf = malloc(act_bytes(M, L->k));
    if (!buf) return -1;
    act_t a;
    linear_prepare(L, x, M, &a, buf, NULL);
#pragma omp parallel num_threads(nthreads)
    linear_split(L, &a, NULL, M, out, thread_id(), thread_count());
    free(buf);
    return 0;
}

/*
 * int4: x [M, K] float, w [N, K/2] packed nibbles, wd/wm [N, K/32] float scales and minimums -> out [M, N].
 * Returns 0, or -1 when K is not a multiple of 32 or memory ran out.
 */
int qm_q4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *wd, const float *wm,
                 int64_t N, float *out, int nthreads) {
    const qm_linear layer = {4, 0, N, K, w, wd, wm, NULL, NULL, NULL};
    return matmul_linear(&layer, x, M, out, nthreads);
}

/*
 * int8: x [M, K] float, w [N, K] int8 in -127..127, wd [N, K/32] block scales (a per-channel scale is passed
 * repeated) -> out [M, N].
 */
int qm_q8_matmul(const float *x, int64_t M, int64_t K, const int8_t *w, const float *wd, int64_t N, float *out,
                 int nthreads) {
    const qm_linear layer = {8, 0, N, K, w, wd, NULL, NULL, NULL, NULL};
    return matmul_linear(&layer, x, M, out, nthreads);
}

static void rms_norm_rows(const float *x, const float *w, int64_t M, int64_t D, float eps, float *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D;
        const float ms = dotf(xr, xr, D) / (float)D;
        const float inv = 1.0f / sqrtf(ms + eps);
        for (int64_t i = 0; i < D; i++) out[m * D + i] = xr[i] * inv * w[i];
    }
}

/* Rotate one head vector in place (half-split pairs): v * cos + rotate_half(v) * sin. */
static void rope_head(float *v, const float *cos, const float *sin, int64_t hd) {
    const int64_t half = hd / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* y[0:n] += a * x[0:n] */
static inline void axpy(float *restrict y, const float *restrict x, float a, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

#define MAX_GROUP 64  /* query heads per key/value head */
#define S_CHUNK 128   /* cache slots per task when scoring */
#define D_CHUNK 16    /* head dimensions per task when summing values */

/*
 * Grouped-query attention of one new token per row: row m's query heads (in qkv [M, n_qkv], already rotated)
 * over cache slots [starts[m], pos[m]] of k/v caches [M, G, cache_len, hd]; out attn [M, H * hd]. kv_len is
 * max(pos) + 1 (the stride of `scores`); each row's sums run over its own slots only, in the same order
 * whatever the other rows hold, so a row's result does not depend on its neighbours in the batch.
 * Called by every thread of the team; three phases split into small tasks, so that even one row with few
 * key/value heads keeps every thread busy: scores over chunks of slots (each key row read once for the
 * R = H / G query heads sharing it), a softmax per head, and value sums over 16-wide slices of the head
 * dimension (accumulators stay in registers). Ends without a barrier.
 */
static void attend(const float *qkv, int64_t n_qkv, const void *kc, const void *vc, int kv_half, int64_t M,
                   int64_t H, int64_t G, int64_t hd, int64_t cache_len, int64_t kv_len, const int64_t *pos,
                   const int64_t *starts, float *scores, float *inv_sums, float *attn, int tid, int nth, qm_barrier *bar) {
    const int64_t R = H / G, n_chunks = (kv_len + S_CHUNK - 1) / S_CHUNK;
    const int64_t dch = hd % D_CHUNK == 0 ? D_CHUNK : hd, n_dch = hd / dch;
    const float scale = 1.0f / sqrtf((float)hd);
    int64_t lo, hi;
    split(M * G * n_chunks, tid, nth, &lo, &hi);
    for (int64_t task = lo; task < hi; task++) {
        const int64_t m = task / (G * n_chunks), g = (task / n_chunks) % G, c = task % n_chunks;
        const int64_t first = starts ? starts[m] : 0;
        const int64_t row_len = pos[m] + 1;
        const int64_t s0 = c * S_CHUNK > first ? c * S_CHUNK : first;
        const int64_t s1 = (c + 1) * S_CHUNK < row_len ? (c + 1) * S_CHUNK : row_len;
        const int64_t base = (m * G + g) * cache_len * hd;
        for (int64_t s = s0; s < s1; s++)
            for (int64_t r = 0; r < R; r++) {
                const int64_t h = g * R + r;
                const float *q = qkv + m * n_qkv + h * hd;
#if QM_F16C
                const float dot = kv_half ? dot_f16(q, (const uint16_t *)kc + base + s * hd, hd)
                                          : dotf(q, (const float *)kc + base + s * hd, hd);
#else
                const float dot = dotf(q, (const float *)kc + base + s * hd, hd);
#endif
                scores[(m * H + h) * kv_len + s] = dot * scale;
            }
    }
    barrier_wait(bar);
    split(M * H, tid, nth, &lo, &hi);
    for (int64_t task = lo; task < hi; task++) {
        const int64_t m = task / H;
        const int64_t first = starts ? starts[m] : 0;
        const int64_t row_len = pos[m] + 1;
        float *sc = scores + task * kv_len;
        float mx = -INFINITY;
        for (int64_t s = first; s < row_len; s++) mx = sc[s] > mx ? sc[s] : mx;
        inv_sums[task] = 1.0f / exp_shift_sum(sc + first, row_len - first, mx);
    }
    barrier_wait(bar);
    split(M * H * n_dch, tid, nth, &lo, &hi);
    for (int64_t task = lo; task < hi; task++) {
        const int64_t m = task / (H * n_dch), h = (task / n_dch) % H, c = task % n_dch;
        const int64_t first = starts ? starts[m] : 0;
        const int64_t base = (m * G + h / R) * cache_len * hd + c * dch, row_len = pos[m] + 1;
        const float *p = scores + (m * H + h) * kv_len;
        const float inv = inv_sums[m * H + h];
        float *o = attn + m * H * hd + h * hd + c * dch;
#if QM_F16C
        if (kv_half) {  /* float16 value rows, converted on load */
            const uint16_t *vh = (const uint16_t *)vc + base;
            if (dch == 16) {
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                for (int64_t s = first; s < row_len; s++) {
                    const __m256 w = _mm256_set1_ps(p[s]);
                    a0 = _mm256_fmadd_ps(w, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vh + s * hd))), a0);
                    a1 = _mm256_fmadd_ps(w, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vh + s * hd + 8))), a1);
                }
                const __m256 sc = _mm256_set1_ps(inv);
                _mm256_storeu_ps(o, _mm256_mul_ps(a0, sc));
                _mm256_storeu_ps(o + 8, _mm256_mul_ps(a1, sc));
            } else {
                for (int64_t i = 0; i < dch; i++) o[i] = 0.0f;
                for (int64_t s = first; s < row_len; s++)
                    for (int64_t i = 0; i < dch; i++) o[i] += p[s] * _cvtsh_ss(vh[s * hd + i]);
                for (int64_t i = 0; i < dch; i++) o[i] *= inv;
            }
            continue;
        }
#endif
        const float *v = (const float *)vc + base;
#if QM_AVX2
        if (dch == 16) {  /* the value rows' 16-float slice in two registers */
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (int64_t s = first; s < row_len; s++) {
                const __m256 w = _mm256_set1_ps(p[s]);
                a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + s * hd), a0);
                a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + s * hd + 8), a1);
            }
            const __m256 sc = _mm256_set1_ps(inv);
            _mm256_storeu_ps(o, _mm256_mul_ps(a0, sc));
            _mm256_storeu_ps(o + 8, _mm256_mul_ps(a1, sc));
            continue;
        }
#endif
        for (int64_t i = 0; i < dch; i++) o[i] = 0.0f;
        for (int64_t s = first; s < row_len; s++) axpy(o, v + s * hd, p[s], dch);
        for (int64_t i = 0; i < dch; i++) o[i] *= inv;
    }
}

/*
 * Decode one token per row through `n_layers` blocks, in place on x [M, D] (float32).
 * pos [M]: each row's cache slot for its new token (rows are independent sequences: continuous batching, or
 * all equal for a left-padded batch); cos/sin [max_seq_len, head_dim]: the rotary tables (row m uses pos[m]).
 * k_caches/v_caches: per layer, [>= M, n_kv_heads, cache_len, head_dim], float32 or (kv_half) float16; row m's
 * new key/value is written at slot pos[m]. Row m attends to slots [starts[m], pos[m]] (starts: left padding;
 * NULL = 0).
 * Returns 0, or -1 when memory ran out or a shape is unsupported.
 */
int qm_decode_layers(const qm_block *blocks, int64_t n_layers, float *x, int64_t M, const int64_t *pos,
                     const float *cos, const float *sin, const int64_t *starts, void *const *k_caches,
                     void *const *v_caches, int64_t cache_len, int kv_half, int nthreads) {
    if (n_layers < 1 || M < 1 || (kv_half && !QM_F16C)) return -1;
    int64_t max_pos = 0;
    for (int64_t m = 0; m < M; m++) {
        if (pos[m] < 0 || pos[m] >= cache_len) return -1;
        max_pos = pos[m] > max_pos ? pos[m] : max_pos;
    }
    const qm_block *b0 = &blocks[0];
    const int64_t D = b0->dim, H = b0->n_heads, G = b0->n_kv_heads, hd = b0->head_dim, F = b0->ffn_dim;
    const int64_t n_qkv = (H + 2 * G) * hd, kv_len = max_pos + 1;
    if (G < 1 || H % G != 0 || H / G > MAX_GROUP || hd % 2) return -1;
    int64_t max_rank = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        const qm_linear *ls[4] = {&blocks[l].qkv, &blocks[l].o, &blocks[l].w13, &blocks[l].w2};
        const int64_t want_k[4] = {D, H * hd, D, F}, want_n[4] = {n_qkv, D, 2 * F, D};
        for (int i = 0; i < 4; i++) {
            if (ls[i]->k != want_k[i] || ls[i]->n != want_n[i] || ls[i]->k % QK) return -1;
            max_rank = ls[i]->rank > max_rank ? ls[i]->rank : max_rank;
        }
    }
    const int64_t max_k = D > F ? (D > H * hd ? D : H * hd) : (F > H * hd ? F : H * hd);
    float *xn = (float *)malloc(sizeof(float) * (size_t)(M * D));
    float *qkv = (float *)malloc(sizeof(float) * (size_t)(M * n_qkv));
    float *attn = (float *)malloc(sizeof(float) * (size_t)(M * H * hd));
    float *hid = (float *)malloc(sizeof(float) * (size_t)(M * 2 * F));
    float *act = (float *)malloc(sizeof(float) * (size_t)(M * F));
    float *proj = (float *)malloc(sizeof(float) * (size_t)(M * D));
    float *scores = (float *)malloc(sizeof(float) * (size_t)(M * H * kv_len));
    float *inv_sums = (float *)malloc(sizeof(float) * (size_t)(M * H));
    float *lt = (float *)malloc(sizeof(float) * (size_t)(M * (max_rank + 1)));
    void *abuf = malloc(act_bytes(M, max_k));
    int rc = (xn && qkv && attn && hid && act && proj && scores && inv_sums && lt && abuf) ? 0 : -1;
    qm_barrier bar;
    atomic_init(&bar.arrived, 0);
    atomic_init(&bar.phase, 0);
    bar.n = 1;
    act_t a;

    if (rc == 0) {
#pragma omp parallel num_threads(nthreads > 0 ? nthreads : 1)
        {
            const int tid = thread_id(), nth = thread_count();
#pragma omp single
            bar.n = nth;  /* (the implicit barrier after `single` publishes it) */
            for (int64_t l = 0; l < n_layers; l++) {
                const qm_block *blk = &blocks[l];
                void *kc = k_caches[l], *vc = v_caches[l];
                /* attention */
                if (tid == 0) {
                    rms_norm_rows(x, blk->attn_norm, M, D, blk->eps, xn);
                    linear_prepare(&blk->qkv, xn, M, &a, abuf, lt);
                }
                barrier_wait(&bar);
                linear_split(&blk->qkv, &a, lt, M, qkv, tid, nth);
                barrier_wait(&bar);
                if (tid == 0) {
                    for (int64_t m = 0; m < M; m++) {
                        float *row = qkv + m * n_qkv;
                        const float *c = cos + pos[m] * hd, *sn = sin + pos[m] * hd;
                        for (int64_t h = 0; h < H + G; h++) rope_head(row + h * hd, c, sn, hd);  /* q and k */
                        for (int64_t g = 0; g < G; g++) {
                            const int64_t at = ((m * G + g) * cache_len + pos[m]) * hd;
#if QM_F16C
                            if (kv_half) {
                                to_f16((uint16_t *)kc + at, row + (H + g) * hd, hd);
                                to_f16((uint16_t *)vc + at, row + (H + G + g) * hd, hd);
                                continue;
                            }
#endif
                            memcpy((float *)kc + at, row + (H + g) * hd, sizeof(float) * (size_t)hd);
                            memcpy((float *)vc + at, row + (H + G + g) * hd, sizeof(float) * (size_t)hd);
                        }
                    }
                }
                barrier_wait(&bar);
                attend(qkv, n_qkv, kc, vc, kv_half, M, H, G, hd, cache_len, kv_len, pos, starts, scores, inv_sums, attn,
                       tid, nth, &bar);
                barrier_wait(&bar);
                if (tid == 0) linear_prepare(&blk->o, attn, M, &a, abuf, lt);
                barrier_wait(&bar);
                linear_split(&blk->o, &a, lt, M, proj, tid, nth);
                barrier_wait(&bar);
                /* feed-forward */
                if (tid == 0) {
                    for (int64_t i = 0; i < M * D; i++) x[i] += proj[i];
                    rms_norm_rows(x, blk->ffn_norm, M, D, blk->eps, xn);
                    linear_prepare(&blk->w13, xn, M, &a, abuf, lt);
                }
                barrier_wait(&bar);
                linear_split(&blk->w13, &a, lt, M, hid, tid, nth);
                barrier_wait(&bar);
                if (tid == 0) {
                    for (int64_t m = 0; m < M; m++) silu_mul(hid + m * 2 * F, hid + m * 2 * F + F, act + m * F, F);
                    linear_prepare(&blk->w2, act, M, &a, abuf, lt);
                }
                barrier_wait(&bar);
                linear_split(&blk->w2, &a, lt, M, proj, tid, nth);
                barrier_wait(&bar);
                if (tid == 0)
                    for (int64_t i = 0; i < M * D; i++) x[i] += proj[i];
            }
        }
    }
    free(xn); free(qkv); free(attn); free(hid); free(act); free(proj); free(scores); free(inv_sums); free(lt);
    free(abuf);
    return rc;
}

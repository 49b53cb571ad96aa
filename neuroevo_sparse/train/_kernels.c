/* CPU kernels for sparse layers whose activations are held feature-major (one row per
 * feature, one column per sample, contiguous): the layout of the vectorised MLP path.
 *
 * In that layout every active weight (r, c) touches two contiguous rows of B floats, so the
 * inner loops are plain vector loads and multiply-adds over the batch; torch's CSR x dense
 * (MKL on x86) runs the same products at about a third of the speed on one core (measured
 * by benchmarks/kernels.py). Built at install time as an optional extension (setup.py);
 * neuroevo_sparse.train.kernels loads it with ctypes and falls back to torch's CSR ops without it.
 *
 * Determinism: each output is one fixed sequence of float operations, with no fused
 * multiply-add (-ffp-contract=off), so the AVX2 clone and the portable one (target_clones,
 * chosen at run time by the CPU) give bit-identical results on every x86 machine.
 */
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
static inline v8 ld(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* out (R x B) = W h, W the CSR matrix (crow, col, val) of R rows, h (C x B). */
__attribute__((target_clones("avx2", "default")))
void ne_spmm(int64_t R, int64_t B, const int64_t *crow, const int64_t *col, const float *restrict val,
             const float *restrict h, float *restrict out) {
    for (int64_t r = 0; r < R; r++) {
        float *o = out + r * B;
        const int64_t e0 = crow[r], e1 = crow[r + 1];
        int64_t b0 = 0;
        for (; b0 + 64 <= B; b0 += 64) {  /* 64 samples: eight accumulators held in registers */
            v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
            for (int64_t e = e0; e < e1; e++) {
                const float v = val[e];
                const float *p = h + col[e] * B + b0;
                a0 += v * ld(p);      a1 += v * ld(p + 8);  a2 += v * ld(p + 16); a3 += v * ld(p + 24);
                a4 += v * ld(p + 32); a5 += v * ld(p + 40); a6 += v * ld(p + 48); a7 += v * ld(p + 56);
            }
            st(o + b0, a0);      st(o + b0 + 8, a1);  st(o + b0 + 16, a2); st(o + b0 + 24, a3);
            st(o + b0 + 32, a4); st(o + b0 + 40, a5); st(o + b0 + 48, a6); st(o + b0 + 56, a7);
        }
        for (; b0 + 8 <= B; b0 += 8) {
            v8 a0 = {0};
            for (int64_t e = e0; e < e1; e++) a0 += val[e] * ld(h + col[e] * B + b0);
            st(o + b0, a0);
        }
        for (; b0 < B; b0++) {
            float s = 0.0f;
            for (int64_t e = e0; e < e1; e++) s += val[e] * h[col[e] * B + b0];
            o[b0] = s;
        }
    }
}

static inline float hsum(v8 t) { return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7])); }

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define HAVE_SHUFFLE 1
#endif
#endif

#ifdef HAVE_SHUFFLE
/* [x0+x1, x2+x3, y0+y1, y2+y3, x4+x5, x6+x7, y4+y5, y6+y7]: AVX's hadd. */
static inline v8 pairs(v8 x, v8 y) {
    return __builtin_shufflevector(x, y, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(x, y, 1, 3, 9, 11, 5, 7, 13, 15);
}
/* The hsum of eight vectors at once, lane i of the result that of s_i, each by hsum's own
 * tree of additions (so the same bits): about one instruction per sum instead of ten. */
static inline v8 hsum8(v8 s0, v8 s1, v8 s2, v8 s3, v8 s4, v8 s5, v8 s6, v8 s7) {
    const v8 lo = pairs(pairs(s0, s1), pairs(s2, s3)), hi = pairs(pairs(s4, s5), pairs(s6, s7));
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15);
}
#endif

/* out[e] = sum_b a[r(e), b] * b[c(e), b] for every active (r(e), c(e)) of the CSR pattern:
 * the weight gradient dy h^T at the active positions only; a (R x B), b (C x B). Eight (then
 * four) active weights of a row at a time: each load of a's row serves eight dot products,
 * whose horizontal sums are taken together. */
__attribute__((target_clones("avx2", "default")))
void ne_sampled(int64_t R, int64_t B, const int64_t *crow, const int64_t *col, const float *restrict a,
                const float *restrict b, float *restrict out) {
    for (int64_t r = 0; r < R; r++) {
        const float *ar = a + r * B;
        int64_t e = crow[r];
        const int64_t e1 = crow[r + 1];
#ifdef HAVE_SHUFFLE
        for (; e + 8 <= e1; e += 8) {
            const float *p[8];
            for (int j = 0; j < 8; j++) p[j] = b + col[e + j] * B;
            v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};
            int64_t k = 0;
            for (; k + 8 <= B; k += 8) {
                const v8 x = ld(ar + k);
                s0 += x * ld(p[0] + k); s1 += x * ld(p[1] + k); s2 += x * ld(p[2] + k); s3 += x * ld(p[3] + k);
                s4 += x * ld(p[4] + k); s5 += x * ld(p[5] + k); s6 += x * ld(p[6] + k); s7 += x * ld(p[7] + k);
            }
            float t[8];
            st(t, hsum8(s0, s1, s2, s3, s4, s5, s6, s7));
            for (; k < B; k++)
                for (int j = 0; j < 8; j++) t[j] += ar[k] * p[j][k];
            for (int j = 0; j < 8; j++) out[e + j] = t[j];
        }
#endif
        for (; e + 4 <= e1; e += 4) {
            const float *b0 = b + col[e] * B, *b1 = b + col[e + 1] * B;
            const float *b2 = b + col[e + 2] * B, *b3 = b + col[e + 3] * B;
            v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
            int64_t k = 0;
            for (; k + 8 <= B; k += 8) {
                const v8 x = ld(ar + k);
                s0 += x * ld(b0 + k); s1 += x * ld(b1 + k); s2 += x * ld(b2 + k); s3 += x * ld(b3 + k);
            }
            float t0 = hsum(s0), t1 = hsum(s1), t2 = hsum(s2), t3 = hsum(s3);
            for (; k < B; k++) {
                t0 += ar[k] * b0[k]; t1 += ar[k] * b1[k]; t2 += ar[k] * b2[k]; t3 += ar[k] * b3[k];
            }
            out[e] = t0; out[e + 1] = t1; out[e + 2] = t2; out[e + 3] = t3;
        }
        for (; e < e1; e++) {
            const float *bp = b + col[e] * B;
            v8 s0 = {0};
            int64_t k = 0;
            for (; k + 8 <= B; k += 8) s0 += ld(ar + k) * ld(bp + k);
            float t = hsum(s0);
            for (; k < B; k++) t += ar[k] * bp[k];
            out[e] = t;
        }
    }
}

/* out (K x F x B) [k, f, b] = x[idx[k * B + b], f]: K batches of rows of x (N x F) gathered
 * straight into the feature-major layout, in one pass (torch: a gather, then a transposed copy). */
void ne_gather_t(int64_t K, int64_t B, int64_t F, const int64_t *idx, const float *restrict x,
                 float *restrict out) {
    for (int64_t k = 0; k < K; k++) {
        float *o = out + k * F * B;
        const int64_t *ik = idx + k * B;
        int64_t b0 = 0;
        for (; b0 + 8 <= B; b0 += 8) {
            const float *p[8];
            for (int j = 0; j < 8; j++) p[j] = x + ik[b0 + j] * F;
            for (int64_t f = 0; f < F; f++) {
                float *of = o + f * B + b0;
                for (int j = 0; j < 8; j++) of[j] = p[j][f];
            }
        }
        for (; b0 < B; b0++) {
            const float *p = x + ik[b0] * F;
            for (int64_t f = 0; f < F; f++) o[f * B + b0] = p[f];
        }
    }
}

/* A Python extension module only so that setuptools builds and installs the library beside
 * the package; its functions are called through ctypes (neuroevo_sparse/train/kernels.py). */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "CPU sparse kernels, called through ctypes by neuroevo_sparse.train.kernels", -1, NULL};
PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }

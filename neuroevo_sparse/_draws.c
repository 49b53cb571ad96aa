/* Two of numpy's random functions, with the same results, without the Python-level work that
 * costs the driver several times the computation itself:
 *
 * - `Generator.choice(n, size, replace=False)`: the same draws from the same bit generator
 *   (~30 us a call in numpy against ~5 us here; the GA draws several times per layer and child);
 * - `SeedSequence(seed, spawn_key=keys).generate_state(1, np.uint64)`: the seed of a derived
 *   stream (neuroevo_sparse.seeds.derive; ~20 us in numpy, once per individual and generation).
 *
 * choice:
 *
 * The algorithm is numpy's (numpy/random/_generator.pyx, `choice` with `shuffle=True`, no `p`):
 * for a large population of which more than 1/50 is drawn, a partial Fisher-Yates shuffle of
 * arange(n) whose last `size` entries are the draw; otherwise Floyd's algorithm with an
 * open-addressing set, then a Fisher-Yates shuffle of the draw. Every bounded integer is drawn
 * by Lemire's method as numpy's `random_bounded_uint64(state, 0, rng, 0, 0)` draws it (32-bit
 * draws below 2^32). The bit generator is used through numpy's public `bitgen_t` interface (its
 * capsule), so its state advances exactly as numpy's own call would advance it.
 *
 * Equality with the installed numpy is checked once per process by neuroevo_sparse.draws,
 * which falls back to numpy's `choice` should a numpy version ever draw differently: a run's
 * results never depend on whether this module was built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* numpy/random/bitgen.h: the layout numpy documents for extensions that draw from its bit generators. */
typedef struct {
    void *state;
    uint64_t (*next_uint64)(void *st);
    uint32_t (*next_uint32)(void *st);
    double (*next_double)(void *st);
    uint64_t (*next_raw)(void *st);
} bitgen_t;

/* A uniform integer in [0, rng], inclusive. */
static uint64_t bounded(bitgen_t *g, uint64_t rng) {
    if (rng == 0) return 0;
    if (rng <= 0xFFFFFFFFULL) {
        if (rng == 0xFFFFFFFFULL) return g->next_uint32(g->state);
        const uint32_t excl = (uint32_t)rng + 1;
        uint64_t m = (uint64_t)g->next_uint32(g->state) * excl;
        uint32_t left = (uint32_t)m;
        if (left < excl) {
            const uint32_t threshold = (UINT32_MAX - (uint32_t)rng) % excl;
            while (left < threshold) {
                m = (uint64_t)g->next_uint32(g->state) * excl;
                left = (uint32_t)m;
            }
        }
        return m >> 32;
    }
    if (rng == UINT64_MAX) return g->next_uint64(g->state);
    const uint64_t excl = rng + 1;
    __uint128_t m = (__uint128_t)g->next_uint64(g->state) * excl;
    uint64_t left = (uint64_t)m;
    if (left < excl) {
        const uint64_t threshold = (UINT64_MAX - rng) % excl;
        while (left < threshold) {
            m = (__uint128_t)g->next_uint64(g->state) * excl;
            left = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

/* Fisher-Yates over positions n-1 down to `first`. */
static void shuffle(bitgen_t *g, int64_t n, int64_t first, int64_t *data) {
    for (int64_t i = n - 1; i >= first; i--) {
        const int64_t j = (int64_t)bounded(g, (uint64_t)i);
        const int64_t t = data[j];
        data[j] = data[i];
        data[i] = t;
    }
}

static uint64_t all_ones_at_least(uint64_t v) {
    v |= v >> 1; v |= v >> 2; v |= v >> 4; v |= v >> 8; v |= v >> 16; v |= v >> 32;
    return v;
}

/* `size` distinct integers of [0, n) into out; 0, or -1 when out of memory. */
static int draw(bitgen_t *g, int64_t n, int64_t size, int64_t *out) {
    if (n > 10000 && size > n / 50) {
        int64_t *idx = malloc((size_t)n * sizeof *idx);
        if (!idx) return -1;
        for (int64_t i = 0; i < n; i++) idx[i] = i;
        shuffle(g, n, n - size > 1 ? n - size : 1, idx);
        memcpy(out, idx + (n - size), (size_t)size * sizeof *out);
        free(idx);
        return 0;
    }
    const uint64_t mask = all_ones_at_least((uint64_t)(1.2 * (double)size));
    uint64_t *set = malloc((size_t)(mask + 1) * sizeof *set);
    if (!set) return -1;
    memset(set, 0xFF, (size_t)(mask + 1) * sizeof *set);  /* UINT64_MAX: an empty slot */
    for (int64_t j = n - size; j < n; j++) {
        const uint64_t val = bounded(g, (uint64_t)j);
        uint64_t loc = val & mask;
        while (set[loc] != UINT64_MAX && set[loc] != val) loc = (loc + 1) & mask;
        if (set[loc] == UINT64_MAX) {  /* val not drawn yet */
            set[loc] = val;
            out[j - n + size] = (int64_t)val;
        } else {  /* drawn already: j instead, which cannot have been */
            loc = (uint64_t)j & mask;
            while (set[loc] != UINT64_MAX) loc = (loc + 1) & mask;
            set[loc] = (uint64_t)j;
            out[j - n + size] = j;
        }
    }
    free(set);
    shuffle(g, size, 1, out);
    return 0;
}

/* choice(capsule, n, out): fill the writable int64 buffer `out` with len(out) distinct draws
 * from [0, n), from the bit generator in `capsule` (a numpy BitGenerator's `.capsule`). The caller
 * holds the bit generator's lock, as numpy's own draws do; the GIL is released for a long draw,
 * as numpy releases it, so that it does not stall the process's other threads. */
static PyObject *choice(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "choice(capsule, n, out) takes 3 arguments");
        return NULL;
    }
    bitgen_t *g = PyCapsule_GetPointer(args[0], "BitGenerator");
    if (!g) return NULL;
    const long long n = PyLong_AsLongLong(args[1]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[2], &buf, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    const Py_ssize_t size = buf.len / (Py_ssize_t)sizeof(int64_t);
    if (buf.itemsize != 8 || !buf.format || (strcmp(buf.format, "l") && strcmp(buf.format, "q"))) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_TypeError, "choice: out must be a contiguous int64 array");
        return NULL;
    }
    if (n < 0 || size > n) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "choice: cannot take a larger sample than the population");
        return NULL;
    }
    int failed;
    if (size > 10000 || (n > 10000 && size > n / 50)) {  /* a long draw: let other threads run */
        Py_BEGIN_ALLOW_THREADS
        failed = draw(g, (int64_t)n, (int64_t)size, (int64_t *)buf.buf);
        Py_END_ALLOW_THREADS
    } else {  /* microseconds: giving the GIL away could cost the driver a thread switch */
        failed = draw(g, (int64_t)n, (int64_t)size, (int64_t *)buf.buf);
    }
    PyBuffer_Release(&buf);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

#define POOL 4
#define INIT_A 0x43b0d7e5U
#define MULT_A 0x931e8875U
#define INIT_B 0x8b51f9ddU
#define MULT_B 0x58f38dedU
#define MIX_MULT_L 0xca01f9ddU
#define MIX_MULT_R 0x4973f715U

static uint32_t hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= MULT_A;
    value *= *hash_const;
    return value ^ (value >> 16);
}

static uint32_t mix(uint32_t x, uint32_t y) {
    const uint32_t r = MIX_MULT_L * x - MIX_MULT_R * y;
    return r ^ (r >> 16);
}

/* The words of a non-negative integer below 2^64, lowest first (0 is one word). */
static int words_of(uint64_t v, uint32_t *out) {
    out[0] = (uint32_t)v;
    if (v >> 32) {
        out[1] = (uint32_t)(v >> 32);
        return 2;
    }
    return 1;
}

/* seed(seed, keys): SeedSequence(seed, spawn_key=keys).generate_state(1, np.uint64)[0] as an int,
 * for a seed and keys in [0, 2^64); None for anything else (the caller asks numpy then). */
static PyObject *seed(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "seed(seed, keys) takes an int and a tuple of ints");
        return NULL;
    }
    const Py_ssize_t nkeys = PyTuple_GET_SIZE(args[1]);
    if (nkeys > 64) Py_RETURN_NONE;
    uint32_t entropy[2 * 64 + POOL];
    const unsigned long long s = PyLong_AsUnsignedLongLong(args[0]);
    if (s == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int n = words_of(s, entropy);
    if (nkeys > 0)
        while (n < POOL) entropy[n++] = 0;
    for (Py_ssize_t k = 0; k < nkeys; k++) {
        const unsigned long long v = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args[1], k));
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        n += words_of(v, entropy + n);
    }
    uint32_t pool[POOL], hc = INIT_A;
    for (int i = 0; i < POOL; i++) pool[i] = hashmix(i < n ? entropy[i] : 0, &hc);
    for (int src = 0; src < POOL; src++)
        for (int dst = 0; dst < POOL; dst++)
            if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], &hc));
    for (int src = POOL; src < n; src++)
        for (int dst = 0; dst < POOL; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src], &hc));
    uint32_t state[2], hb = INIT_B;
    for (int i = 0; i < 2; i++) {
        uint32_t v = pool[i % POOL] ^ hb;
        hb *= MULT_B;
        v *= hb;
        state[i] = v ^ (v >> 16);
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)state[0] | ((unsigned long long)state[1] << 32));
}

static PyMethodDef methods[] = {
    {"seed", (PyCFunction)(void (*)(void))seed, METH_FASTCALL,
     "seed(seed, keys): SeedSequence(seed, spawn_key=keys).generate_state(1, np.uint64)[0]"},
    {"choice", (PyCFunction)(void (*)(void))choice, METH_FASTCALL,
     "choice(capsule, n, out): numpy's Generator.choice(n, len(out), replace=False) into out"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_draws",
                                    "numpy's choice without replacement and SeedSequence seeds, at C speed", -1, methods};
PyMODINIT_FUNC PyInit__draws(void) { return PyModule_Create(&module); }

/* hooks._fused: the full passes of a summary in one pass (optional, CPU float32).
 *
 * stats_f32(address, n) -> (sum, sum of squares, min, max, zeros, non-finite)
 * over n contiguous float32 values at `address` (a tensor's data_ptr(); the caller keeps
 * the tensor alive). Summarising a tensor took four passes of torch and numpy (sum, dot,
 * aminmax, zero count): on tensors just written by a layer, each reads the tensor from
 * memory again. This is one pass, 16 independent lanes (so the compiler vectorises
 * without reassociating anything), float32 lanes emptied into double every 2,048 values.
 *
 * min and max skip NaN (a NaN compares false); sum and squares include non-finite values,
 * and the caller recomputes them over the finite ones when `non-finite` is not zero.
 * Zeros are +0.0 and -0.0. One thread, GIL released: a second thread (a pthread per
 * call) was slower on this 2-core machine (13 ms against 9 ms for 52 M values), its core
 * taken by torch's OpenMP workers, which spin between parallel regions.
 * If the build fails, hooks.summarize uses torch's passes: same numbers, slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define LANES 16
#define BLOCK 2048

typedef struct {
    const float *x;
    int64_t n;
    double s1, s2;
    float lo, hi;
    int64_t zeros, nonfinite;
} part_t;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

CLONES static void stats_part(part_t *p) {
    const float *x = p->x;
    const int64_t n = p->n;
    float lo[LANES], hi[LANES];
    int32_t zc[LANES], nf[LANES];
    double s1 = 0.0, s2 = 0.0;
    int64_t zeros = 0, nonfinite = 0, i = 0;
    for (int j = 0; j < LANES; j++) {
        lo[j] = INFINITY;
        hi[j] = -INFINITY;
        zc[j] = nf[j] = 0;
    }
    while (i + LANES <= n) {
        int64_t end = i + BLOCK < n ? i + BLOCK : n;
        float a[LANES], b[LANES];
        for (int j = 0; j < LANES; j++) a[j] = b[j] = 0.0f;
        for (; i + LANES <= end; i += LANES) {
            for (int j = 0; j < LANES; j++) {
                float v = x[i + j];
                float d = v - v; /* NaN for NaN and ±Inf */
                a[j] += v;
                b[j] += v * v;
                lo[j] = v < lo[j] ? v : lo[j];
                hi[j] = v > hi[j] ? v : hi[j];
                zc[j] += (v == 0.0f);
                nf[j] += (d != d);
            }
        }
        for (int j = 0; j < LANES; j++) {
            s1 += a[j];
            s2 += b[j];
            zeros += zc[j];
            nonfinite += nf[j];
            zc[j] = nf[j] = 0; /* int32 lanes: emptied every block, they cannot overflow */
        }
    }
    float mn = INFINITY, mx = -INFINITY;
    for (int j = 0; j < LANES; j++) {
        mn = lo[j] < mn ? lo[j] : mn;
        mx = hi[j] > mx ? hi[j] : mx;
    }
    for (; i < n; i++) {
        float v = x[i];
        float d = v - v;
        s1 += v;
        s2 += (double)(v * v);
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        zeros += (v == 0.0f);
        nonfinite += (d != d);
    }
    p->s1 = s1;
    p->s2 = s2;
    p->lo = mn;
    p->hi = mx;
    p->zeros = zeros;
    p->nonfinite = nonfinite;
}

static PyObject *stats_f32(PyObject *self, PyObject *args) {
    unsigned long long address;
    Py_ssize_t n;
    (void)self;
    if (!PyArg_ParseTuple(args, "Kn", &address, &n)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "stats_f32: n must be >= 0");
        return NULL;
    }
    part_t p = {(const float *)(uintptr_t)address, (int64_t)n, 0.0, 0.0, 0.0f, 0.0f, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    stats_part(&p);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(ddddLL)", p.s1, p.s2, (double)p.lo, (double)p.hi, (long long)p.zeros,
                         (long long)p.nonfinite);
}

/* sumsq_f32(address, n) -> sum of squares of n contiguous float32 values (a gradient's
 * squared norm, read every step while backward leaves it in cache): float32 lanes emptied
 * into double every 2,048 values, like stats_f32. Squares past float32's range (|v| >
 * ~1.8e19) read inf, as torch.dot's do. */
CLONES static double sumsq_part(const float *x, int64_t n) {
    double total = 0.0;
    int64_t i = 0;
    while (i + LANES <= n) {
        int64_t end = i + BLOCK < n ? i + BLOCK : n;
        float b[LANES];
        for (int j = 0; j < LANES; j++) b[j] = 0.0f;
        for (; i + LANES <= end; i += LANES)
            for (int j = 0; j < LANES; j++) b[j] += x[i + j] * x[i + j];
        for (int j = 0; j < LANES; j++) total += b[j];
    }
    for (; i < n; i++) total += (double)(x[i] * x[i]);
    return total;
}

static PyObject *sumsq_f32(PyObject *self, PyObject *args) {
    unsigned long long address;
    Py_ssize_t n;
    double total;
    (void)self;
    if (!PyArg_ParseTuple(args, "Kn", &address, &n)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "sumsq_f32: n must be >= 0");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    total = sumsq_part((const float *)(uintptr_t)address, (int64_t)n);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(total);
}

/* sumsq_f32_many(addresses, counts) -> the sum of squares of many tensors' values (two
 * sequences of ints of one length: each tensor's first value's address and its count):
 * the small gradients of a model, read once at the end of backward in one call. An
 * address of 0 counts as zeros. */
static PyObject *sumsq_f32_many(PyObject *self, PyObject *args) {
    PyObject *addresses, *counts;
    double total = 0.0;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO", &addresses, &counts)) return NULL;
    PyObject *a = PySequence_Fast(addresses, "sumsq_f32_many: addresses must be a sequence");
    if (a == NULL) return NULL;
    PyObject *c = PySequence_Fast(counts, "sumsq_f32_many: counts must be a sequence");
    if (c == NULL) {
        Py_DECREF(a);
        return NULL;
    }
    Py_ssize_t m = PySequence_Fast_GET_SIZE(a);
    if (PySequence_Fast_GET_SIZE(c) != m) {
        PyErr_SetString(PyExc_ValueError, "sumsq_f32_many: addresses and counts differ in length");
        goto fail;
    }
    for (Py_ssize_t k = 0; k < m; k++) {
        unsigned long long address = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(a, k));
        Py_ssize_t n = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(c, k));
        if (PyErr_Occurred()) goto fail;
        if (n < 0) {
            PyErr_SetString(PyExc_ValueError, "sumsq_f32_many: counts must be >= 0");
            goto fail;
        }
        if (address != 0) total += sumsq_part((const float *)(uintptr_t)address, (int64_t)n);
    }
    Py_DECREF(a);
    Py_DECREF(c);
    return PyFloat_FromDouble(total);
fail:
    Py_DECREF(a);
    Py_DECREF(c);
    return NULL;
}

/* hist_f32(address, m, lo, hi, bins, out_address, clip): counts of m float32 values in
 * `bins` equal bins over [lo, hi], added into the float64 array at out_address (zeroed
 * here), binned exactly as hooks.summarize does in numpy: t = ((double)v - lo) * (bins /
 * (hi - lo)), clamped to [0, bins - 1], truncated. With clip, values outside [lo, hi]
 * are left out. The values must be finite (a sample of a tensor's finite values). */
static PyObject *hist_f32(PyObject *self, PyObject *args) {
    unsigned long long address, out_address;
    Py_ssize_t m, bins;
    double lo, hi;
    int clip;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnddnKp", &address, &m, &lo, &hi, &bins, &out_address, &clip)) return NULL;
    if (m < 0 || bins < 1 || !(hi > lo)) {
        PyErr_SetString(PyExc_ValueError, "hist_f32: needs m >= 0, bins >= 1 and hi > lo");
        return NULL;
    }
    const float *x = (const float *)(uintptr_t)address;
    double *out = (double *)(uintptr_t)out_address;
    const double scale = (double)bins / (hi - lo), last = (double)(bins - 1);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < bins; k++) out[k] = 0.0;
    for (Py_ssize_t i = 0; i < m; i++) {
        double v = (double)x[i];
        if (clip && !(v >= lo && v <= hi)) continue;
        double t = (v - lo) * scale;
        t = t < last ? t : last;
        t = t > 0.0 ? t : 0.0;
        out[(Py_ssize_t)t] += 1.0;
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sumsq_f32", sumsq_f32, METH_VARARGS, "sumsq_f32(address, n) -> sum of squares of n float32 values"},
    {"sumsq_f32_many", sumsq_f32_many, METH_VARARGS,
     "sumsq_f32_many(addresses, counts) -> sum of squares of many tensors' float32 values"},
    {"hist_f32", hist_f32, METH_VARARGS,
     "hist_f32(address, m, lo, hi, bins, out_address, clip): histogram of m float32 values into float64 out"},
    {"stats_f32", stats_f32, METH_VARARGS,
     "stats_f32(address, n) -> (sum, sum_sq, min, max, zeros, non_finite) of n float32 values"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }

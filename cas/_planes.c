/* The byte-plane kernels of cas/codec.py, each one pass over a chunk with the GIL released.
 *
 * cas/codec.py owns the frames and their format; this module only moves bits, and computes exactly
 * what codec.py's numpy code computes (tests/test_plane_kernels.py compares the two on every width,
 * rotation and order). Elements are little-endian unsigned integers of 2, 4 or 8 bytes (the bit
 * patterns of floats); plane b of n elements is byte b of each, and a chunk's planes are returned
 * one after the other (plane b at offset b * n). "Ordered" means: in the stable order of the base
 * element's exponent byte (the top byte of the element rotated left by one bit), as numpy's
 * argsort(kind="stable") orders them; the decoder recomputes that order from the base it is given.
 *
 * Built by setuptools at install as an optional extension: where it cannot be built, codec.py does
 * the same work with numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cas/_planes.c loads elements in host order, which must be little-endian (codec.py falls back to numpy)"
#endif

#define KEYS 256

/* One function per element type: T is the type, W its width in bytes. */
#define DEFINE_KERNELS(T, W)                                                                          \
static inline T rotl_##W(T v, int r) { return r ? (T)((v << r) | (v >> (8 * W - r))) : v; }           \
static inline T rotr_##W(T v, int r) { return r ? (T)((v >> r) | (v << (8 * W - r))) : v; }           \
static inline T load_##W(const uint8_t *p) { T v; memcpy(&v, p, W); return v; }                       \
static inline unsigned key_##W(T base) { return (unsigned)(base >> (8 * W - 9)) & 0xff; }               \
static inline T zigzag_##W(T d) { return (T)((T)(d << 1) ^ (T)(0 - (d >> (8 * W - 1)))); }              \
static inline T unzigzag_##W(T z) { return (T)((z >> 1) ^ (T)(0 - (z & 1))); }                         \
static inline void put_##W(uint8_t *out, Py_ssize_t n, Py_ssize_t j, T v) {                            \
    for (int b = 0; b < W; b++) out[b * n + j] = (uint8_t)(v >> (8 * b));                               \
}                                                                                                     \
static inline T get_##W(uint8_t *const *planes, Py_ssize_t j) {                                        \
    T v = 0;                                                                                          \
    for (int b = 0; b < W; b++) v |= (T)planes[b][j] << (8 * b);                                       \
    return v;                                                                                         \
}                                                                                                     \
static void split_##W(const uint8_t *src, Py_ssize_t n, int r, uint8_t *out) {                          \
    for (Py_ssize_t i = 0; i < n; i++) put_##W(out, n, i, rotl_##W(load_##W(src + i * W), r));         \
}                                                                                                     \
static void join_##W(uint8_t *const *planes, Py_ssize_t n, int r, uint8_t *out) {                      \
    for (Py_ssize_t i = 0; i < n; i++) {                                                              \
        T v = rotr_##W(get_##W(planes, i), r);                                                        \
        memcpy(out + i * W, &v, W);                                                                   \
    }                                                                                                 \
}                                                                                                     \
static void counts_##W(const uint8_t *base, Py_ssize_t n, Py_ssize_t *counts) {                        \
    for (Py_ssize_t i = 0; i < n; i++) counts[key_##W(load_##W(base + i * W))]++;                       \
}                                                                                                     \
static void delta_split_##W(const uint8_t *new_, const uint8_t *base, Py_ssize_t n, int r,              \
                            Py_ssize_t *next, uint8_t *out) {                                         \
    for (Py_ssize_t i = 0; i < n; i++) {                                                              \
        T b = load_##W(base + i * W);                                                                 \
        Py_ssize_t j = next ? next[key_##W(b)]++ : i;                                                 \
        put_##W(out, n, j, rotl_##W(zigzag_##W((T)(load_##W(new_ + i * W) - b)), r));                  \
    }                                                                                                 \
}                                                                                                     \
static void delta_join_##W(uint8_t *const *planes, const uint8_t *base, Py_ssize_t n, int r,            \
                           Py_ssize_t *next, uint8_t *out) {                                          \
    for (Py_ssize_t i = 0; i < n; i++) {                                                              \
        T b = load_##W(base + i * W);                                                                 \
        Py_ssize_t j = next ? next[key_##W(b)]++ : i;                                                 \
        T v = (T)(b + unzigzag_##W(rotr_##W(get_##W(planes, j), r)));                                 \
        memcpy(out + i * W, &v, W);                                                                   \
    }                                                                                                 \
}                                                                                                     \
static void sample_##W(const uint8_t *new_, const uint8_t *base, Py_ssize_t n, Py_ssize_t stride,       \
                       double *bits, Py_ssize_t *small) {                                             \
    for (Py_ssize_t i = 0; i < n; i += stride) {                                                      \
        T z = zigzag_##W((T)(load_##W(new_ + i * W) - load_##W(base + i * W)));                        \
        *bits += log2((double)z + 1.0);                                                               \
        *small += (z >> (8 * W - 9)) == 0;                                                            \
    }                                                                                                 \
}

DEFINE_KERNELS(uint16_t, 2)
DEFINE_KERNELS(uint32_t, 4)
DEFINE_KERNELS(uint64_t, 8)

#define DISPATCH(width, name, ...)                                                                   \
    switch (width) {                                                                                  \
    case 2: name##_2(__VA_ARGS__); break;                                                             \
    case 4: name##_4(__VA_ARGS__); break;                                                             \
    default: name##_8(__VA_ARGS__); break;                                                            \
    }

static int check_shape(Py_ssize_t len, int width, int rotation) {
    if (width != 2 && width != 4 && width != 8) {
        PyErr_Format(PyExc_ValueError, "element width %d is not 2, 4 or 8", width);
        return -1;
    }
    if (rotation < 0 || rotation >= 8 * width) {
        PyErr_Format(PyExc_ValueError, "rotation %d out of range for width %d", rotation, width);
        return -1;
    }
    if (len % width) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not whole elements of %d bytes", len, width);
        return -1;
    }
    return 0;
}

/* The base's key counts, then each key's first position in the stable order (counting sort). */
static void first_positions(const uint8_t *base, Py_ssize_t n, int width, Py_ssize_t *counts, Py_ssize_t *next) {
    memset(counts, 0, KEYS * sizeof(Py_ssize_t));
    DISPATCH(width, counts, base, n, counts)
    Py_ssize_t pos = 0;
    for (int k = 0; k < KEYS; k++) {
        next[k] = pos;
        pos += counts[k];
    }
}

/* The planes given as a sequence of `width` buffers of n bytes each (n < 0: as many as the first has);
 * fills views and pointers, and returns n, or -1 with an exception set. */
static Py_ssize_t get_planes(PyObject *seq, int width, Py_ssize_t n, Py_buffer *views, uint8_t **planes) {
    PyObject *fast = PySequence_Fast(seq, "planes must be a sequence of buffers");
    if (fast == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(fast) != width) {
        PyErr_Format(PyExc_ValueError, "%zd planes for elements of %d bytes", PySequence_Fast_GET_SIZE(fast), width);
        Py_DECREF(fast);
        return -1;
    }
    int got = 0;
    for (; got < width; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &views[got], PyBUF_SIMPLE) < 0)
            break;
        if (n < 0)
            n = views[got].len;
        if (views[got].len != n) {
            PyErr_Format(PyExc_ValueError, "plane %d has %zd bytes, expected %zd", got, views[got].len, n);
            PyBuffer_Release(&views[got]);
            break;
        }
        planes[got] = (uint8_t *)views[got].buf;
    }
    Py_DECREF(fast);
    if (got == width)
        return n;
    while (got--)
        PyBuffer_Release(&views[got]);
    return -1;
}

static void release(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++)
        PyBuffer_Release(&views[i]);
}

static PyObject *counts_list(const Py_ssize_t *counts) {
    PyObject *list = PyList_New(KEYS);
    if (list == NULL)
        return NULL;
    for (int k = 0; k < KEYS; k++) {
        PyObject *c = PyLong_FromSsize_t(counts[k]);
        if (c == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, c);
    }
    return list;
}

PyDoc_STRVAR(split_doc, "split(data, width, rotation) -> bytes\n\n"
             "The byte planes of the elements rotated left by `rotation` bits, plane after plane.");

static PyObject *split(PyObject *self, PyObject *args) {
    Py_buffer data;
    int width, rotation;
    if (!PyArg_ParseTuple(args, "y*ii:split", &data, &width, &rotation))
        return NULL;
    PyObject *out = NULL;
    if (check_shape(data.len, width, rotation) == 0 && (out = PyBytes_FromStringAndSize(NULL, data.len)) != NULL) {
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
        Py_ssize_t n = data.len / width;
        Py_BEGIN_ALLOW_THREADS
        DISPATCH(width, split, (const uint8_t *)data.buf, n, rotation, dst)
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    return out;
}

PyDoc_STRVAR(join_doc, "join(planes, width, rotation) -> bytes\n\n"
             "The elements whose byte planes these are (a sequence of `width` buffers of one length), rotated\n"
             "right by `rotation` bits.");

static PyObject *join(PyObject *self, PyObject *args) {
    PyObject *seq;
    int width, rotation;
    if (!PyArg_ParseTuple(args, "Oii:join", &seq, &width, &rotation))
        return NULL;
    if (check_shape(0, width, rotation) < 0)
        return NULL;
    Py_buffer views[8];
    uint8_t *planes[8];
    Py_ssize_t n = get_planes(seq, width, -1, views, planes);
    if (n < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * width);
    if (out != NULL) {
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        DISPATCH(width, join, planes, n, rotation, dst)
        Py_END_ALLOW_THREADS
    }
    release(views, width);
    return out;
}

PyDoc_STRVAR(gather_doc, "gather(data, width, start, step) -> bytes\n\n"
             "Elements start, start + step, ... of data (elements of `width` bytes), one after the other.");

static PyObject *gather(PyObject *self, PyObject *args) {
    Py_buffer data;
    int width;
    Py_ssize_t start, step;
    if (!PyArg_ParseTuple(args, "y*inn:gather", &data, &width, &start, &step))
        return NULL;
    PyObject *out = NULL;
    if (start < 0 || step < 1) {
        PyErr_Format(PyExc_ValueError, "start %zd, step %zd", start, step);
    } else if (check_shape(data.len, width, 0) == 0) {
        Py_ssize_t n = data.len / width, count = start < n ? (n - start - 1) / step + 1 : 0;
        if ((out = PyBytes_FromStringAndSize(NULL, count * width)) != NULL) {
            uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
            const uint8_t *src = (const uint8_t *)data.buf;
            for (Py_ssize_t k = 0; k < count; k++)
                memcpy(dst + k * width, src + (start + k * step) * width, width);
        }
    }
    PyBuffer_Release(&data);
    return out;
}

PyDoc_STRVAR(entropy_doc, "entropy(data, stride) -> float\n\n"
             "The order-0 entropy, in bits per byte, of every `stride`-th byte of data (0.0 if empty).");

static PyObject *entropy(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "y*n:entropy", &data, &stride))
        return NULL;
    if (stride < 1) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "stride %zd is not positive", stride);
    }
    Py_ssize_t counts[KEYS] = {0}, total = 0;
    double bits = 0.0;
    const uint8_t *p = (const uint8_t *)data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < data.len; i += stride) {
        counts[p[i]]++;
        total++;
    }
    for (int k = 0; k < KEYS; k++) {
        if (counts[k]) {
            double q = (double)counts[k] / (double)total;
            bits -= q * log2(q);
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyFloat_FromDouble(bits);
}

PyDoc_STRVAR(delta_split_doc, "delta_split(new, base, width, rotation, ordered) -> (bytes, counts or None)\n\n"
             "The byte planes of the zigzag-coded differences new - base (modulo 2^(8 width)), rotated left by\n"
             "`rotation` bits; ordered: in the stable order of the base's exponent bytes, whose 256 counts come\n"
             "back with them.");

static PyObject *delta_split(PyObject *self, PyObject *args) {
    Py_buffer new_, base;
    int width, rotation, ordered;
    if (!PyArg_ParseTuple(args, "y*y*iip:delta_split", &new_, &base, &width, &rotation, &ordered))
        return NULL;
    PyObject *out = NULL, *result = NULL;
    Py_ssize_t counts[KEYS], next[KEYS];
    if (new_.len != base.len) {
        PyErr_Format(PyExc_ValueError, "chunk of %zd bytes against a base of %zd", new_.len, base.len);
    } else if (check_shape(new_.len, width, rotation) == 0 && (out = PyBytes_FromStringAndSize(NULL, new_.len))) {
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
        Py_ssize_t n = new_.len / width;
        Py_BEGIN_ALLOW_THREADS
        if (ordered)
            first_positions((const uint8_t *)base.buf, n, width, counts, next);
        DISPATCH(width, delta_split, (const uint8_t *)new_.buf, (const uint8_t *)base.buf, n, rotation,
                 ordered ? next : NULL, dst)
        Py_END_ALLOW_THREADS
        PyObject *keys = ordered ? counts_list(counts) : Py_NewRef(Py_None);
        if (keys != NULL)
            result = PyTuple_Pack(2, out, keys);
        Py_XDECREF(keys);
        Py_DECREF(out);
    }
    PyBuffer_Release(&new_);
    PyBuffer_Release(&base);
    return result;
}

PyDoc_STRVAR(delta_join_doc, "delta_join(planes, base, width, rotation, ordered) -> bytes\n\n"
             "The chunk delta_split's planes (a sequence of `width` buffers) came from, given the same base.");

static PyObject *delta_join(PyObject *self, PyObject *args) {
    PyObject *seq;
    Py_buffer base;
    int width, rotation, ordered;
    if (!PyArg_ParseTuple(args, "Oy*iip:delta_join", &seq, &base, &width, &rotation, &ordered))
        return NULL;
    PyObject *out = NULL;
    Py_buffer views[8];
    uint8_t *planes[8];
    Py_ssize_t counts[KEYS], next[KEYS];
    if (check_shape(base.len, width, rotation) == 0) {
        Py_ssize_t n = base.len / width;
        if (get_planes(seq, width, n, views, planes) >= 0) {
            if ((out = PyBytes_FromStringAndSize(NULL, base.len)) != NULL) {
                uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
                Py_BEGIN_ALLOW_THREADS
                if (ordered)
                    first_positions((const uint8_t *)base.buf, n, width, counts, next);
                DISPATCH(width, delta_join, planes, (const uint8_t *)base.buf, n, rotation, ordered ? next : NULL, dst)
                Py_END_ALLOW_THREADS
            }
            release(views, width);
        }
    }
    PyBuffer_Release(&base);
    return out;
}

PyDoc_STRVAR(delta_sample_doc, "delta_sample(new, base, width, stride) -> (mean bits, share small)\n\n"
             "Over every `stride`-th element's zigzag-coded difference z: the mean of log2(z + 1), and the share\n"
             "of them below 2^(8 width - 9). (0.0, 0.0) if there are none.");

static PyObject *delta_sample(PyObject *self, PyObject *args) {
    Py_buffer new_, base;
    int width;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "y*y*in:delta_sample", &new_, &base, &width, &stride))
        return NULL;
    PyObject *result = NULL;
    if (new_.len != base.len || stride < 1) {
        PyErr_Format(PyExc_ValueError, "chunk of %zd bytes against a base of %zd, stride %zd", new_.len, base.len,
                     stride);
    } else if (check_shape(new_.len, width, 0) == 0) {
        Py_ssize_t n = new_.len / width, small = 0, count = n ? (n - 1) / stride + 1 : 0;
        double bits = 0.0;
        Py_BEGIN_ALLOW_THREADS
        DISPATCH(width, sample, (const uint8_t *)new_.buf, (const uint8_t *)base.buf, n, stride, &bits, &small)
        Py_END_ALLOW_THREADS
        result = count ? Py_BuildValue("(dd)", bits / count, (double)small / count) : Py_BuildValue("(dd)", 0.0, 0.0);
    }
    PyBuffer_Release(&new_);
    PyBuffer_Release(&base);
    return result;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS, split_doc},
    {"join", join, METH_VARARGS, join_doc},
    {"gather", gather, METH_VARARGS, gather_doc},
    {"entropy", entropy, METH_VARARGS, entropy_doc},
    {"delta_split", delta_split, METH_VARARGS, delta_split_doc},
    {"delta_join", delta_join, METH_VARARGS, delta_join_doc},
    {"delta_sample", delta_sample, METH_VARARGS, delta_sample_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "cas._planes", "Byte-plane kernels of cas/codec.py (see the source's head).", -1, methods,
};

PyMODINIT_FUNC PyInit__planes(void) { return PyModule_Create(&module); }

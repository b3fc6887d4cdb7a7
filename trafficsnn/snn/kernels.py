"""Fused hidden-layer recurrence: one call runs all time steps, forward and backward.

``lif_scan`` is a custom autograd Function with a hand-written backward over the
time loop (derivation in the C source below). Backends:

* ``"c"``: a small C kernel compiled on first use with the system C compiler
  (about 0.5 s, cached under ``$TRAFFICSNN_CACHE`` or ``~/.cache/trafficsnn``) and
  called through ctypes; CPU tensors, float32/float64, threads = torch threads.
* ``"torch"``: the same algorithm as a loop of torch ops on (B, H) tensors; any
  device (this is the CUDA path) and the fallback when no compiler is found.

``TRAFFICSNN_KERNEL=torch|c`` forces one. The plain autograd loop of
``neurons.lif_step`` stays the reference that tests compare both against.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from .neurons import EPS, surrogate_grad

_LIB = None
_LIB_TRIED = False
_LOCK = threading.Lock()


def _cache_dir() -> Path:
    base = os.environ.get("TRAFFICSNN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "trafficsnn")
    return Path(base) / "kernels"


def _cpu_tag() -> str:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    model += line
    except OSError:
        pass
    return hashlib.sha256(model.encode()).hexdigest()[:12]


def _build(source: str | None = None, stem: str = "lif_kernel") -> ctypes.CDLL | None:
    """Compile ``source`` (default: the LIF kernel below) once per CPU into the cache; None without a compiler.

    Only the default source gets its argtypes set here; other callers set their own."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None
    own = source is None
    source = C_SOURCE if own else source
    key = hashlib.sha256((source + _cpu_tag() + platform.machine()).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{stem}_{key}.so"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:   # read-only home (e.g. a sandboxed service): build in the temp dir
        target = Path(tempfile.gettempdir()) / f"trafficsnn-kernels-{os.getuid()}" / target.name
        target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / f"{stem}.c"
            src.write_text(source)
            out = Path(tmp) / f"{stem}.so"
            flags = ["-O3", "-ffp-contract=off", "-fPIC", "-shared"]
            native = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
            for extra in (native, []):
                r = subprocess.run([cc, *flags, *extra, "-o", str(out), str(src), "-lpthread", "-lm"],
                                   capture_output=True, text=True)
                if r.returncode == 0:
                    break
            else:
                warnings.warn(f"could not compile the fused kernel {stem} ({r.stderr.strip()[:200]}); "
                              "using the slower torch loop", RuntimeWarning, stacklevel=3)
                return None
            part = target.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(out, part)
            os.replace(part, target)
    lib = ctypes.CDLL(str(target))
    if not own:
        return lib
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    for sfx in ("f32", "f64"):
        fwd = getattr(lib, f"lif_fwd_{sfx}")
        fwd.argtypes = [i, i, i, i, p, p, p, p, p, i, p, p, d, p, p, p, p, p, p, i]
        fwd.restype = None
        bwd = getattr(lib, f"lif_bwd_{sfx}")
        bwd.argtypes = [i, i, i, i, p, p, p, p, p, i, p, p, d, d, p, p, p, p, p, p, p, p, p, p, i]
        bwd.restype = None
    return lib


def c_kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here."""
    global _LIB, _LIB_TRIED
    if not _LIB_TRIED:
        with _LOCK:
            if not _LIB_TRIED:
                try:
                    _LIB = _build()
                except Exception as exc:  # noqa: BLE001 - any failure means: use torch
                    warnings.warn(f"fused LIF kernel unavailable ({exc}); using the torch loop",
                                  RuntimeWarning, stacklevel=2)
                    _LIB = None
                _LIB_TRIED = True
    return _LIB


def pick_backend(x: torch.Tensor, backend: str = "auto") -> str:
    forced = os.environ.get("TRAFFICSNN_KERNEL", "").strip()
    if backend == "auto" and forced in ("c", "torch"):
        backend = forced
    if backend == "auto":
        ok = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and c_kernel() is not None
        return "c" if ok else "torch"
    if backend == "c" and (x.device.type != "cpu" or c_kernel() is None):
        raise RuntimeError("the C kernel needs CPU tensors and a C compiler")
    if backend not in ("c", "torch"):
        raise ValueError(f"unknown kernel backend {backend!r}")
    return backend


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


# ----------------------------------------------------------------------------- torch backend
def _torch_forward(I, n, b, beta, v0, s0, W, keep_v: bool):
    B, T, H = I.shape
    thr = b * n
    ne = n + EPS
    om = 1 - beta
    v, s = v0, s0
    out = I.new_zeros(B, W.shape[0], H)
    vs = I.new_empty(B, T, H) if keep_v else None
    for t in range(T):
        v = beta * (v - thr * s) + om * I[:, t]
        s = (v / ne - b > 0).to(I.dtype)
        if keep_v:
            vs[:, t] = v
        out.addcmul_(W[:, t].view(1, -1, 1), s.unsqueeze(1))
    return out, v, s, vs


def _torch_backward(I, n, b, beta, slope, v0, s0, W, gout, vs):
    B, T, H = I.shape
    thr = b * n
    ne = n + EPS
    om = 1 - beta
    gI = torch.empty_like(I)
    gn = torch.zeros_like(n)
    gb = torch.zeros_like(b)
    gbeta = I.new_zeros(())
    gW = torch.zeros_like(W)
    gvn = I.new_zeros(B, H)
    rst = -beta * thr
    for t in range(T - 1, -1, -1):
        vt = vs[:, t]
        vp = vs[:, t - 1] if t else v0
        u = vt / ne - b
        st = (u > 0).to(I.dtype)
        sp = (vp / ne - b > 0).to(I.dtype) if t else s0
        gW[:, t] = torch.einsum("bkh,bh->k", gout, st)
        g = torch.einsum("k,bkh->bh", W[:, t], gout) + gvn * rst
        gu = g * surrogate_grad(u, slope)
        gv = gu / ne + gvn * beta
        gI[:, t] = gv * om
        gbeta = gbeta + (gv * (vp - thr * sp - I[:, t])).sum()
        gb += (gv * (-beta * n * sp) - gu).sum(0)
        gn += (gv * (-beta * b * sp) - gu * vt / (ne * ne)).sum(0)
        gvn = gv
    return gI, gn, gb, gbeta, gW


# ----------------------------------------------------------------------------- autograd Function
class Events(NamedTuple):
    """Input events sorted by (sample, step): ptr[b*T+t]..ptr[b*T+t+1] index step t of sample b."""

    ptr: torch.Tensor      # (B*T+1,) int64
    neuron: torch.Tensor   # (nnz,) int64
    value: torch.Tensor    # (nnz,) float, same dtype as the weights
    n_samples: int
    n_steps: int


def make_events(sample: torch.Tensor, step: torch.Tensor, neuron: torch.Tensor, value: torch.Tensor,
                n_samples: int, n_steps: int, dtype: torch.dtype, n_inputs: int | None = None) -> Events:
    """Sort events by (sample, step) and index them; indices are range-checked (the C kernel trusts them)."""
    if sample.numel():
        lo = torch.stack([sample.min(), step.min(), neuron.min()])
        hi = torch.stack([sample.max(), step.max(), neuron.max()])
        lim = [n_samples, n_steps, n_inputs if n_inputs is not None else int(neuron.max()) + 1]
        if bool((lo < 0).any()) or any(int(h) >= m for h, m in zip(hi.tolist(), lim)):
            raise ValueError(f"events outside the batch grid: sample/step/neuron ranges "
                             f"{lo.tolist()}..{hi.tolist()} for {n_samples} samples, {n_steps} steps, "
                             f"{lim[2]} inputs")
    key = sample * n_steps + step
    if key.numel() > 1 and not bool((key[1:] >= key[:-1]).all()):
        order = torch.argsort(key, stable=True)
        key, neuron, value = key[order], neuron[order], value[order]
    counts = torch.bincount(key, minlength=n_samples * n_steps)
    ptr = torch.zeros(n_samples * n_steps + 1, dtype=torch.int64, device=key.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return Events(ptr, neuron.contiguous(), value.to(dtype).contiguous(), n_samples, n_steps)


class LIFScan(torch.autograd.Function):
    """out[b,k,:] = sum_t W[k,t] S_t[b,:] of the hidden LIF run over all steps.

    Input either dense currents ``I`` (B, T, H), or sparse events with the input
    weights ``W1`` (the kernel gathers I_t = sum of value * W1[neuron] itself and
    returns the gradient of W1 directly, never building a (B, T, H) tensor).
    """

    @staticmethod
    def forward(ctx, I, W1, n, b, beta, v0, s0, W, slope, backend, ev, keep_v):  # type: ignore[override]
        n, b, v0, s0, W = (x.contiguous() for x in (n, b, v0, s0, W))
        sparse = I is None
        if sparse:
            W1 = W1.contiguous()
            B, T, H = ev.n_samples, ev.n_steps, W1.shape[1]
            ref = W1
        else:
            I = I.contiguous()
            B, T, H = I.shape
            ref = I
        beta_t = beta.reshape(())
        K = W.shape[0]
        if backend == "c":
            lib = c_kernel()
            out = ref.new_empty(B, K, H)
            vT, sT = ref.new_empty(B, H), ref.new_empty(B, H)
            vs = None
            fn = lib.lif_fwd_f32 if ref.dtype == torch.float32 else lib.lif_fwd_f64
            if sparse:
                fn(B, T, H, K, None, _ptr(ev.ptr), _ptr(ev.neuron), _ptr(ev.value), _ptr(W1), W1.shape[0],
                   _ptr(n), _ptr(b), float(beta_t), _ptr(v0), _ptr(s0), _ptr(W),
                   _ptr(out), _ptr(vT), _ptr(sT), torch.get_num_threads())
            else:
                fn(B, T, H, K, _ptr(I), None, None, None, None, 0,
                   _ptr(n), _ptr(b), float(beta_t), _ptr(v0), _ptr(s0), _ptr(W),
                   _ptr(out), _ptr(vT), _ptr(sT), torch.get_num_threads())
        else:
            if sparse:
                raise RuntimeError("the torch backend takes dense currents")
            out, vT, sT, vs = _torch_forward(I, n, b, beta_t, v0, s0, W, keep_v)
        if keep_v:   # the C backward recomputes V; the torch one keeps it
            ctx.save_for_backward(I, W1 if sparse else None, n, b, beta_t, v0, s0, W, vs)
            ctx.ev = ev
        ctx.shape = (B, T, H)
        ctx.slope, ctx.backend, ctx.beta_shape, ctx.sparse = slope, backend, beta.shape, sparse
        ctx.mark_non_differentiable(vT, sT)
        return out, vT, sT

    @staticmethod
    def backward(ctx, gout, _gvT, _gsT):  # type: ignore[override]
        I, W1, n, b, beta_t, v0, s0, W, vs = ctx.saved_tensors
        gout = gout.contiguous()
        gI = gW1 = None
        if ctx.backend == "c":
            lib = c_kernel()
            B, T, H = ctx.shape
            K = W.shape[0]
            f64 = dict(dtype=torch.float64, device=n.device)
            gn, gb = torch.zeros(H, **f64), torch.zeros(H, **f64)
            gbeta, gW = torch.zeros(1, **f64), torch.zeros(K, T, **f64)
            fn = lib.lif_bwd_f32 if n.dtype == torch.float32 else lib.lif_bwd_f64
            if ctx.sparse:
                ev = ctx.ev
                gW1 = torch.zeros(W1.shape, **f64)
                fn(B, T, H, K, None, _ptr(ev.ptr), _ptr(ev.neuron), _ptr(ev.value), _ptr(W1), W1.shape[0],
                   _ptr(n), _ptr(b), float(beta_t), float(ctx.slope), _ptr(v0), _ptr(s0), _ptr(W),
                   _ptr(gout), None, _ptr(gW1), _ptr(gn), _ptr(gb), _ptr(gbeta), _ptr(gW),
                   torch.get_num_threads())
                gW1 = gW1.to(n.dtype)
            else:
                gI = torch.empty_like(I)
                fn(B, T, H, K, _ptr(I), None, None, None, None, 0,
                   _ptr(n), _ptr(b), float(beta_t), float(ctx.slope), _ptr(v0), _ptr(s0), _ptr(W),
                   _ptr(gout), _ptr(gI), None, _ptr(gn), _ptr(gb), _ptr(gbeta), _ptr(gW),
                   torch.get_num_threads())
            gn, gb, gbeta, gW = (x.to(n.dtype) for x in (gn, gb, gbeta, gW))
        else:
            gI, gn, gb, gbeta, gW = _torch_backward(I, n, b, beta_t, ctx.slope, v0, s0, W, gout, vs)
        return gI, gW1, gn, gb, gbeta.reshape(ctx.beta_shape), None, None, gW, None, None, None, None


def _needs_grad(*xs: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def lif_scan(I: torch.Tensor, n: torch.Tensor, b: torch.Tensor, beta: torch.Tensor,
             v0: torch.Tensor, s0: torch.Tensor, W: torch.Tensor, slope: float = 10.0,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the hidden LIF over T steps from state (v0, s0) on dense currents.

    I: (B, T, H) input currents; n, b: (H,); beta: scalar tensor; W: (K, T) time
    weights. Returns (out (B, K, H) = sum_t W[k, t] S_t, V_T, S_T). Gradients flow
    to I, n, b, beta and W (not to the initial state).
    """
    return LIFScan.apply(I, None, n, b, beta, v0, s0, W, slope, pick_backend(I, backend), None,
                         _needs_grad(I, n, b, beta, W))


def lif_scan_events(ev: Events, W1: torch.Tensor, n: torch.Tensor, b: torch.Tensor, beta: torch.Tensor,
                    v0: torch.Tensor, s0: torch.Tensor, W: torch.Tensor, slope: float = 10.0,
                    backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As :func:`lif_scan`, with I_t gathered from events and the input weights W1 (N, H)."""
    if pick_backend(W1, backend) == "c":
        return LIFScan.apply(None, W1, n, b, beta, v0, s0, W, slope, "c", ev, _needs_grad(W1, n, b, beta, W))
    rows = W1.index_select(0, ev.neuron) * ev.value.unsqueeze(1)
    counts = ev.ptr[1:] - ev.ptr[:-1]
    flat = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    cur = W1.new_zeros(ev.n_samples * ev.n_steps, W1.shape[1]).index_add(0, flat, rows)
    cur = cur.view(ev.n_samples, ev.n_steps, W1.shape[1])
    return LIFScan.apply(cur, None, n, b, beta, v0, s0, W, slope, "torch", None,
                         _needs_grad(cur, n, b, beta, W))


C_SOURCE = r"""
/* Fused forward/backward of the paper's hidden LIF layer over all time steps.
 *
 * Built on first use by trafficsnn/snn/kernels.py (cc -O3 -shared) and called
 * through ctypes on contiguous CPU tensors; torch is the fallback when no C
 * compiler is present. Compiled with -ffp-contract=off so that each step rounds
 * exactly like the torch reference loop.
 *
 *   I_t = x_t W1  (dense I given, or gathered from events: rows of W1 times counts)
 *   V_t = beta (V_{t-1} - b_j n_j S_{t-1}) + (1 - beta) I_t
 *   S_t = (V_t / (n_j + 1e-8) - b_j > 0)
 *   out[b,k,j] = sum_t Wt[k,t] S_t[b,j]       (time-weighted spike sums)
 *
 * Events are sorted by (sample, step); ptr[b*T+t] .. ptr[b*T+t+1] are those of
 * step t of sample b. A step without input after a step without spikes only
 * decays V (V = beta V, bitwise what the full update gives when 0 <= beta <= 1
 * and b >= 0, and no neuron can cross its threshold), so the forward skips it.
 *
 * Backward (adjoints gV of V_t, carried backwards from t = T-1; initial state gets none):
 *   gS_t = sum_k Wt[k,t] gout[k] - beta b n gV_{t+1}
 *   gU_t = gS_t * slope sig(slope u) sig(-slope u) = gS_t slope z/(1+z)^2, z = exp(-slope |u|)
 *   gV_t = gU_t / (n+eps) + beta gV_{t+1}
 *   gI_t = (1-beta) gV_t;  gbeta += gV_t (V_{t-1} - b n S_{t-1} - I_t)
 *   gb += -beta n S_{t-1} gV_t - gU_t;  gn += -beta b S_{t-1} gV_t - gU_t V_t/(n+eps)^2
 * The backward recomputes each sample's forward (V of all steps) into a small
 * per-thread buffer instead of keeping a (B, T, H) tensor alive.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EPSV 1e-8
#define IVDEP _Pragma("GCC ivdep")

/* exp over an array. float: a branch-free Cephes-style polynomial (2 ulp) that the
   compiler vectorises; arguments are clamped at -87 (no denormals). double: libm. */
static inline void vexp_f32(float *restrict x, int n) {
    for (int i = 0; i < n; i++) {
        float v = x[i];
        float fx = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round(v / ln 2) */
        float r = v - fx * 0.693359375f;
        r = r - fx * -2.12194440e-4f;
        float p = 1.9875691500E-4f;
        p = p * r + 1.3981999507E-3f;
        p = p * r + 8.3334519073E-3f;
        p = p * r + 4.1665795894E-2f;
        p = p * r + 1.6666665459E-1f;
        p = p * r + 5.0000001201E-1f;
        p = p * (r * r) + r + 1.0f;
        int32_t e = ((int32_t)fx + 127) << 23;
        float sc;
        memcpy(&sc, &e, sizeof sc);
        x[i] = p * sc;
    }
}
static inline void vexp_f64(double *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = exp(x[i]);
}

#define DEFINE_KERNELS(T, SFX, EXPV, EXPMIN)                                                        \
typedef struct {                                                                           \
    int b0, b1, Tn, H, K, NI;                                                              \
    const T *I, *n, *bb, *V0, *S0, *W, *gout, *val, *W1; T beta; T slope;             \
    const int64_t *ptr, *nidx;                                                             \
    T *out, *VT, *ST, *gI;                                                         \
    double *gn, *gb, *gbeta, *gW, *gW1;                                                    \
} job_##SFX;                                                                               \
                                                                                           \
static inline void gather_##SFX(const job_##SFX *a, int64_t e0, int64_t e1, T *cur) {      \
    const int H = a->H;                                                                    \
    memset(cur, 0, sizeof(T) * H);                                                         \
    for (int64_t e = e0; e < e1; e++) {                                                    \
        const T x = a->val[e];                                                             \
        const T *row = a->W1 + (size_t)a->nidx[e] * H;                                     \
        IVDEP for (int j = 0; j < H; j++) cur[j] += x * row[j];                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* One sample from its initial state: V of every step into Vloc (if given),   \
   weighted spike sums into o (if given); v, s end as the final state. */      \
static void fwd_sample_##SFX(const job_##SFX *a, int b, T *restrict v, T *restrict s, \
                             const T *restrict thr, const T *restrict ne, T *restrict cur, \
                             int can_skip, T *restrict Vloc, T *restrict o) {   \
    const int Tn = a->Tn, H = a->H, K = a->K;                                  \
    const T be = a->beta, om = (T)1 - a->beta;                                 \
    const T *restrict bb = a->bb;                                              \
    memcpy(v, a->V0 + (size_t)b * H, sizeof(T) * H);                           \
    memcpy(s, a->S0 + (size_t)b * H, sizeof(T) * H);                           \
    if (o) memset(o, 0, sizeof(T) * K * H);                                    \
    int spiked = 1;                                                            \
    for (int t = 0; t < Tn; t++) {                                             \
        const T *restrict it;                                                  \
        if (a->I) it = a->I + ((size_t)b * Tn + t) * H;                        \
        else {                                                                 \
            const int64_t e0 = a->ptr[(size_t)b * Tn + t], e1 = a->ptr[(size_t)b * Tn + t + 1]; \
            if (can_skip && e0 == e1 && !spiked) {                             \
                IVDEP for (int j = 0; j < H; j++) v[j] = be * v[j];                  \
                if (Vloc) memcpy(Vloc + (size_t)t * H, v, sizeof(T) * H);      \
                continue;                                                      \
            }                                                                  \
            gather_##SFX(a, e0, e1, cur);                                      \
            it = cur;                                                          \
        }                                                                      \
        int nsp = 0;                                                           \
        IVDEP for (int j = 0; j < H; j++) {                                          \
            T vj = be * (v[j] - thr[j] * s[j]) + om * it[j];                   \
            v[j] = vj;                                                         \
            T sj = (vj / ne[j] - bb[j] > (T)0) ? (T)1 : (T)0;                  \
            s[j] = sj;                                                         \
            nsp += (sj != (T)0);                                               \
        }                                                                      \
        spiked = nsp != 0;                                                     \
        if (Vloc) memcpy(Vloc + (size_t)t * H, v, sizeof(T) * H);              \
        if (spiked && o) for (int k = 0; k < K; k++) {                         \
            const T w = a->W[(size_t)k * Tn + t];                              \
            T *restrict ok = o + (size_t)k * H;                                \
            IVDEP for (int j = 0; j < H; j++) ok[j] += w * s[j];                     \
        }                                                                      \
    }                                                                          \
}                                                                              \
                                                                               \
static int setup_##SFX(const job_##SFX *a, T *thr, T *ne) {                    \
    int can_skip = (a->I == NULL) && a->beta >= (T)0 && a->beta <= (T)1;       \
    for (int j = 0; j < a->H; j++) { thr[j] = a->bb[j] * a->n[j]; ne[j] = a->n[j] + (T)EPSV; \
                                     if (!(a->bb[j] >= (T)0)) can_skip = 0; } \
    return can_skip;                                                           \
}                                                                              \
                                                                               \
static void *fwd_job_##SFX(void *arg) {                                        \
    job_##SFX *a = (job_##SFX *)arg;                                           \
    const int H = a->H, K = a->K;                                              \
    T *v = (T *)malloc(sizeof(T) * H * 5);                                     \
    T *s = v + H, *thr = v + 2 * H, *ne = v + 3 * H, *cur = v + 4 * H;         \
    const int can_skip = setup_##SFX(a, thr, ne);                              \
    for (int b = a->b0; b < a->b1; b++) {                                      \
        fwd_sample_##SFX(a, b, v, s, thr, ne, cur, can_skip, NULL, a->out + (size_t)b * K * H); \
        memcpy(a->VT + (size_t)b * H, v, sizeof(T) * H);                       \
        memcpy(a->ST + (size_t)b * H, s, sizeof(T) * H);                       \
    }                                                                          \
    free(v);                                                                   \
    return NULL;                                                               \
}                                                                              \
                                                                               \
static void *bwd_job_##SFX(void *arg) {                                        \
    job_##SFX *a = (job_##SFX *)arg;                                           \
    const int Tn = a->Tn, H = a->H, K = a->K;                                  \
    const T be = a->beta, om = (T)1 - a->beta, sl = a->slope;                  \
    T *buf = (T *)malloc(sizeof(T) * H * (20 + (size_t)Tn));                   \
    T *restrict gvn = buf, *restrict thr = buf + H, *restrict ne = buf + 2 * H; \
    T *restrict gs = buf + 3 * H, *restrict rst = buf + 4 * H, *restrict sp = buf + 5 * H; \
    T *restrict cur = buf + 6 * H, *restrict gcur = buf + 7 * H, *restrict vtmp = buf + 8 * H; \
    T *restrict stmp = buf + 9 * H, *restrict u = buf + 10 * H, *restrict st = buf + 11 * H; \
    T *restrict z = buf + 12 * H, *restrict up = buf + 13 * H, *restrict rne = buf + 14 * H; \
    T *restrict rne2 = buf + 15 * H, *restrict fb = buf + 16 * H, *restrict fn = buf + 17 * H; \
    T *restrict fbeta = buf + 18 * H, *restrict Vloc = buf + 20 * H;           \
    double *restrict gbl = a->gb, *restrict gnl = a->gn;                       \
    const T *restrict bb = a->bb, *restrict nn = a->n;                         \
    const int can_skip = setup_##SFX(a, thr, ne);                              \
    double gbeta = 0;                                                          \
    IVDEP for (int j = 0; j < H; j++) { rst[j] = -be * thr[j]; rne[j] = (T)1 / ne[j]; \
                                  rne2[j] = rne[j] * rne[j]; }                 \
    for (int b = a->b0; b < a->b1; b++) {                                      \
        const T *go = a->gout + (size_t)b * K * H;                             \
        fwd_sample_##SFX(a, b, vtmp, stmp, thr, ne, cur, can_skip, Vloc, NULL); \
        memset(gvn, 0, sizeof(T) * H);                                         \
        memset(fb, 0, sizeof(T) * H * 3);                                      \
        {   const T *restrict vl = Vloc + (size_t)(Tn - 1) * H;                \
            IVDEP for (int j = 0; j < H; j++) { T uj = vl[j] / ne[j] - bb[j];        \
                                          up[j] = uj; sp[j] = uj > (T)0 ? (T)1 : (T)0; } } \
        for (int t = Tn - 1; t >= 0; t--) {                                    \
            const T *restrict vt = Vloc + (size_t)t * H;                       \
            const T *restrict vp = t ? vt - H : a->V0 + (size_t)b * H;         \
            const T *restrict it; T *restrict git;                             \
            int64_t e0 = 0, e1 = 0;                                            \
            if (a->I) { it = a->I + ((size_t)b * Tn + t) * H;                  \
                        git = a->gI + ((size_t)b * Tn + t) * H; }              \
            else { e0 = a->ptr[(size_t)b * Tn + t]; e1 = a->ptr[(size_t)b * Tn + t + 1]; \
                   gather_##SFX(a, e0, e1, cur); it = cur; git = gcur; }       \
            /* u, S of step t were computed as "previous" at step t+1 */       \
            memcpy(u, up, sizeof(T) * H);                                      \
            memcpy(st, sp, sizeof(T) * H);                                     \
            if (t) { IVDEP for (int j = 0; j < H; j++) { T uj = vp[j] / ne[j] - bb[j]; \
                                                   up[j] = uj; sp[j] = uj > (T)0 ? (T)1 : (T)0; } } \
            else memcpy(sp, a->S0 + (size_t)b * H, sizeof(T) * H);             \
            IVDEP for (int j = 0; j < H; j++) gs[j] = gvn[j] * rst[j];               \
            for (int k = 0; k < K; k++) {                                      \
                const T w = a->W[(size_t)k * Tn + t];                          \
                const T *restrict gk = go + (size_t)k * H;                     \
                T lanes[16] = {0};                                             \
                int j = 0;                                                     \
                for (; j + 16 <= H; j += 16)                                   \
                    for (int q = 0; q < 16; q++) lanes[q] += gk[j + q] * st[j + q]; \
                double acc = 0;                                                \
                for (; j < H; j++) acc += (double)(gk[j] * st[j]);             \
                for (int q = 0; q < 16; q++) acc += (double)lanes[q];          \
                a->gW[(size_t)k * Tn + t] += acc;                              \
                IVDEP for (j = 0; j < H; j++) gs[j] += w * gk[j];                    \
            }                                                                  \
            IVDEP for (int j = 0; j < H; j++) { T x = -sl * (u[j] < (T)0 ? -u[j] : u[j]); \
                                          z[j] = x < (T)EXPMIN ? (T)EXPMIN : x; } \
            EXPV(z, H);                                                        \
            IVDEP for (int j = 0; j < H; j++) {                                      \
                T zj = z[j];                                                   \
                T sg = sl * zj / (((T)1 + zj) * ((T)1 + zj));                  \
                T gu = gs[j] * sg;                                             \
                T gv = gu * rne[j] + gvn[j] * be;                              \
                git[j] = gv * om;                                              \
                fbeta[j] += gv * (vp[j] - thr[j] * sp[j] - it[j]);             \
                fb[j] += gv * (-be * nn[j] * sp[j]) - gu;                      \
                fn[j] += gv * (-be * bb[j] * sp[j]) - gu * vt[j] * rne2[j];    \
                gvn[j] = gv;                                                   \
            }                                                                  \
            for (int64_t q = e0; q < e1; q++) {                                \
                const double x = (double)a->val[q];                            \
                double *restrict row = a->gW1 + (size_t)a->nidx[q] * H;        \
                IVDEP for (int j = 0; j < H; j++) row[j] += x * (double)gcur[j];     \
            }                                                                  \
        }                                                                      \
        IVDEP for (int j = 0; j < H; j++) { gbl[j] += (double)fb[j]; gnl[j] += (double)fn[j]; \
                                      gbeta += (double)fbeta[j]; }             \
    }                                                                          \
    a->gbeta[0] += gbeta;                                                      \
    free(buf);                                                                 \
    return NULL;                                                               \
}                                                                              \
                                                                               \
static void run_##SFX(job_##SFX *base, int B, int nthreads, void *(*fn)(void *), int bwd) { \
    if (nthreads < 1) nthreads = 1;                                                        \
    if (nthreads > B) nthreads = B > 0 ? B : 1;                                            \
    job_##SFX *jobs = (job_##SFX *)calloc(nthreads, sizeof(job_##SFX));                    \
    pthread_t *th = (pthread_t *)calloc(nthreads, sizeof(pthread_t));                      \
    const size_t H = (size_t)base->H, KT = (size_t)base->K * base->Tn;                     \
    const size_t nw1 = base->I ? 0 : (size_t)base->NI * H;                                 \
    const size_t gsz = H * 2 + 1 + KT + nw1;                                               \
    double *gbuf = bwd ? (double *)calloc(gsz * nthreads, sizeof(double)) : NULL;          \
    for (int i = 0; i < nthreads; i++) {                                                   \
        jobs[i] = *base;                                                                   \
        jobs[i].b0 = (int)((long)B * i / nthreads);                                        \
        jobs[i].b1 = (int)((long)B * (i + 1) / nthreads);                                  \
        if (bwd) { double *g = gbuf + gsz * i; jobs[i].gn = g; jobs[i].gb = g + H;         \
                   jobs[i].gbeta = g + 2 * H; jobs[i].gW = g + 2 * H + 1;                  \
                   jobs[i].gW1 = nw1 ? g + 2 * H + 1 + KT : NULL; }                        \
    }                                                                                      \
    for (int i = 1; i < nthreads; i++) pthread_create(&th[i], NULL, fn, &jobs[i]);         \
    fn(&jobs[0]);                                                                          \
    for (int i = 1; i < nthreads; i++) pthread_join(th[i], NULL);                          \
    if (bwd) {                                                                             \
        for (int i = 0; i < nthreads; i++) {                                               \
            double *g = gbuf + gsz * i;                                                    \
            for (size_t j = 0; j < H; j++) { base->gn[j] += g[j]; base->gb[j] += g[H + j]; } \
            base->gbeta[0] += g[2 * H];                                                    \
            for (size_t q = 0; q < KT; q++) base->gW[q] += g[2 * H + 1 + q];               \
            for (size_t q = 0; q < nw1; q++) base->gW1[q] += g[2 * H + 1 + KT + q];        \
        }                                                                                  \
        free(gbuf);                                                                        \
    }                                                                                      \
    free(jobs); free(th);                                                                  \
}                                                                                          \
                                                                                           \
/* I != NULL: dense currents; else events (ptr, nidx, val) and W1 (NI, H). */              \
void lif_fwd_##SFX(int B, int Tn, int H, int K, const T *I,                                \
                   const int64_t *ptr, const int64_t *nidx, const T *val, const T *W1, int NI, \
                   const T *n, const T *bb, double beta, const T *V0, const T *S0, const T *W, \
                   T *out, T *VT, T *ST, int nthreads) {                          \
    job_##SFX j; memset(&j, 0, sizeof j);                                                  \
    j.Tn = Tn; j.H = H; j.K = K; j.I = I; j.ptr = ptr; j.nidx = nidx; j.val = val;         \
    j.W1 = W1; j.NI = NI; j.n = n; j.bb = bb; j.beta = (T)beta;                            \
    j.V0 = V0; j.S0 = S0; j.W = W; j.out = out; j.VT = VT; j.ST = ST;     \
    run_##SFX(&j, B, nthreads, fwd_job_##SFX, 0);                                          \
}                                                                                          \
                                                                                           \
void lif_bwd_##SFX(int B, int Tn, int H, int K, const T *I,                                \
                   const int64_t *ptr, const int64_t *nidx, const T *val, const T *W1, int NI, \
                   const T *n, const T *bb, double beta, double slope, const T *V0,        \
                   const T *S0, const T *W, const T *gout, T *gI, double *gW1, \
                   double *gn, double *gb, double *gbeta, double *gW, int nthreads) {      \
    job_##SFX j; memset(&j, 0, sizeof j);                                                  \
    j.Tn = Tn; j.H = H; j.K = K; j.I = I; j.ptr = ptr; j.nidx = nidx; j.val = val;         \
    j.W1 = W1; j.NI = NI; j.n = n; j.bb = bb; j.beta = (T)beta;                            \
    j.slope = (T)slope; j.V0 = V0; j.S0 = S0; j.W = W; j.gout = gout; j.gI = gI; \
    j.gW1 = gW1; j.gn = gn; j.gb = gb; j.gbeta = gbeta; j.gW = gW;                         \
    run_##SFX(&j, B, nthreads, bwd_job_##SFX, 1);                                          \
}

DEFINE_KERNELS(float, f32, vexp_f32, -87.0f)
DEFINE_KERNELS(double, f64, vexp_f64, -700.0)
"""

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


def _build() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None
    key = hashlib.sha256((C_SOURCE + _cpu_tag() + platform.machine()).encode()).hexdigest()[:16]
    target = _cache_dir() / f"lif_kernel_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "lif_kernel.c"
            src.write_text(C_SOURCE)
            out = Path(tmp) / "lif_kernel.so"
            flags = ["-O3", "-ffp-contract=off", "-fPIC", "-shared"]
            native = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
            for extra in (native, []):
                r = subprocess.run([cc, *flags, *extra, "-o", str(out), str(src), "-lpthread", "-lm"],
                                   capture_output=True, text=True)
                if r.returncode == 0:
                    break
            else:
                warnings.warn(f"could not compile the fused LIF kernel ({r.stderr.strip()[:200]}); "
                              "using the slower torch loop", RuntimeWarning, stacklevel=3)
                return None
            part = target.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(out, part)
            os.replace(part, target)
    lib = ctypes.CDLL(str(target))
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    for sfx in ("f32", "f64"):
        fwd = getattr(lib, f"lif_fwd_{sfx}")
        fwd.argtypes = [i, i, i, i, p, p, p, d, p, p, p, p, p, p, p, i]
        fwd.restype = None
        bwd = getattr(lib, f"lif_bwd_{sfx}")
        bwd.argtypes = [i, i, i, i, p, p, p, d, d, p, p, p, p, p, p, p, p, p, p, i]
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
class LIFScan(torch.autograd.Function):
    """out[b,k,:] = sum_t W[k,t] S_t[b,:] of the hidden LIF run over all steps."""

    @staticmethod
    def forward(ctx, I, n, b, beta, v0, s0, W, slope, backend):  # type: ignore[override]
        I, n, b, v0, s0, W = (x.contiguous() for x in (I, n, b, v0, s0, W))
        beta_t = beta.reshape(())
        B, T, H = I.shape
        K = W.shape[0]
        keep_v = any(ctx.needs_input_grad[:4]) or ctx.needs_input_grad[6]
        if backend == "c":
            lib = c_kernel()
            out = I.new_empty(B, K, H)
            vT, sT = I.new_empty(B, H), I.new_empty(B, H)
            vs = I.new_empty(B, T, H) if keep_v else None
            fn = lib.lif_fwd_f32 if I.dtype == torch.float32 else lib.lif_fwd_f64
            fn(B, T, H, K, _ptr(I), _ptr(n), _ptr(b), float(beta_t), _ptr(v0), _ptr(s0), _ptr(W),
               _ptr(out), _ptr(vT), _ptr(sT), _ptr(vs), torch.get_num_threads())
        else:
            out, vT, sT, vs = _torch_forward(I, n, b, beta_t, v0, s0, W, keep_v)
        if keep_v:
            ctx.save_for_backward(I, n, b, beta_t, v0, s0, W, vs)
        ctx.slope, ctx.backend, ctx.beta_shape = slope, backend, beta.shape
        ctx.mark_non_differentiable(vT, sT)
        return out, vT, sT

    @staticmethod
    def backward(ctx, gout, _gvT, _gsT):  # type: ignore[override]
        I, n, b, beta_t, v0, s0, W, vs = ctx.saved_tensors
        gout = gout.contiguous()
        if ctx.backend == "c":
            lib = c_kernel()
            B, T, H = I.shape
            K = W.shape[0]
            gI = torch.empty_like(I)
            f64 = dict(dtype=torch.float64, device=I.device)
            gn, gb = torch.zeros(H, **f64), torch.zeros(H, **f64)
            gbeta, gW = torch.zeros(1, **f64), torch.zeros(K, T, **f64)
            fn = lib.lif_bwd_f32 if I.dtype == torch.float32 else lib.lif_bwd_f64
            fn(B, T, H, K, _ptr(I), _ptr(n), _ptr(b), float(beta_t), float(ctx.slope), _ptr(v0),
               _ptr(s0), _ptr(W), _ptr(gout), _ptr(vs), _ptr(gI), _ptr(gn), _ptr(gb), _ptr(gbeta),
               _ptr(gW), torch.get_num_threads())
            gn, gb, gbeta, gW = (x.to(I.dtype) for x in (gn, gb, gbeta, gW))
        else:
            gI, gn, gb, gbeta, gW = _torch_backward(I, n, b, beta_t, ctx.slope, v0, s0, W, gout, vs)
        return gI, gn, gb, gbeta.reshape(ctx.beta_shape), None, None, gW, None, None


def lif_scan(I: torch.Tensor, n: torch.Tensor, b: torch.Tensor, beta: torch.Tensor,
             v0: torch.Tensor, s0: torch.Tensor, W: torch.Tensor, slope: float = 10.0,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the hidden LIF over T steps from state (v0, s0).

    I: (B, T, H) input currents; n, b: (H,); beta: scalar tensor; W: (K, T) time
    weights. Returns (out (B, K, H) = sum_t W[k, t] S_t, V_T, S_T). Gradients flow
    to I, n, b, beta and W (not to the initial state).
    """
    return LIFScan.apply(I, n, b, beta, v0, s0, W, slope, pick_backend(I, backend))


C_SOURCE = r"""
/* Fused forward/backward of the paper's hidden LIF layer over all time steps.
 *
 * Built on first use by trafficsnn/snn/kernels.py (cc -O3 -shared) and called
 * through ctypes on contiguous CPU tensors; torch is the fallback when no C
 * compiler is present. Compiled with -ffp-contract=off so that each step rounds
 * exactly like the torch reference loop.
 *
 *   V_t = beta (V_{t-1} - b_j n_j S_{t-1}) + (1 - beta) I_t
 *   S_t = (V_t / (n_j + 1e-8) - b_j > 0)
 *   out[b,k,j] = sum_t Wt[k,t] S_t[b,j]       (time-weighted spike sums)
 *
 * The backward recomputes spikes from the saved V and returns the gradients of
 * I, n, b, beta and Wt (initial state: no gradient).
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define EPSV 1e-8

#define DEFINE_KERNELS(T, SFX, EXP)                                                        \
typedef struct {                                                                           \
    int b0, b1, Tn, H, K;                                                                  \
    const T *I, *n, *bb, *V0, *S0, *W, *gout, *Vs; T beta; T slope;                        \
    T *out, *VT, *ST, *Vsave, *gI;                                                         \
    double *gn, *gb, *gbeta, *gW;                                                          \
} job_##SFX;                                                                               \
                                                                                           \
static void *fwd_job_##SFX(void *arg) {                                                    \
    job_##SFX *a = (job_##SFX *)arg;                                                       \
    const int Tn = a->Tn, H = a->H, K = a->K;                                              \
    const T be = a->beta, om = (T)1 - a->beta;                                             \
    T *v = (T *)malloc(sizeof(T) * H * 4);                                                 \
    T *s = v + H, *thr = v + 2 * H, *ne = v + 3 * H;                                       \
    for (int j = 0; j < H; j++) { thr[j] = a->bb[j] * a->n[j]; ne[j] = a->n[j] + (T)EPSV; } \
    for (int b = a->b0; b < a->b1; b++) {                                                  \
        memcpy(v, a->V0 + (size_t)b * H, sizeof(T) * H);                                   \
        memcpy(s, a->S0 + (size_t)b * H, sizeof(T) * H);                                   \
        T *o = a->out + (size_t)b * K * H;                                                 \
        memset(o, 0, sizeof(T) * K * H);                                                   \
        for (int t = 0; t < Tn; t++) {                                                     \
            const T *it = a->I + ((size_t)b * Tn + t) * H;                                 \
            for (int j = 0; j < H; j++) {                                                  \
                T vj = be * (v[j] - thr[j] * s[j]) + om * it[j];                           \
                v[j] = vj;                                                                 \
                s[j] = (vj / ne[j] - a->bb[j] > (T)0) ? (T)1 : (T)0;                       \
            }                                                                              \
            if (a->Vsave) memcpy(a->Vsave + ((size_t)b * Tn + t) * H, v, sizeof(T) * H);   \
            for (int k = 0; k < K; k++) {                                                  \
                const T w = a->W[(size_t)k * Tn + t];                                      \
                T *ok = o + (size_t)k * H;                                                 \
                for (int j = 0; j < H; j++) ok[j] += w * s[j];                             \
            }                                                                              \
        }                                                                                  \
        memcpy(a->VT + (size_t)b * H, v, sizeof(T) * H);                                   \
        memcpy(a->ST + (size_t)b * H, s, sizeof(T) * H);                                   \
    }                                                                                      \
    free(v);                                                                               \
    return NULL;                                                                           \
}                                                                                          \
                                                                                           \
static void *bwd_job_##SFX(void *arg) {                                                    \
    job_##SFX *a = (job_##SFX *)arg;                                                       \
    const int Tn = a->Tn, H = a->H, K = a->K;                                              \
    const T be = a->beta, om = (T)1 - a->beta, sl = a->slope;                              \
    T *buf = (T *)malloc(sizeof(T) * H * 6);                                               \
    T *gvn = buf, *thr = buf + H, *ne = buf + 2 * H, *gs = buf + 3 * H, *rst = buf + 4 * H; \
    T *sp = buf + 5 * H;                                                                   \
    double gbeta = 0;                                                                      \
    for (int j = 0; j < H; j++) { thr[j] = a->bb[j] * a->n[j]; ne[j] = a->n[j] + (T)EPSV;  \
                                  rst[j] = -be * thr[j]; }                                 \
    for (int b = a->b0; b < a->b1; b++) {                                                  \
        const T *go = a->gout + (size_t)b * K * H;                                         \
        memset(gvn, 0, sizeof(T) * H);                                                     \
        for (int t = Tn - 1; t >= 0; t--) {                                                \
            const T *vt = a->Vs + ((size_t)b * Tn + t) * H;                                \
            const T *vp = t ? vt - H : a->V0 + (size_t)b * H;                              \
            const T *it = a->I + ((size_t)b * Tn + t) * H;                                 \
            T *git = a->gI + ((size_t)b * Tn + t) * H;                                     \
            memset(gs, 0, sizeof(T) * H);                                                  \
            for (int k = 0; k < K; k++) {                                                  \
                const T w = a->W[(size_t)k * Tn + t];                                      \
                const T *gk = go + (size_t)k * H;                                          \
                double acc = 0;                                                            \
                for (int j = 0; j < H; j++) {                                              \
                    gs[j] += w * gk[j];                                                    \
                    T sj = (vt[j] / ne[j] - a->bb[j] > (T)0) ? (T)1 : (T)0;                \
                    acc += (double)(gk[j] * sj);                                           \
                }                                                                          \
                a->gW[(size_t)k * Tn + t] += acc;                                          \
            }                                                                              \
            if (t) { for (int j = 0; j < H; j++)                                           \
                         sp[j] = (vp[j] / ne[j] - a->bb[j] > (T)0) ? (T)1 : (T)0; }        \
            else memcpy(sp, a->S0 + (size_t)b * H, sizeof(T) * H);                         \
            for (int j = 0; j < H; j++) {                                                  \
                T u = vt[j] / ne[j] - a->bb[j];                                            \
                T g = gs[j] + gvn[j] * rst[j];                                             \
                T e = EXP(-sl * u);                                                        \
                T sg = sl * ((T)1 / ((T)1 + e)) * (e / ((T)1 + e));                        \
                if (!(e < INFINITY)) sg = 0;                                               \
                T gu = g * sg;                                                             \
                T gv = gu / ne[j] + gvn[j] * be;                                           \
                git[j] = gv * om;                                                          \
                gbeta += (double)(gv * (vp[j] - thr[j] * sp[j] - it[j]));                  \
                a->gb[j] += (double)(gv * (-be * a->n[j] * sp[j]) - gu);                   \
                a->gn[j] += (double)(gv * (-be * a->bb[j] * sp[j]) - gu * vt[j] / (ne[j] * ne[j])); \
                gvn[j] = gv;                                                               \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    a->gbeta[0] += gbeta;                                                                  \
    free(buf);                                                                             \
    return NULL;                                                                           \
}                                                                                          \
                                                                                           \
static void run_##SFX(job_##SFX *base, int B, int nthreads, void *(*fn)(void *), int bwd) { \
    if (nthreads < 1) nthreads = 1;                                                        \
    if (nthreads > B) nthreads = B > 0 ? B : 1;                                            \
    job_##SFX *jobs = (job_##SFX *)calloc(nthreads, sizeof(job_##SFX));                    \
    pthread_t *th = (pthread_t *)calloc(nthreads, sizeof(pthread_t));                      \
    size_t gsz = (size_t)base->H * 2 + 1 + (size_t)base->K * base->Tn;                     \
    double *gbuf = bwd ? (double *)calloc(gsz * nthreads, sizeof(double)) : NULL;          \
    for (int i = 0; i < nthreads; i++) {                                                   \
        jobs[i] = *base;                                                                   \
        jobs[i].b0 = (int)((long)B * i / nthreads);                                        \
        jobs[i].b1 = (int)((long)B * (i + 1) / nthreads);                                  \
        if (bwd) { double *g = gbuf + gsz * i; jobs[i].gn = g; jobs[i].gb = g + base->H;   \
                   jobs[i].gbeta = g + 2 * base->H; jobs[i].gW = g + 2 * base->H + 1; }     \
    }                                                                                      \
    for (int i = 1; i < nthreads; i++) pthread_create(&th[i], NULL, fn, &jobs[i]);         \
    fn(&jobs[0]);                                                                          \
    for (int i = 1; i < nthreads; i++) pthread_join(th[i], NULL);                          \
    if (bwd) {                                                                             \
        for (int i = 0; i < nthreads; i++) {                                               \
            double *g = gbuf + gsz * i;                                                    \
            for (int j = 0; j < base->H; j++) { base->gn[j] += g[j]; base->gb[j] += g[base->H + j]; } \
            base->gbeta[0] += g[2 * base->H];                                              \
            for (size_t q = 0; q < (size_t)base->K * base->Tn; q++) base->gW[q] += g[2 * base->H + 1 + q]; \
        }                                                                                  \
        free(gbuf);                                                                        \
    }                                                                                      \
    free(jobs); free(th);                                                                  \
}                                                                                          \
                                                                                           \
void lif_fwd_##SFX(int B, int Tn, int H, int K, const T *I, const T *n, const T *bb,       \
                   double beta, const T *V0, const T *S0, const T *W,                      \
                   T *out, T *VT, T *ST, T *Vsave, int nthreads) {                          \
    job_##SFX j; memset(&j, 0, sizeof j);                                                  \
    j.Tn = Tn; j.H = H; j.K = K; j.I = I; j.n = n; j.bb = bb; j.beta = (T)beta;            \
    j.V0 = V0; j.S0 = S0; j.W = W; j.out = out; j.VT = VT; j.ST = ST; j.Vsave = Vsave;     \
    run_##SFX(&j, B, nthreads, fwd_job_##SFX, 0);                                          \
}                                                                                          \
                                                                                           \
void lif_bwd_##SFX(int B, int Tn, int H, int K, const T *I, const T *n, const T *bb,       \
                   double beta, double slope, const T *V0, const T *S0, const T *W,        \
                   const T *gout, const T *Vs, T *gI, double *gn, double *gb,              \
                   double *gbeta, double *gW, int nthreads) {                              \
    job_##SFX j; memset(&j, 0, sizeof j);                                                  \
    j.Tn = Tn; j.H = H; j.K = K; j.I = I; j.n = n; j.bb = bb; j.beta = (T)beta;            \
    j.slope = (T)slope; j.V0 = V0; j.S0 = S0; j.W = W; j.gout = gout; j.Vs = Vs; j.gI = gI; \
    j.gn = gn; j.gb = gb; j.gbeta = gbeta; j.gW = gW;                                      \
    run_##SFX(&j, B, nthreads, bwd_job_##SFX, 1);                                          \
}

DEFINE_KERNELS(float, f32, expf)
DEFINE_KERNELS(double, f64, exp)
"""

/* Inference-only streaming step of RecurrentALIF (trafficsnn/snn/alif.py), fused over all steps.
 *
 * Built on first use by trafficsnn/snn/alif_fused.py (through kernels.py's compiler
 * rule, -O3 -ffp-contract=off) and called through ctypes. It advances rows of the
 * serving engine's state slab in place: flow f (slab row rows[f]) runs k[f] steps
 * from its step done[f], with input events ev_*[off[f] .. off[f+1]) (absolute step,
 * input neuron, value; sorted by step, then neuron). Per step, member and layer it
 * evaluates exactly the torch path's float32 operations in the same order:
 *
 *   layer 0:  cur = (sum_e value_e * W_in[n_e]) + bias      (input events in neuron order)
 *   layer l:  cur = bias + (sum_j s_{l-1,j} W_in[l][j])
 *   rec:      cur = cur + (sum_j s_j W_rec[j])              (spikes are 0/1: only spiking j)
 *   thr_prev = 1 + beta a;  a = rho a + (1 - rho) s;  v = (alpha v + gain cur) - thr_prev s
 *   s = (v - (1 + beta a)) > 0;   m = kappa m + (1 - kappa) s;  c = c + s;  u = u + x
 *
 * Sums run in index order from zero (what torch's CPU gemm does for these sizes); a
 * different order moves a result by an ulp, which the tests bound at 1e-5.
 */
#include <stdint.h>
#include <string.h>

#define MAXH 1024

/* one step of the neurons of a layer and member; writes the new spikes to s and out */
static void alif_update(int H, float *restrict v, float *restrict a, float *restrict s, float *restrict out,
                        const float *restrict cur, const float *restrict al, const float *restrict rh,
                        const float *restrict omr, const float *restrict be, const float *restrict g)
{
    for (int h = 0; h < H; h++) {
        const float thr_prev = 1.0f + be[h] * a[h];
        const float an = rh[h] * a[h] + omr[h] * s[h];
        const float vn = (al[h] * v[h] + g[h] * cur[h]) - thr_prev * s[h];
        const float sn = (vn - (1.0f + be[h] * an)) > 0.0f ? 1.0f : 0.0f;
        a[h] = an;
        v[h] = vn;
        s[h] = sn;
        out[h] = sn;
    }
}

void alif_stream_f32(int n_flows, const int64_t *rows, const int64_t *done, const int64_t *k,
                     const int64_t *off, const int64_t *ev_step, const int64_t *ev_neuron, const float *ev_value,
                     float *slab, int64_t width, int L, int K, int H, int N, int recurrent, int skip,
                     int64_t o_v, int64_t o_a, int64_t o_s, int64_t o_m, int64_t o_c, int64_t o_u, int64_t o_steps,
                     const float *w_in0, const float *w_in_rest, const float *w_rec, const float *bias,
                     const float *alpha, const float *rho, const float *one_m_rho, const float *beta,
                     const float *gain, const float *kappa, const float *one_m_kappa)
{
    float cur[MAXH], acc[MAXH], inp[MAXH];
    int idx[MAXH];
    const int64_t LKH = (int64_t)L * K * H;
    (void)LKH;
    for (int f = 0; f < n_flows; f++) {
        float *row = slab + rows[f] * width;
        float *V = row + o_v, *A = row + o_a, *S = row + o_s, *M = row + o_m, *C = row + o_c, *U = row + o_u;
        int64_t e = off[f], e_end = off[f + 1];
        for (int64_t t = 0; t < k[f]; t++) {
            int64_t step = done[f] + t;
            int64_t e0 = e;
            while (e < e_end && ev_step[e] == step) e++;
            for (int kk = 0; kk < K; kk++) {
                for (int l = 0; l < L; l++) {
                    const int64_t lk = ((int64_t)l * K + kk) * H;
                    const float *b = bias + lk;
                    float *v = V + lk, *a = A + lk, *s = S + lk;
                    if (l == 0) {
                        const float *w0 = w_in0 + (int64_t)kk * N * H;
                        for (int h = 0; h < H; h++) acc[h] = 0.0f;
                        for (int64_t q = e0; q < e; q++) {
                            const float *w = w0 + ev_neuron[q] * H;
                            const float x = ev_value[q];
                            if (x == 1.0f)
                                for (int h = 0; h < H; h++) acc[h] = acc[h] + w[h];
                            else
                                for (int h = 0; h < H; h++) acc[h] = acc[h] + x * w[h];
                        }
                        for (int h = 0; h < H; h++) cur[h] = acc[h] + b[h];
                    } else {
                        const float *wl = w_in_rest + (((int64_t)(l - 1) * K + kk) * H) * H;
                        for (int h = 0; h < H; h++) acc[h] = 0.0f;
                        for (int j = 0; j < H; j++)
                            if (inp[j] != 0.0f) {
                                const float *w = wl + (int64_t)j * H;
                                const float x = inp[j];
                                for (int h = 0; h < H; h++) acc[h] = acc[h] + x * w[h];
                            }
                        for (int h = 0; h < H; h++) cur[h] = b[h] + acc[h];
                    }
                    if (recurrent) {
                        const float *wr = w_rec + lk * H;
                        int nz = 0;
                        for (int j = 0; j < H; j++) {   /* spikes are exactly 0 or 1 */
                            idx[nz] = j;
                            nz += s[j] != 0.0f;
                        }
                        for (int h = 0; h < H; h++) acc[h] = 0.0f;
                        for (int q = 0; q < nz; q++) {
                            const float *restrict w = wr + (int64_t)idx[q] * H;
                            for (int h = 0; h < H; h++) acc[h] = acc[h] + w[h];
                        }
                        for (int h = 0; h < H; h++) cur[h] = cur[h] + acc[h];
                    }
                    alif_update(H, v, a, s, inp, cur, alpha + lk, rho + lk, one_m_rho + lk, beta + lk, gain + lk);
                }
                float *m = M + (int64_t)kk * H, *c = C + (int64_t)kk * H;
                const float *kp = kappa + (int64_t)kk * H, *omk = one_m_kappa + (int64_t)kk * H;
                for (int h = 0; h < H; h++) {
                    m[h] = kp[h] * m[h] + omk[h] * inp[h];
                    c[h] = c[h] + inp[h];
                }
            }
            if (skip)
                for (int64_t q = e0; q < e; q++) U[ev_neuron[q]] = U[ev_neuron[q]] + ev_value[q];
        }
        row[o_steps] = row[o_steps] + (float)k[f];
    }
}

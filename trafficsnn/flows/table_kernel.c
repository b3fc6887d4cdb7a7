/* The flow table's per-batch ingest as one pass over the packets (trafficsnn/flows/table_kernel.py).
 *
 * Same semantics as FlowTable._ingest (numpy, the reference; tests prove both give identical flows):
 * packets are taken in capture order; each finds its live flow in the table's open-addressing index
 * (linear probing, the index arrays of flows/hashindex.py, full key checked) and either continues it
 * or ends it first (idle gap to the key's previous packet, active timeout, a closing flow's SYN or
 * grace), then updates the counters; an RST ends its flow after the packet. Kept packets go to the
 * columnar store grouped per flow (one segment per flow and batch) by a counting sort.
 * Ended flows are returned to Python, which hands them to the emission policy and frees the slots.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EMPTY (-1)
#define TOMB (-2)
enum { R_IDLE = 1, R_ACTIVE = 2, R_FIN = 3, R_RST = 4 };
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10

/* one flow's state: the record layout of table.py's _SLOT_COLS (numpy align=True; checked by ft_layout) */
typedef struct {
    uint64_t ahi, alo, bhi, blo;
    uint16_t vlan, aport, bport; uint8_t proto, client_a;
    uint8_t fin_a, fin_b, live; int32_t row;       /* row: 1 + the flow's row in this batch, 0 = none */
    double last_ts, first_ts, close_ts;
    int64_t pk0, pk1, by0, by1, stored, sent;
    uint64_t hash; int64_t fid; double pend_ts;
} Slot;

typedef struct { uint64_t key; int64_t val; } Bucket;   /* hashindex.py's table */

#define NFIELDS 25
/* offsets of Slot's fields in _SLOT_COLS order, then sizeof(Slot) and sizeof(Bucket) */
void ft_layout(int64_t *out)
{
    size_t o[NFIELDS + 2] = {
        offsetof(Slot, ahi), offsetof(Slot, alo), offsetof(Slot, bhi), offsetof(Slot, blo),
        offsetof(Slot, vlan), offsetof(Slot, aport), offsetof(Slot, bport), offsetof(Slot, proto),
        offsetof(Slot, client_a), offsetof(Slot, fin_a), offsetof(Slot, fin_b), offsetof(Slot, live),
        offsetof(Slot, row), offsetof(Slot, last_ts), offsetof(Slot, first_ts), offsetof(Slot, close_ts),
        offsetof(Slot, pk0), offsetof(Slot, pk1), offsetof(Slot, by0), offsetof(Slot, by1),
        offsetof(Slot, stored), offsetof(Slot, sent), offsetof(Slot, hash), offsetof(Slot, fid),
        offsetof(Slot, pend_ts), sizeof(Slot), sizeof(Bucket) };
    for (int i = 0; i < NFIELDS + 2; i++) out[i] = (int64_t)o[i];
}

typedef struct { int64_t slot, kept, cursor; double prev_raw; int8_t ended, had_none; } Inst;
#define SCRATCH_PER_PACKET 64

int64_t ft_scratch_per_packet(void) { return SCRATCH_PER_PACKET; }

static inline uint64_t mix64(uint64_t h, uint64_t x) {
    h = (h ^ x) * 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBULL;
    h ^= h >> 31;
    return h;
}

/* table.py's _hash5 of the canonical key (the lower (hi, lo, port) endpoint first) */
static inline uint64_t key_hash(uint64_t shi, uint64_t slo, uint64_t dhi, uint64_t dlo, uint16_t sp, uint16_t dp,
                                uint8_t pr, uint16_t vl) {
    uint64_t ah, al, bh, bl; uint16_t ap, bp;
    if (shi < dhi || (shi == dhi && (slo < dlo || (slo == dlo && sp <= dp)))) {
        ah = shi; al = slo; ap = sp; bh = dhi; bl = dlo; bp = dp;
    } else {
        ah = dhi; al = dlo; ap = dp; bh = shi; bl = slo; bp = sp;
    }
    uint64_t small = (uint64_t)bp | ((uint64_t)ap << 16) | ((uint64_t)pr << 32) | ((uint64_t)vl << 48);
    uint64_t h = ah * 0x9E3779B97F4A7C15ULL;
    h ^= al * 0xC2B2AE3D27D4EB4FULL;
    h ^= bh * 0x165667B19E3779F9ULL;
    h ^= bl * 0xD6E8FEB86659FD93ULL;
    return mix64(h, small);
}

/* io: 0 n_slots, 1 n_free, 2 next_fid, 3 index used, 4 index tomb, 5 index cap, 6 store n, 7 segs n,
 *     8 tcp_close, 9 max_packets (-1 = all), 10 created, 11 ended, 12 touched, 13 ts clamped,
 *     14 packets not stored, 15 hash mask, 16 idle on, 17 active on
 * dp: 0 idle timeout, 1 active timeout, 2 fin grace
 * Returns 0, or -1 when the scratch is too small (nothing was changed then). */
int64_t ft_ingest(int64_t n, void **b, Slot *S, Bucket *ix, int64_t *freel, void **st, void **sg, int64_t *io,
                  const double *dp, int64_t *end_slot, int8_t *end_code, int64_t *touched, char *scratch)
{
    const double *ts = b[0];
    const uint64_t *shi = b[1], *slo = b[2], *dhi = b[3], *dlo = b[4];
    const uint16_t *sport = b[5], *dport = b[6];
    const uint8_t *proto = b[7];
    const uint32_t *ip_len = b[8], *wire_len = b[9];
    const uint8_t *tflags = b[10];
    const uint16_t *vlan = b[11];
    double *st_ts = st[0]; uint32_t *st_size = st[1]; uint8_t *st_dir = st[2];
    uint32_t *st_wire = st[3]; uint8_t *st_flags = st[4];
    int64_t *sg_slot = sg[0], *sg_start = sg[1], *sg_end = sg[2]; uint8_t *sg_alive = sg[3];

    int64_t n_slots = io[0], n_free = io[1], next_fid = io[2], used = io[3], tomb = io[4];
    const uint64_t mask = (uint64_t)io[5] - 1, hmask = (uint64_t)io[15];
    const int tcp_close = (int)io[8];
    const int64_t max_packets = io[9];
    const int idle_on = (int)io[16], active_on = (int)io[17];
    const double idle = dp[0], active = dp[1], grace = dp[2];
    int64_t created = 0, n_end = 0, clamped_n = 0, not_stored = 0;

    /* scratch (SCRATCH_PER_PACKET bytes a packet, kept by the caller so its pages stay mapped) */
    Inst *inst = (Inst *)scratch;
    double *pts = (double *)(scratch + sizeof(Inst) * (size_t)n);
    uint64_t *hh = (uint64_t *)(pts + n);
    int32_t *pinst = (int32_t *)(hh + n);
    uint8_t *pdir = (uint8_t *)(pinst + n);
    int64_t ni = 0;
    if (sizeof(Inst) + sizeof(double) + sizeof(uint64_t) + sizeof(int32_t) + 1 > SCRATCH_PER_PACKET) return -1;

    /* hashes first, so the main loop can prefetch the index buckets and flow records it will need
     * (the table is far bigger than the caches: a miss per packet would dominate otherwise) */
    for (int64_t i = 0; i < n; i++) hh[i] = key_hash(shi[i], slo[i], dhi[i], dlo[i], sport[i], dport[i],
                                                     proto[i], vlan[i]) & hmask;
    for (int64_t i = 0; i < n; i++) {
        if (i + 16 < n) __builtin_prefetch(&ix[hh[i + 16] & mask]);
        if (i + 6 < n) {
            int64_t v = ix[hh[i + 6] & mask].val;
            if (v >= 0) { __builtin_prefetch(&S[v]); __builtin_prefetch((const char *)&S[v] + 64); }
        }
        if (i + 2 < n) {                    /* and the flow's row of this batch, once its record is near */
            int64_t v = ix[hh[i + 2] & mask].val;
            if (v >= 0 && S[v].row > 0) __builtin_prefetch(&inst[S[v].row - 1]);
        }
        /* canonical key: the lower (hi, lo, port) endpoint is a */
        uint64_t ah, al, bh, bl; uint16_t ap, bp; int fa;
        if (shi[i] < dhi[i] || (shi[i] == dhi[i] && (slo[i] < dlo[i] || (slo[i] == dlo[i] && sport[i] <= dport[i])))) {
            ah = shi[i]; al = slo[i]; ap = sport[i]; bh = dhi[i]; bl = dlo[i]; bp = dport[i]; fa = 1;
        } else {
            ah = dhi[i]; al = dlo[i]; ap = dport[i]; bh = shi[i]; bl = slo[i]; bp = sport[i]; fa = 0;
        }
        const uint16_t vl = vlan[i]; const uint8_t pr = proto[i];
        const uint64_t h = hh[i];

        /* look the key up among live flows */
        int64_t s = -1, bucket = -1;
        for (uint64_t p = h & mask;; p = (p + 1) & mask) {
            int64_t v = ix[p].val;
            if (v == EMPTY) break;
            if (v >= 0 && ix[p].key == h && S[v].alo == al && S[v].blo == bl && S[v].ahi == ah && S[v].bhi == bh
                && S[v].aport == ap && S[v].bport == bp && S[v].proto == pr && S[v].vlan == vl) {
                s = v; bucket = (int64_t)p; break;
            }
        }
        const double t = ts[i];
        const uint8_t fl = tflags[i];
        const int tcp = pr == 6;
        int32_t k = -1;
        if (s >= 0) {
            k = S[s].row - 1;
            double prev = k >= 0 ? inst[k].prev_raw : S[s].last_ts;
            int code = 0;
            if (idle_on && t - prev > idle) code = R_IDLE;
            else if (active_on && t - S[s].first_ts > active) code = R_ACTIVE;
            else if (tcp_close && isfinite(S[s].close_ts) && ((tcp && (fl & F_SYN)) || t - S[s].close_ts > grace))
                code = R_FIN;
            if (code) {
                ix[bucket].val = TOMB; used--; tomb++;
                end_slot[n_end] = s; end_code[n_end] = (int8_t)code; n_end++;
                if (k >= 0) inst[k].ended = (int8_t)code;
                s = -1; k = -1;
            }
        }
        if (s < 0) {
            s = n_free > 0 ? freel[--n_free] : n_slots++;
            S[s].vlan = vl; S[s].proto = pr; S[s].ahi = ah; S[s].alo = al; S[s].aport = ap;
            S[s].bhi = bh; S[s].blo = bl; S[s].bport = bp; S[s].hash = h;
            int synack = tcp && (fl & (F_SYN | F_ACK)) == (F_SYN | F_ACK);
            S[s].client_a = (uint8_t)(fa ^ synack);
            S[s].fid = next_fid++;
            S[s].first_ts = t; S[s].last_ts = t; S[s].pend_ts = t;
            S[s].pk0 = S[s].pk1 = S[s].by0 = S[s].by1 = S[s].stored = S[s].sent = 0;
            S[s].fin_a = S[s].fin_b = 0;
            S[s].close_ts = INFINITY;
            S[s].live = 1;
            created++;
            uint64_t p = h & mask;
            while (ix[p].val >= 0) p = (p + 1) & mask;
            if (ix[p].val == TOMB) tomb--;
            ix[p].key = h; ix[p].val = s; used++;
            S[s].row = 0;
        }
        if (k < 0) {
            k = (int32_t)ni++;
            S[s].row = k + 1;
            inst[k].slot = s; inst[k].kept = 0; inst[k].ended = 0;
            inst[k].had_none = S[s].stored == S[s].sent;
        }
        /* the packet joins flow s: timestamps never go back inside a flow */
        double tc = t;
        if (tc < S[s].last_ts) { tc = S[s].last_ts; clamped_n++; }
        S[s].last_ts = tc;
        inst[k].prev_raw = t;
        int dir = fa != S[s].client_a;
        uint64_t w = wire_len[i];
        if (dir) { S[s].pk1++; S[s].by1 += (int64_t)w; } else { S[s].pk0++; S[s].by0 += (int64_t)w; }
        if (max_packets < 0 || S[s].stored < max_packets) {
            if (inst[k].kept == 0 && inst[k].had_none) S[s].pend_ts = tc;
            S[s].stored++;
            inst[k].kept++;
            pinst[i] = k;
        } else {
            pinst[i] = -1;
            not_stored++;
        }
        pts[i] = tc;
        pdir[i] = (uint8_t)dir;
        if (tcp_close && tcp) {
            if (fl & F_FIN) { if (fa) S[s].fin_a = 1; else S[s].fin_b = 1; }
            if (S[s].fin_a && S[s].fin_b && !isfinite(S[s].close_ts)) S[s].close_ts = t;
            if (fl & F_RST) {
                uint64_t p = S[s].hash & mask;
                while (ix[p].val != s) p = (p + 1) & mask;
                ix[p].val = TOMB; used--; tomb++;
                end_slot[n_end] = s; end_code[n_end] = R_RST; n_end++;
                inst[k].ended = R_RST;
            }
        }
    }

    /* the store: each instance's kept packets contiguous, instances in order of first packet */
    int64_t base = io[6], nseg = io[7], cur = base, nt = 0;
    for (int64_t j = 0; j < ni; j++) {
        Inst *q = &inst[j];
        q->cursor = cur;
        if (q->kept) {
            sg_slot[nseg] = q->slot; sg_start[nseg] = cur; sg_end[nseg] = cur + q->kept; sg_alive[nseg] = 1;
            nseg++;
        }
        cur += q->kept;
        S[q->slot].row = 0;
        if (!q->ended) touched[nt++] = q->slot;
    }
    for (int64_t i = 0; i < n; i++) {
        int32_t k = pinst[i];
        if (k < 0) continue;
        int64_t o = inst[k].cursor++;
        st_ts[o] = pts[i]; st_size[o] = ip_len[i]; st_dir[o] = pdir[i]; st_wire[o] = wire_len[i];
        st_flags[o] = tflags[i];
    }
    io[0] = n_slots; io[1] = n_free; io[2] = next_fid; io[3] = used; io[4] = tomb;
    io[6] = cur; io[7] = nseg; io[10] = created; io[11] = n_end; io[12] = nt; io[13] = clamped_n;
    io[14] = not_stored;
    return 0;
}

/* the packet store's gather: segments [start, start + len) of each of the 5 columns, back to back
 * into dst (what table.take and the compaction do with a flat index and np.take) */
void ft_gather(int64_t nseg, const int64_t *start, const int64_t *len, void **src, void **dst)
{
    static const int64_t width[5] = { 8, 4, 1, 4, 1 };     /* ts, size, direction, wire_len, tcp_flags */
    for (int c = 0; c < 5; c++) {
        const int64_t w = width[c];
        const char *s = src[c];
        char *d = dst[c];
        for (int64_t j = 0; j < nseg; j++) {
            int64_t m = len[j] * w;
            memcpy(d, s + start[j] * w, (size_t)m);
            d += m;
        }
    }
}

/* table._expire: live flows that the clock ends at `now` (a closing flow past its grace wins over idle,
 * idle over active), in slot order; returns how many were written to out_slot/out_code */
int64_t ft_expire(const Slot *S, int64_t n, double now, int idle_on, double idle, int active_on, double active,
                  int tcp_close, double grace, int64_t *out_slot, int8_t *out_code)
{
    int64_t k = 0;
    for (int64_t s = 0; s < n; s++) {
        const Slot *f = &S[s];
        if (!f->live) continue;
        int code = 0;
        if (tcp_close && now - f->close_ts > grace) code = R_FIN;
        else if (idle_on && now - f->last_ts > idle) code = R_IDLE;
        else if (active_on && now - f->first_ts > active) code = R_ACTIVE;
        if (code) { out_slot[k] = s; out_code[k] = (int8_t)code; k++; }
    }
    return k;
}

/* table.take, phase 1: packets per wanted flow (want[slot] = its rank, -1 = not wanted) in live segments */
int64_t ft_take_count(int64_t nseg, const int64_t *sg_slot, const int64_t *sg_start, const int64_t *sg_end,
                      const uint8_t *sg_alive, const int64_t *want, int64_t *counts)
{
    int64_t total = 0;
    for (int64_t j = 0; j < nseg; j++) {
        if (!sg_alive[j]) continue;
        int64_t r = want[sg_slot[j]];
        if (r < 0) continue;
        counts[r] += sg_end[j] - sg_start[j];
        total += sg_end[j] - sg_start[j];
    }
    return total;
}

/* phase 2: copy them out grouped by rank (segment order kept inside a flow) from cursor[rank] on, and
 * release the segments */
void ft_take_copy(int64_t nseg, const int64_t *sg_slot, const int64_t *sg_start, const int64_t *sg_end,
                  uint8_t *sg_alive, const int64_t *want, int64_t *cursor, void **src, void **dst)
{
    static const int64_t width[5] = { 8, 4, 1, 4, 1 };
    for (int64_t j = 0; j < nseg; j++) {
        if (!sg_alive[j]) continue;
        int64_t r = want[sg_slot[j]];
        if (r < 0) continue;
        int64_t a = sg_start[j], m = sg_end[j] - a, o = cursor[r];
        for (int c = 0; c < 5; c++)
            memcpy((char *)dst[c] + o * width[c], (const char *)src[c] + a * width[c], (size_t)(m * width[c]));
        cursor[r] = o + m;
        sg_alive[j] = 0;
    }
}

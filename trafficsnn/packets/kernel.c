/* Reader and decoder hot loops in C (trafficsnn/packets/kernel.py); the numpy code stays the reference.
 *
 * pcap_walk:  walk.python_walk — record offsets of a classic pcap chunk, exactly.
 * eth_decode: fastpath.decode_common's per-frame rules — Ethernet -> IPv4 (IHL 5, not a fragment)
 *             or IPv6 (no extension header) -> TCP/UDP/other; a frame qualifies exactly when the
 *             numpy fast path says so, and its columns are the same. Only bytes inside a frame's
 *             caplen are read.
 */
#include <stdint.h>
#include <string.h>

static inline uint32_t rd32(const uint8_t *p, int big) {
    return big ? ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3])
               : ((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]);
}
static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint64_t be64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);                   /* one unaligned load and a byte swap */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* offsets visited from 0 while the offset is <= safe (the caller guarantees a whole header there);
 * returns their count (at most max_out) and stores where the walk stopped in *stop */
int64_t pcap_walk(const uint8_t *buf, int64_t rhl, int big, int64_t safe, int64_t *out, int64_t max_out,
                  int64_t *stop)
{
    int64_t p = 0, k = 0;
    while (p <= safe && k < max_out) {
        out[k++] = p;
        p += rhl + (int64_t)rd32(buf + p + 8, big);
    }
    *stop = p;
    return k;
}

/* pcode[proto]: L4 header bytes needed for ports (TCP 20, UDP 8), 0 port-less, -1 general decoder;
 * tunnel[port]: UDP ports of tunnels the general decoder opens */
void eth_decode(int64_t n, const uint8_t *d, const int64_t *off, const uint32_t *caplen, const uint32_t *wire,
                const int32_t *pcode, const uint8_t *tunnel, uint8_t *elig,
                uint64_t *src_hi, uint64_t *src_lo, uint64_t *dst_hi, uint64_t *dst_lo, uint16_t *sport,
                uint16_t *dport, uint8_t *proto, uint32_t *ip_len, uint8_t *tcp_flags, uint8_t *ip_version)
{
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *m = d + off[i];
        const int32_t cap = (int32_t)caplen[i];
        const int whole = caplen[i] >= wire[i];
        int ok = 0, l4 = 0;
        int32_t ipend = 0, code = 0;
        if (cap >= 34 && m[12] == 0x08 && m[13] == 0x00 && m[14] == 0x45) {           /* IPv4, IHL 5 */
            int32_t tot = be16(m + 16);
            uint8_t pr = m[23];
            code = pcode[pr];
            ipend = tot + 14;
            ok = (m[20] & 0x3F) == 0 && m[21] == 0 && tot > 0 && !(whole && ipend > cap) && code >= 0;
            l4 = 34;
            src_hi[i] = 0; dst_hi[i] = 0;
            src_lo[i] = 0xFFFF00000000ULL | (uint64_t)be16(m + 26) << 16 | be16(m + 28);
            dst_lo[i] = 0xFFFF00000000ULL | (uint64_t)be16(m + 30) << 16 | be16(m + 32);
            proto[i] = pr; ip_len[i] = (uint32_t)tot; ip_version[i] = 4;
        } else if (cap >= 54 && m[12] == 0x86 && m[13] == 0xDD && (m[14] & 0xF0) == 0x60) {   /* IPv6 */
            int32_t plen = be16(m + 18);
            uint8_t pr = m[20];
            code = pcode[pr];
            ok = !(whole && plen + 54 > cap) && code >= 0;
            ipend = plen > 0 ? plen + 54 : cap;           /* payload length 0: a jumbogram */
            l4 = 54;
            src_hi[i] = be64(m + 22); src_lo[i] = be64(m + 30);
            dst_hi[i] = be64(m + 38); dst_lo[i] = be64(m + 46);
            proto[i] = pr; ip_len[i] = (uint32_t)(plen + 40); ip_version[i] = 6;
        }
        if (ok) {
            int pok = code > 0 && cap >= l4 + 4 && code + l4 <= ipend;
            uint16_t sp = pok ? be16(m + l4) : 0, dp = pok ? be16(m + l4 + 2) : 0;
            sport[i] = sp; dport[i] = dp;
            if (pok && code == 8 && (tunnel[sp] || tunnel[dp])) ok = 0;
            tcp_flags[i] = (pok && code == 20 && cap >= l4 + 14) ? m[l4 + 13] : 0;
        }
        elig[i] = (uint8_t)ok;
    }
}

/* readers._gather_u32 for record headers: the nwords 32-bit words at each offset, native order */
void pcap_headers(const uint8_t *buf, const int64_t *offs, int64_t n, int64_t nwords, int big, uint32_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = buf + offs[i];
        for (int64_t w = 0; w < nwords; w++) out[i * nwords + w] = rd32(p + 4 * w, big);
    }
}

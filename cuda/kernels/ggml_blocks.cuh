// GGML weight blocks as they sit in VRAM (exactly the GGUF file's bytes), decoded on the fly.
//
// Every type is a struct of static device functions over one block (`QK` values in `BYTES` bytes):
//   dq4(blk, q, v)       -> v = values 4q .. 4q+3 of the block (consecutive), q < QK/4
//   slot8(blk, s, a, b)  -> 8 values of slot s < QK/8: a = values P0(s) .. +3, b = P1(s) .. +3
// slot8 pairs the quads that share their bytes (e.g. the low and high nibbles of one 4-byte word
// of a Q4_x block), so the matrix-vector hot path loads each weight byte once; dq4 gives
// consecutive values for the tile loaders. Layouts follow ggml's ggml-common.h; the numpy
// decoder in runtime/quants.py is the reference the tests compare against.
//
// Alignment: a row of blocks starts at row * row_bytes, so only the block size's own alignment
// holds: Q4_1 (20 B) and Q4_K (144 B) allow 4-byte loads, Q8_0 (34), Q4_0 (18), Q5_0 (22) and
// Q6_K (210) only 2-byte loads, so their words are assembled from two 16-bit loads.
//
// slot8 is two stages, so a kernel can issue many slots' loads before it decodes any of them:
//   raw(blk, s)        -> the slot's bytes as a few 32-bit words (a `Raw`; loads only)
//   decode(raw, s, ..) -> the 8 values (no loads)
// Registers then hold 2-5 words per slot in flight instead of 8 decoded floats.
//
// Integer -> float conversions: GGML_FAST_CVT=1 builds every small unsigned integer v (< 2^23)
// as the float whose bits are 0x4B000000 | v (= 2^23 + v) minus 2^23, an integer op and an FADD
// instead of I2F, which sm_80 / sm_90 issue at 16 per clock per SM (an eighth of the FMA rate:
// one per weight value, the output head's bound). Exact either way: the values are the same
// floats, so the two builds compute bit-identical decoded weights.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#ifndef GGML_FAST_CVT
#define GGML_FAST_CVT 0
#endif

// Host too, so the decoders can be checked on a machine without a GPU.
#define GGML_HD __host__ __device__ __forceinline__

namespace ggml {

GGML_HD uint32_t ld32_a4(const uint8_t *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}
GGML_HD uint32_t ld32_a2(const uint8_t *p) {
    const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
    return uint32_t(h[0]) | (uint32_t(h[1]) << 16);
}
GGML_HD float ldh(const uint8_t *p) {
    return __half2float(*reinterpret_cast<const __half *>(p));
}
// the fp16 whose bits are the low 16 of u, to float
GGML_HD float h2f(uint32_t u) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(u)));
}
GGML_HD float bits_f(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}
// float(v) - off for integers 0 <= v < 2^23 and off (0, 16, 32, 128): exact both ways
GGML_HD float u2f(uint32_t v, float off = 0.f) {
#if GGML_FAST_CVT
    return bits_f(0x4B000000u | v) - (8388608.f + off);
#else
    return float(v) - off;
#endif
}
// byte k of w as an unsigned / signed integer, to float (signed: flip the sign bit, subtract 128)
GGML_HD float ub(uint32_t w, int k) { return u2f((w >> (8 * k)) & 0xFFu); }
GGML_HD float sb(uint32_t w, int k) {
#if GGML_FAST_CVT
    return u2f(((w >> (8 * k)) & 0xFFu) ^ 0x80u, 128.f);
#else
    return float(int8_t((w >> (8 * k)) & 0xFFu));
#endif
}
// four 4-bit fields of w selected by shift (0: low nibbles, 4: high nibbles)
GGML_HD float4 nib4(uint32_t w, int shift, float d, float m) {
    uint32_t n = (w >> shift) & 0x0F0F0F0Fu;
    return make_float4(d * ub(n, 0) + m, d * ub(n, 1) + m, d * ub(n, 2) + m, d * ub(n, 3) + m);
}

struct F32 {  // a "block" of 8 plain floats; rows must be multiples of 8 values
    static constexpr int QK = 8, BYTES = 32;
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        v = *reinterpret_cast<const float4 *>(b + 16 * q);
    }
    struct Raw {
        float4 a, c;
    };
    static GGML_HD Raw raw(const uint8_t *b, int) {
        return {reinterpret_cast<const float4 *>(b)[0], reinterpret_cast<const float4 *>(b)[1]};
    }
    static GGML_HD void decode(const Raw &r, int, float4 &a, float4 &c) { a = r.a, c = r.c; }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c) {
        decode(raw(b, s), s, a, c);
    }
    static GGML_HD int P0(int) { return 0; }
    static GGML_HD int P1(int) { return 4; }
};

struct F16 {  // 8 halves (16 bytes) per "block"
    static constexpr int QK = 8, BYTES = 16;
    static GGML_HD float4 h4(uint2 u) {
        float2 lo = __half22float2(*reinterpret_cast<const __half2 *>(&u.x));
        float2 hi = __half22float2(*reinterpret_cast<const __half2 *>(&u.y));
        return make_float4(lo.x, lo.y, hi.x, hi.y);
    }
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        v = h4(*reinterpret_cast<const uint2 *>(b + 8 * q));
    }
    struct Raw {
        uint4 u;
    };
    static GGML_HD Raw raw(const uint8_t *b, int) { return {*reinterpret_cast<const uint4 *>(b)}; }
    static GGML_HD void decode(const Raw &r, int, float4 &a, float4 &c) {
        a = h4(make_uint2(r.u.x, r.u.y));
        c = h4(make_uint2(r.u.z, r.u.w));
    }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c) {
        decode(raw(b, s), s, a, c);
    }
    static GGML_HD int P0(int) { return 0; }
    static GGML_HD int P1(int) { return 4; }
};

struct Q8_0 {  // fp16 d, int8 q[32]: x = d * q
    static constexpr int QK = 32, BYTES = 34;
    static GGML_HD float4 q4(uint32_t w, float d) {
        return make_float4(d * sb(w, 0), d * sb(w, 1), d * sb(w, 2), d * sb(w, 3));
    }
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        v = q4(ld32_a2(b + 2 + 4 * q), ldh(b));
    }
    struct Raw {
        uint32_t d, w0, w1;  // d: the fp16 bits
    };
    static GGML_HD Raw raw(const uint8_t *b, int s) {
        return {*reinterpret_cast<const uint16_t *>(b), ld32_a2(b + 2 + 8 * s),
                ld32_a2(b + 6 + 8 * s)};
    }
    static GGML_HD void decode(const Raw &r, int, float4 &a, float4 &c) {
        const float d = h2f(r.d);
        a = q4(r.w0, d);
        c = q4(r.w1, d);
    }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c) {
        decode(raw(b, s), s, a, c);
    }
    static GGML_HD int P0(int s) { return 8 * s; }
    static GGML_HD int P1(int s) { return 8 * s + 4; }
};

// Q4_0 / Q4_1 / Q5_0: qs[16] holds value j in the low nibble of qs[j] and value j+16 in the
// high nibble, so slot s (bytes 4s..4s+3) gives values 4s.. and 16+4s..
struct Q4_0 {  // fp16 d, qs[16]: x = d * (q - 8)
    static constexpr int QK = 32, BYTES = 18;
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        float d = ldh(b);
        v = nib4(ld32_a2(b + 2 + 4 * (q & 3)), 4 * (q >> 2), d, -8.f * d);
    }
    struct Raw {
        uint32_t d, w;
    };
    static GGML_HD Raw raw(const uint8_t *b, int s) {
        return {*reinterpret_cast<const uint16_t *>(b), ld32_a2(b + 2 + 4 * s)};
    }
    static GGML_HD void decode(const Raw &r, int, float4 &a, float4 &c) {
        const float d = h2f(r.d);
        a = nib4(r.w, 0, d, -8.f * d);
        c = nib4(r.w, 4, d, -8.f * d);
    }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c) {
        decode(raw(b, s), s, a, c);
    }
    static GGML_HD int P0(int s) { return 4 * s; }
    static GGML_HD int P1(int s) { return 16 + 4 * s; }
};

struct Q4_1 {  // fp16 d, fp16 m, qs[16]: x = d * q + m
    static constexpr int QK = 32, BYTES = 20;
    static GGML_HD float2 dm(const uint8_t *b) {
        return __half22float2(*reinterpret_cast<const __half2 *>(b));
    }
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        float2 f = dm(b);
        v = nib4(ld32_a4(b + 4 + 4 * (q & 3)), 4 * (q >> 2), f.x, f.y);
    }
    struct Raw {
        uint32_t dm, w;  // dm: the fp16 pair (d, m)
    };
    static GGML_HD Raw raw(const uint8_t *b, int s) { return {ld32_a4(b), ld32_a4(b + 4 + 4 * s)}; }
    static GGML_HD void decode(const Raw &r, int, float4 &a, float4 &c) {
        const float d = h2f(r.dm & 0xFFFFu), m = h2f(r.dm >> 16);
        a = nib4(r.w, 0, d, m);
        c = nib4(r.w, 4, d, m);
    }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c) {
        decode(raw(b, s), s, a, c);
    }
    static GGML_HD int P0(int s) { return 4 * s; }
    static GGML_HD int P1(int s) { return 16 + 4 * s; }
};

struct Q5_0 {  // fp16 d, uint32 qh (bit j = fifth bit of value j), qs[16]: x = d * (q - 16)
    static constexpr int QK = 32, BYTES = 22;
    static GGML_HD float4 five(uint32_t w, int shift, uint32_t h4, float d) {
        // h4: the four fifth bits of these values in bits 0..3
        float4 v;
        v.x = d * u2f(((w >> shift) & 15u) | ((h4 & 1u) << 4), 16.f);
        v.y = d * u2f(((w >> (shift + 8)) & 15u) | ((h4 & 2u) << 3), 16.f);
        v.z = d * u2f(((w >> (shift + 16)) & 15u) | ((h4 & 4u) << 2), 16.f);
        v.w = d * u2f(((w >> (shift + 24)) & 15u) | ((h4 & 8u) << 1), 16.f);
        return v;
    }
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        float d = ldh(b);
        uint32_t qh = ld32_a2(b + 2);
        v = five(ld32_a2(b + 6 + 4 * (q & 3)), 4 * (q >> 2), (qh >> (4 * q)) & 15u, d);
    }
    struct Raw {
        uint32_t d, qh, w;
    };
    static GGML_HD Raw raw(const uint8_t *b, int s) {
        return {*reinterpret_cast<const uint16_t *>(b), ld32_a2(b + 2), ld32_a2(b + 6 + 4 * s)};
    }
    static GGML_HD void decode(const Raw &r, int s, float4 &a, float4 &c) {
        const float d = h2f(r.d);
        a = five(r.w, 0, (r.qh >> (4 * s)) & 15u, d);
        c = five(r.w, 4, (r.qh >> (16 + 4 * s)) & 15u, d);
    }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c) {
        decode(raw(b, s), s, a, c);
    }
    static GGML_HD int P0(int s) { return 4 * s; }
    static GGML_HD int P1(int s) { return 16 + 4 * s; }
};

// Q4_K super-block of 256: fp16 d, fp16 dmin, 12 bytes of packed 6-bit scales/mins for 8
// sub-blocks of 32, qs[128]. Chunk c (qs[32c..32c+31]) holds sub-block 2c in its low nibbles
// and 2c+1 in its high nibbles: x = d * sc[j] * q - dmin * mn[j].
struct Q4_K {
    static constexpr int QK = 256, BYTES = 144;
    // ggml's get_scale_min_k4 without branches (a branch around loads serialises them): the 12
    // bytes are three aligned words; sub-block j < 4 takes 6 bits of bytes j and j + 4, j >= 4
    // takes nibbles of byte j + 4 plus the top 2 bits of bytes j - 4 and j.
    static GGML_HD void scale_min(const uint8_t *b, int j, float &sc, float &mn) {
        scale_min_w(ld32_a4(b), ld32_a4(b + 4), ld32_a4(b + 8), ld32_a4(b + 12), j, sc, mn);
    }
    // the same from the header's four words (dd: d | dmin << 16; s0..s2: the 12 scale bytes)
    static GGML_HD void scale_min_w(uint32_t dd, uint32_t s0, uint32_t s1, uint32_t s2, int j,
                                    float &sc, float &mn) {
        const int sh = 8 * (j & 3);
        const uint32_t b0 = (s0 >> sh) & 0xFFu, b1 = (s1 >> sh) & 0xFFu, b2 = (s2 >> sh) & 0xFFu;
        const uint32_t a = j < 4 ? (b0 & 63u) : ((b2 & 15u) | ((b0 >> 6) << 4));
        const uint32_t m = j < 4 ? (b1 & 63u) : ((b2 >> 4) | ((b1 >> 6) << 4));
        sc = h2f(dd & 0xFFFFu) * u2f(a);
        mn = -h2f(dd >> 16) * u2f(m);
    }
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        int c = q >> 4, hi = (q >> 3) & 1, l = 4 * (q & 7);
        float sc, mn;
        scale_min(b, 2 * c + hi, sc, mn);
        v = nib4(ld32_a4(b + 16 + 32 * c + l), 4 * hi, sc, mn);
    }
    struct Raw {
        uint32_t w, dd, s0, s1, s2;
    };
    static GGML_HD Raw raw(const uint8_t *b, int s) {
        return {ld32_a4(b + 16 + 32 * (s >> 3) + 4 * (s & 7)), ld32_a4(b), ld32_a4(b + 4),
                ld32_a4(b + 8), ld32_a4(b + 12)};
    }
    static GGML_HD void decode(const Raw &r, int s, float4 &a, float4 &c4) {
        const int c = s >> 3;
        float sc, mn;
        scale_min_w(r.dd, r.s0, r.s1, r.s2, 2 * c, sc, mn);
        a = nib4(r.w, 0, sc, mn);
        scale_min_w(r.dd, r.s0, r.s1, r.s2, 2 * c + 1, sc, mn);
        c4 = nib4(r.w, 4, sc, mn);
    }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c4) {
        decode(raw(b, s), s, a, c4);
    }
    static GGML_HD int P0(int s) { return 64 * (s >> 3) + 4 * (s & 7); }
    static GGML_HD int P1(int s) { return P0(s) + 32; }
};

// Q6_K super-block of 256: ql[128], qh[64], int8 scales[16], fp16 d. Half h (128 values) has
// four groups g of 32: value l of group g takes the nibble (g >> 1) of ql[64h + 32(g & 1) + l]
// and bits 2g..2g+1 of qh[32h + l]; x = d * scales[v / 16] * (q - 32).
struct Q6_K {
    static constexpr int QK = 256, BYTES = 210;
    static GGML_HD float4 six(uint32_t lo, int lshift, uint32_t hi, int hshift,
                                                 float ds) {
        float4 v;
        v.x = ds * u2f(((lo >> lshift) & 15u) | (((hi >> hshift) & 3u) << 4), 32.f);
        v.y = ds * u2f(((lo >> (lshift + 8)) & 15u) | (((hi >> (hshift + 8)) & 3u) << 4), 32.f);
        v.z = ds * u2f(((lo >> (lshift + 16)) & 15u) | (((hi >> (hshift + 16)) & 3u) << 4), 32.f);
        v.w = ds * u2f(((lo >> (lshift + 24)) & 15u) | (((hi >> (hshift + 24)) & 3u) << 4), 32.f);
        return v;
    }
    static GGML_HD float dsc(const uint8_t *b, int v) { return ldh(b + 208) * sb(b[192 + v / 16], 0); }
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        int val = 4 * q, h = val >> 7, g = (val >> 5) & 3, l = val & 31;
        uint32_t lo = ld32_a2(b + 64 * h + 32 * (g & 1) + l);
        uint32_t hi = ld32_a2(b + 128 + 32 * h + l);
        v = six(lo, 4 * (g >> 1), hi, 2 * g, dsc(b, val));
    }
    // slot s: half s/16, groups gA = (s/8)&1 and gA+2, values l..l+3 with l = 4(s&7)
    static GGML_HD int P0(int s) { return 128 * (s >> 4) + 32 * ((s >> 3) & 1) + 4 * (s & 7); }
    static GGML_HD int P1(int s) { return P0(s) + 64; }
    struct Raw {
        uint32_t lo, hi, sc, d;  // sc: the two scale bytes (P0's | P1's << 8); d: fp16 bits
    };
    static GGML_HD Raw raw(const uint8_t *b, int s) {
        const int h = s >> 4, g = (s >> 3) & 1, l = 4 * (s & 7);
        return {ld32_a2(b + 64 * h + 32 * g + l), ld32_a2(b + 128 + 32 * h + l),
                uint32_t(b[192 + P0(s) / 16]) | (uint32_t(b[192 + P1(s) / 16]) << 8),
                *reinterpret_cast<const uint16_t *>(b + 208)};
    }
    static GGML_HD void decode(const Raw &r, int s, float4 &a, float4 &c) {
        const int g = (s >> 3) & 1;
        const float d = h2f(r.d);
        a = six(r.lo, 0, r.hi, 2 * g, d * sb(r.sc, 0));
        c = six(r.lo, 4, r.hi, 2 * g + 4, d * sb(r.sc, 1));
    }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c) {
        decode(raw(b, s), s, a, c);
    }
};

// MXFP4 (OCP microscaling, gpt-oss's experts): uint8 e (E8M0 scale), qs[16] of 4-bit e2m1 codes
// with Q4_0's nibble layout (value j low nibble of qs[j], value j+16 its high nibble). As ggml:
// x = kv[code] * 2^(e - 128), kv = the e2m1 values doubled (0 1 2 3 4 6 8 12, code bit 3 the
// sign; code 8, "-0", is +0). A 17-byte block sits at any byte offset: bytes are loaded one by
// one. Exact: the doubled value is a small integer (12 + kv in 0..24, minus 12) times a power of
// two, denormal for e < 2 (the host build keeps denormals; nvcc does not flush them here).
struct MXFP4 {
    static constexpr int QK = 32, BYTES = 17;
    // 2^(e - 128) for every e, as ggml_e8m0_to_fp32_half builds it (e < 2: a denormal)
    static GGML_HD float half_scale(uint32_t e) {
        return bits_f(e < 2u ? (0x00200000u << e) : ((e - 1u) << 23));
    }
    // the doubled e2m1 value of code c times hs: magnitudes as nibbles of one word
    static GGML_HD float e2m1(uint32_t c, float hs) {
        const uint32_t mag = (0xC8643210u >> (4u * (c & 7u))) & 15u;
        return u2f(c & 8u ? 12u - mag : 12u + mag, 12.f) * hs;
    }
    static GGML_HD float4 quad(uint32_t w, int shift, float hs) {
        const uint32_t n = w >> shift;
        return make_float4(e2m1(n & 15u, hs), e2m1((n >> 8) & 15u, hs), e2m1((n >> 16) & 15u, hs),
                           e2m1((n >> 24) & 15u, hs));
    }
    static GGML_HD uint32_t ld32_a1(const uint8_t *p) {
        return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) |
               (uint32_t(p[3]) << 24);
    }
    static GGML_HD void dq4(const uint8_t *b, int q, float4 &v) {
        v = quad(ld32_a1(b + 1 + 4 * (q & 3)), 4 * (q >> 2), half_scale(b[0]));
    }
    struct Raw {
        uint32_t e, w;
    };
    static GGML_HD Raw raw(const uint8_t *b, int s) { return {b[0], ld32_a1(b + 1 + 4 * s)}; }
    static GGML_HD void decode(const Raw &r, int, float4 &a, float4 &c) {
        const float hs = half_scale(r.e);
        a = quad(r.w, 0, hs);
        c = quad(r.w, 4, hs);
    }
    static GGML_HD void slot8(const uint8_t *b, int s, float4 &a, float4 &c) {
        decode(raw(b, s), s, a, c);
    }
    static GGML_HD int P0(int s) { return 4 * s; }
    static GGML_HD int P1(int s) { return 16 + 4 * s; }
};

}  // namespace ggml

// One extern "C" kernel per weight type: X(F32, f32) expands to the wrapper for ggml::F32.
#define GGML_FOR_EACH_TYPE(X) \
    X(F32, f32)               \
    X(F16, f16)               \
    X(Q8_0, q8_0)             \
    X(Q4_0, q4_0)             \
    X(Q4_1, q4_1)             \
    X(Q5_0, q5_0)             \
    X(Q4_K, q4_k)             \
    X(Q6_K, q6_k)             \
    X(MXFP4, mxfp4)

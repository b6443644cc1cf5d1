// Mixture-of-experts pieces (gpt-oss), for decode (n_tokens = 1) and prefill alike:
//   moe_topk:            router logits -> the top-k experts of each token and their weights
//   moe_gate_up[_norm]_*: the chosen experts' gate and up rows (optionally of rmsnorm(x) * g),
//                        their biases, gpt-oss's clamped SwiGLU -> h (n_tokens, k, d_ff)
//   moe_down_*:          y (+)= sum_j weight_j * (down_{e_j} h_j + b_down_{e_j})
// The router's product itself is a plain quant product with a bias (quant_ops: matvec_seg with
// the fused RMSNorm for decode, matmul with bias_ptr for prefill).
//
// Expert weights are the file's 3-D tensors as they sit in VRAM: (n_experts, out, in) rows of
// GGML blocks (MXFP4 in gpt-oss), expert e's row r at (e * out + r) * row_bytes, decoded in the
// kernel (ggml_blocks.cuh); activations fp32. Expert ids and weights are read from device
// memory, written by moe_topk in the same stream, so a decode step of these launches is
// CUDA-graph capturable (no value changes on the host between steps).
//
// Arithmetic per output row follows quant_matvec.cu's plain kernel: lane i takes the 8-value
// slots i, i + 32, ... of the row, fp32 sums, a butterfly; a token's experts are summed in the
// order moe_topk chose them (largest router logit first). A token's result does not depend on
// the other tokens of the pass (batch invariance).
//
// gpt-oss's activation (transformers' GptOssExperts): gate = min(gate, limit), up =
// clip(up, -limit, limit), h = (up + 1) * gate * sigmoid(alpha * gate); NaN passes through (a
// broken model must reach the sampler's non-finite check, not be clamped into range).
#include <stdint.h>

#include "ggml_blocks.cuh"
#include "matvec_common.cuh"
#include "pdl.cuh"

#define MOE_WARPS 4             // output rows (warps) per block
#define MOE_MAX_K 8             // experts per token at most (gpt-oss: 4)
#define MOE_MAX_EXPERTS 256     // experts per layer at most (gpt-oss: 32 / 128)
#define MOE_PER_LANE (MOE_MAX_EXPERTS / 32)

// Top-k routing: grid (n_tokens), one warp. ids (n_tokens, k) int32 gets the experts of the k
// largest logits in descending order (ties: the lower index first; NaN counts as -inf, so the
// k ids are always k distinct valid experts), weights (n_tokens, k) the softmax over those k
// logits. Needs k <= MOE_MAX_K, k <= n_experts <= MOE_MAX_EXPERTS (the launcher checks).
extern "C" __global__ void __launch_bounds__(32)
    moe_topk(const float *logits, int n_experts, int k, int *ids, float *weights) {
    const int t = blockIdx.x, lane = threadIdx.x;
    pdl_trigger();
    pdl_wait();
    float v[MOE_PER_LANE];
#pragma unroll
    for (int i = 0; i < MOE_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        const float x = e < n_experts ? __ldcg(logits + (size_t)t * n_experts + e) : -INFINITY;
        v[i] = isnan(x) ? -INFINITY : x;
    }
    unsigned taken = 0u;  // bit i: this lane's expert lane + 32 i is chosen already
    float top[MOE_MAX_K];
    int chosen[MOE_MAX_K];
#pragma unroll
    for (int j = 0; j < MOE_MAX_K; ++j) {
        if (j >= k) break;  // warp-uniform
        float best = -INFINITY;
        int at = n_experts;  // none yet: any untaken expert beats it, the lowest first
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; ++i) {
            const int e = lane + 32 * i;
            const bool open = e < n_experts && !((taken >> i) & 1u);
            if (open && (v[i] > best || (v[i] == best && e < at))) best = v[i], at = e;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const int oa = __shfl_xor_sync(0xffffffffu, at, o);
            if (ob > best || (ob == best && oa < at)) best = ob, at = oa;
        }
        top[j] = best;
        chosen[j] = at;
        if ((at & 31) == lane) taken |= 1u << (at >> 5);
    }
    if (lane != 0) return;
    float w[MOE_MAX_K], sum = 0.f;
#pragma unroll
    for (int j = 0; j < MOE_MAX_K; ++j)
        if (j < k) sum += (w[j] = expf(top[j] - top[0]));  // top[0] is the largest
#pragma unroll
    for (int j = 0; j < MOE_MAX_K; ++j)
        if (j < k) {
            ids[(size_t)t * k + j] = chosen[j];
            weights[(size_t)t * k + j] = w[j] / sum;
        }
}

// The warp's dot products of weight rows wa (and wb, when TWO) with x (times g, NORM) over
// cols values; every lane gets the sums.
template <class T, bool NORM, bool TWO>
__device__ __forceinline__ void row_dots(const uint8_t *wa, const uint8_t *wb, const float *x,
                                         const float *__restrict__ g, int cols, int lane,
                                         float &sa, float &sb) {
    constexpr int NS = T::QK / 8;
    const int nslot = cols / T::QK * NS;
    sa = 0.f, sb = 0.f;
    for (int s = lane; s < nslot; s += 32) {
        const int b = s / NS, q = s % NS;
        float4 xa, xc, a, c;
        x_slot<NORM>(x, g, b * T::QK + T::P0(q), b * T::QK + T::P1(q), xa, xc);
        T::slot8(wa + (size_t)b * T::BYTES, q, a, c);
        sa += dot8(a, c, xa, xc);
        if (TWO) {
            T::slot8(wb + (size_t)b * T::BYTES, q, a, c);
            sb += dot8(a, c, xa, xc);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        sa += __shfl_xor_sync(0xffffffffu, sa, o);
        if (TWO) sb += __shfl_xor_sync(0xffffffffu, sb, o);
    }
}

__device__ __forceinline__ float clamped_swiglu(float gate, float up, float alpha, float limit) {
    gate = gate > limit ? limit : gate;  // comparisons, not fminf: NaN stays NaN
    up = up > limit ? limit : up < -limit ? -limit : up;
    return (up + 1.f) * (gate / (1.f + expf(-alpha * gate)));
}

// Grid (ceil(d_ff / MOE_WARPS), n_tokens * k), MOE_WARPS * 32 threads: warp -> output r of the
// j-th expert of token t (blockIdx.y = t * k + j). Wg, Wu: (n_experts, d_ff, cols); bg, bu:
// (n_experts, d_ff) f32; x: (n_tokens, cols) f32; g: (cols,) f32 with NORM (x is rmsnorm'd
// first); ids: (n_tokens, k); h: (n_tokens, k, d_ff).
template <class T, bool NORM>
__device__ __forceinline__ void gate_up_impl(const uint8_t *__restrict__ Wg,
                                             const uint8_t *__restrict__ Wu,
                                             const float *__restrict__ bg,
                                             const float *__restrict__ bu, int d_ff, int cols,
                                             const float *x, const float *__restrict__ g,
                                             float eps, const int *ids, int k, float alpha,
                                             float limit, float *h) {
    const int lane = threadIdx.x & 31, r = blockIdx.x * MOE_WARPS + (threadIdx.x >> 5);
    const int j = blockIdx.y % k, t = blockIdx.y / k;
    pdl_trigger();
    pdl_wait();
    if (r >= d_ff) return;
    const size_t row_bytes = (size_t)(cols / T::QK) * T::BYTES;
    const size_t row = (size_t)__ldcg(ids + (size_t)t * k + j) * d_ff + r;
    const float *xt = x + (size_t)t * cols;
    float sg, su;
    row_dots<T, NORM, true>(Wg + row * row_bytes, Wu + row * row_bytes, xt, g, cols, lane, sg, su);
    const float inv = NORM ? rms_inv(xt, cols, eps, lane) : 1.f;  // the whole warp
    if (lane != 0) return;
    h[((size_t)t * k + j) * d_ff + r] = clamped_swiglu(sg * inv + bg[row], su * inv + bu[row],
                                                       alpha, limit);
}

// Grid (ceil(rows / MOE_WARPS), n_tokens): warp -> output r of token t. Wd: (n_experts, rows,
// d_ff); bd: (n_experts, rows) f32; h: (n_tokens, k, d_ff); ids, wts: (n_tokens, k);
// y: (n_tokens, rows), overwritten or (accumulate: the residual stream) added to.
template <class T>
__device__ __forceinline__ void down_impl(const uint8_t *__restrict__ Wd,
                                          const float *__restrict__ bd, int rows, int d_ff,
                                          const float *h, const int *ids, const float *wts,
                                          int k, float *y, int accumulate) {
    const int lane = threadIdx.x & 31, r = blockIdx.x * MOE_WARPS + (threadIdx.x >> 5);
    const int t = blockIdx.y;
    pdl_trigger();
    pdl_wait();
    if (r >= rows) return;
    const size_t row_bytes = (size_t)(d_ff / T::QK) * T::BYTES;
    float total = 0.f;
    for (int j = 0; j < k; ++j) {
        const size_t row = (size_t)__ldcg(ids + (size_t)t * k + j) * rows + r;
        float s, unused;
        row_dots<T, false, false>(Wd + row * row_bytes, nullptr, h + ((size_t)t * k + j) * d_ff,
                                  nullptr, d_ff, lane, s, unused);
        total += __ldcg(wts + (size_t)t * k + j) * (s + bd[row]);
    }
    if (lane != 0) return;
    float *out = y + (size_t)t * rows + r;
    *out = accumulate ? __ldcg(out) + total : total;
}

#define MOE_GATE_UP_ARGS                                                                        \
    const uint8_t *__restrict__ Wg, const uint8_t *__restrict__ Wu, const float *__restrict__ bg, \
        const float *__restrict__ bu, int d_ff, int cols, const float *x,                       \
        const float *__restrict__ g, float eps, const int *ids, int k, float alpha, float limit, \
        float *h
#define MOE_GATE_UP_PASS Wg, Wu, bg, bu, d_ff, cols, x, g, eps, ids, k, alpha, limit, h
#define MOE_KERNELS(T, name)                                                                    \
    extern "C" __global__ void __launch_bounds__(MOE_WARPS * 32)                                \
        moe_gate_up_##name(MOE_GATE_UP_ARGS) {                                                  \
        gate_up_impl<ggml::T, false>(MOE_GATE_UP_PASS);                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MOE_WARPS * 32)                                \
        moe_gate_up_norm_##name(MOE_GATE_UP_ARGS) {                                             \
        gate_up_impl<ggml::T, true>(MOE_GATE_UP_PASS);                                          \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MOE_WARPS * 32)                                \
        moe_down_##name(const uint8_t *__restrict__ Wd, const float *__restrict__ bd, int rows, \
                        int d_ff, const float *h, const int *ids, const float *wts, int k,      \
                        float *y, int accumulate) {                                             \
        down_impl<ggml::T>(Wd, bd, rows, d_ff, h, ids, wts, k, y, accumulate);                  \
    }
GGML_FOR_EACH_TYPE(MOE_KERNELS)

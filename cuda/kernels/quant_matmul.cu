// Matrix-matrix product for prefill: Y[t, r] = sum_c X[t, c] * W[r, c] (+ bias[r]) (+ Y[t, r] when
// accumulate).
//
// X: n x cols float32 (row-major), W: rows x cols raw GGML blocks, Y: n rows of ldy floats of which
// this product writes the first `rows` (ldy >= rows): a projection group whose matrices have
// different types (q | k | v of a mixed-quant file) runs one product per matrix, each into its own
// column slice of the group's output (the caller offsets Y by the slice's first column). bias:
// null, or `rows` floats added in the epilogue (qwen2's q/k/v bias).
// Both kernels tile the output (tokens x weight rows) and walk cols in steps of BK = 32: each step
// dequantizes a BN x 32 weight tile into shared memory once and reuses it for BM tokens.
//   matmul_simt_*:   fp32 FMA, 64 x 64 tile, 256 threads with 4 x 4 outputs each (exact path).
//   matmul_tc32_*:   tensor cores (WMMA m16n16k16), X and W tiles rounded to fp16 in shared
//                    memory, fp32 accumulation; BM = 32 tokens, BN = 64 rows, 4 warps.
//   matmul_tcs{32,64}_*: the same with 128-column stages and batched, prefetched loads.
// cols must be a multiple of 32 (quant blocks are 32 or 256 values; F32/F16 rows too here);
// n and rows are arbitrary (out-of-range tile rows load as zeros and are not stored).
#include <mma.h>

#include "ggml_blocks.cuh"

#define BK 32

// The epilogue's store of one output: y = v (+ bias) (+ the old y).
__device__ __forceinline__ void store_out(float *__restrict__ Y, int ldy,
                                          const float *__restrict__ bias, int t, int r, float v,
                                          int accumulate) {
    float *y = Y + (size_t)t * ldy + r;
    if (bias != nullptr) v += bias[r];
    *y = accumulate ? *y + v : v;
}

// Dequantize quad q (4 values) of tile row r: weights at cols k0 + 4q .. +3 of weight row `row`.
template <class T>
__device__ __forceinline__ float4 w_quad(const uint8_t *__restrict__ W, size_t row_bytes, int row,
                                         int rows, int k0, int q) {
    if (row >= rows) return make_float4(0.f, 0.f, 0.f, 0.f);
    const int col = k0 + 4 * q;
    float4 v;
    T::dq4(W + (size_t)row * row_bytes + (size_t)(col / T::QK) * T::BYTES, (col % T::QK) / 4, v);
    return v;
}

__device__ __forceinline__ float4 x_quad(const float *__restrict__ X, int cols, int t, int n, int k0,
                                         int q) {
    if (t >= n) return make_float4(0.f, 0.f, 0.f, 0.f);
    return *reinterpret_cast<const float4 *>(X + (size_t)t * cols + k0 + 4 * q);
}

// ---------------------------------------------------------------- fp32 SIMT
template <class T>
__device__ __forceinline__ void matmul_simt_impl(const uint8_t *__restrict__ W, int rows, int cols,
                                                 const float *__restrict__ X, int n,
                                                 float *__restrict__ Y, int ldy,
                                                 const float *__restrict__ bias, int accumulate) {
    constexpr int BM = 64, BN = 64;
    __shared__ __align__(16) float Xs[BK][BM + 4];  // transposed tiles: [k][token], [k][row]
    __shared__ __align__(16) float Ws[BK][BN + 4];
    const int tid = threadIdx.x;
    const int t0 = blockIdx.y * BM, r0 = blockIdx.x * BN;
    const size_t row_bytes = (size_t)(cols / T::QK) * T::BYTES;
    const int ty = tid / 16, tx = tid % 16;  // outputs: tokens 4ty.., rows 4tx..
    float acc[4][4] = {};
    for (int k0 = 0; k0 < cols; k0 += BK) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int idx = tid + 256 * i, r = idx / 8, q = idx % 8;  // 64 tile rows x 8 quads
            const float4 w = w_quad<T>(W, row_bytes, r0 + r, rows, k0, q);
            Ws[4 * q][r] = w.x, Ws[4 * q + 1][r] = w.y, Ws[4 * q + 2][r] = w.z, Ws[4 * q + 3][r] = w.w;
            const float4 x = x_quad(X, cols, t0 + r, n, k0, q);
            Xs[4 * q][r] = x.x, Xs[4 * q + 1][r] = x.y, Xs[4 * q + 2][r] = x.z, Xs[4 * q + 3][r] = x.w;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < BK; ++k) {
            const float4 a = *reinterpret_cast<const float4 *>(&Xs[k][4 * ty]);
            const float4 b = *reinterpret_cast<const float4 *>(&Ws[k][4 * tx]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int t = t0 + 4 * ty + i;
        if (t >= n) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = r0 + 4 * tx + j;
            if (r < rows) store_out(Y, ldy, bias, t, r, acc[i][j], accumulate);
        }
    }
}

// ---------------------------------------------------------------- tensor cores
__device__ __forceinline__ uint2 half4(float4 v) {  // 4 floats -> 4 halves (round to nearest)
    __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
    return make_uint2(*reinterpret_cast<uint32_t *>(&lo), *reinterpret_cast<uint32_t *>(&hi));
}

template <class T, int BM>
__device__ __forceinline__ void matmul_tc_impl(const uint8_t *__restrict__ W, int rows, int cols,
                                               const float *__restrict__ X, int n,
                                               float *__restrict__ Y, int ldy,
                                               const float *__restrict__ bias, int accumulate) {
    using namespace nvcuda;
    constexpr int BN = 64, LD = BK + 8, LDC = BN + 4;
    constexpr int FM = BM / 32, FN = 2;  // 16x16 fragments per warp: warps tile 2 x 2
    __shared__ __align__(32) __half As[BM][LD];    // [token][k]
    __shared__ __align__(32) __half Bs[BN][LD];    // [row][k] = W tile, read as col-major B
    __shared__ __align__(32) float Cs[BM][LDC];    // epilogue staging
    const int tid = threadIdx.x, warp = tid / 32;
    const int wm = warp / 2, wn = warp % 2;
    const int t0 = blockIdx.y * BM, r0 = blockIdx.x * BN;
    const size_t row_bytes = (size_t)(cols / T::QK) * T::BYTES;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    for (int k0 = 0; k0 < cols; k0 += BK) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // W tile: 64 rows x 8 quads, 4 quads per thread
            const int idx = tid + 128 * i, r = idx / 8, q = idx % 8;
            const float4 w = w_quad<T>(W, row_bytes, r0 + r, rows, k0, q);
            *reinterpret_cast<uint2 *>(&Bs[r][4 * q]) = half4(w);
        }
#pragma unroll
        for (int i = 0; i < BM / 16; ++i) {  // X tile: BM tokens x 8 quads
            const int idx = tid + 128 * i, t = idx / 8, q = idx % 8;
            const float4 x = x_quad(X, cols, t0 + t, n, k0, q);
            *reinterpret_cast<uint2 *>(&As[t][4 * q]) = half4(x);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[FM];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b[FN];
#pragma unroll
            for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(a[i], &As[(wm * FM + i) * 16][kk], LD);
#pragma unroll
            for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], &Bs[(wn * FN + j) * 16][kk], LD);
#pragma unroll
            for (int i = 0; i < FM; ++i)
#pragma unroll
                for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j)
            wmma::store_matrix_sync(&Cs[(wm * FM + i) * 16][(wn * FN + j) * 16], acc[i][j], LDC,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < BM * BN; idx += 128) {  // consecutive threads: consecutive rows of Y
        const int t = t0 + idx / BN, r = r0 + idx % BN;
        if (t < n && r < rows) store_out(Y, ldy, bias, t, r, Cs[idx / BN][idx % BN], accumulate);
    }
}

// Staged tensor-core kernel: k-stages of 128 columns, each thread's share of a stage (16 W
// quads + BM/8 X quads) loaded into registers in one burst, and the next stage's loads issued
// before the current stage's MMAs (register double buffering). The kernel above is latency
// bound (a round trip per quad it loads); this one needs one per 128 columns, overlapped with
// compute. A partial last stage stores zeros past cols. The epilogue's staging tile reuses
// the A/B tiles' shared memory.
template <class T, int BM>
__device__ __forceinline__ void matmul_tcs_impl(const uint8_t *__restrict__ W, int rows, int cols,
                                                const float *__restrict__ X, int n,
                                                float *__restrict__ Y, int ldy,
                                                const float *__restrict__ bias, int accumulate) {
    using namespace nvcuda;
    constexpr int BN = 64, BKS = 128, LD = BKS + 8, LDC = BN + 4;
    constexpr int FM = BM / 32, FN = 2;
    constexpr int WQ = BN * BKS / 4 / 128, XQ = BM * BKS / 4 / 128;  // quads per thread per stage
    constexpr int AB_BYTES = (BM + BN) * LD * 2, C_BYTES = BM * LDC * 4;
    __shared__ __align__(32) unsigned char smem[AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES];
    __half(*As)[LD] = reinterpret_cast<__half(*)[LD]>(smem);               // [token][k]
    __half(*Bs)[LD] = reinterpret_cast<__half(*)[LD]>(smem + BM * LD * 2);  // [row][k]
    float(*Cs)[LDC] = reinterpret_cast<float(*)[LDC]>(smem);                 // after the k loop
    const int tid = threadIdx.x, warp = tid / 32;
    const int wm = warp / 2, wn = warp % 2;
    const int t0 = blockIdx.y * BM, r0 = blockIdx.x * BN;
    const size_t row_bytes = (size_t)(cols / T::QK) * T::BYTES;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 wv[WQ], xv[XQ];
    // Branch-free loads: indices are clamped to valid addresses (rows / tokens past the end
    // repeat the last one and are never stored; columns past cols are zeroed in the store
    // below), so the compiler can issue all of a stage's loads before decoding any of them.
    // With a branch per quad, each quad's decode waited for its own load: one round trip each.
    auto load = [&](int k0) {
#pragma unroll
        for (int i = 0; i < WQ; ++i) {  // a row's 32 quads come from 32 consecutive threads
            const int idx = tid + 128 * i, r = idx >> 5, q = idx & 31;
            const int col = min(k0 + 4 * q, cols - 4), row = min(r0 + r, rows - 1);
            T::dq4(W + (size_t)row * row_bytes + (size_t)(col / T::QK) * T::BYTES,
                   (col % T::QK) / 4, wv[i]);
        }
#pragma unroll
        for (int i = 0; i < XQ; ++i) {
            const int idx = tid + 128 * i, t = idx >> 5, q = idx & 31;
            const int col = min(k0 + 4 * q, cols - 4), tok = min(t0 + t, n - 1);
            xv[i] = *reinterpret_cast<const float4 *>(X + (size_t)tok * cols + col);
        }
    };
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    load(0);
    for (int k0 = 0; k0 < cols; k0 += BKS) {
#pragma unroll
        for (int i = 0; i < WQ; ++i) {
            const int idx = tid + 128 * i;
            const bool in = k0 + 4 * (idx & 31) < cols;
            *reinterpret_cast<uint2 *>(&Bs[idx >> 5][4 * (idx & 31)]) = half4(in ? wv[i] : zero);
        }
#pragma unroll
        for (int i = 0; i < XQ; ++i) {
            const int idx = tid + 128 * i;
            const bool in = k0 + 4 * (idx & 31) < cols;
            *reinterpret_cast<uint2 *>(&As[idx >> 5][4 * (idx & 31)]) = half4(in ? xv[i] : zero);
        }
        __syncthreads();
        if (k0 + BKS < cols) load(k0 + BKS);  // in flight during the MMAs below
#pragma unroll
        for (int kk = 0; kk < BKS; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[FM];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b[FN];
#pragma unroll
            for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(a[i], &As[(wm * FM + i) * 16][kk], LD);
#pragma unroll
            for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], &Bs[(wn * FN + j) * 16][kk], LD);
#pragma unroll
            for (int i = 0; i < FM; ++i)
#pragma unroll
                for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j)
            wmma::store_matrix_sync(&Cs[(wm * FM + i) * 16][(wn * FN + j) * 16], acc[i][j], LDC,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < BM * BN; idx += 128) {
        const int t = t0 + idx / BN, r = r0 + idx % BN;
        if (t < n && r < rows) store_out(Y, ldy, bias, t, r, Cs[idx / BN][idx % BN], accumulate);
    }
}

#define MM_SIG(kname, threads)                                                                 \
    extern "C" __global__ void __launch_bounds__(threads)                                      \
        kname(const uint8_t *__restrict__ W, int rows, int cols, const float *__restrict__ X,  \
              int n, float *__restrict__ Y, int ldy, const float *__restrict__ bias,           \
              int accumulate)
#define MATMUL_KERNELS(T, name)                                                                \
    MM_SIG(matmul_simt_##name, 256) {                                                          \
        matmul_simt_impl<ggml::T>(W, rows, cols, X, n, Y, ldy, bias, accumulate);              \
    }                                                                                          \
    MM_SIG(matmul_tc32_##name, 128) {                                                          \
        matmul_tc_impl<ggml::T, 32>(W, rows, cols, X, n, Y, ldy, bias, accumulate);            \
    }                                                                                          \
    MM_SIG(matmul_tcs32_##name, 128) {                                                         \
        matmul_tcs_impl<ggml::T, 32>(W, rows, cols, X, n, Y, ldy, bias, accumulate);           \
    }                                                                                          \
    MM_SIG(matmul_tcs64_##name, 128) {                                                         \
        matmul_tcs_impl<ggml::T, 64>(W, rows, cols, X, n, Y, ldy, bias, accumulate);           \
    }
GGML_FOR_EACH_TYPE(MATMUL_KERNELS)

// Activations shared by the fused decode matvec (quant_matvec.cu) and the prefill element-wise
// kernels (elementwise.cu), so decode and prefill compute the very same function.
//   GLU_SILU: silu(g) = g / (1 + exp(-g)) (SwiGLU: llama, qwen2). For g < -88 expf overflows to
//             inf and g / inf = -0, the right limit.
//   GLU_GELU: the tanh approximation ggml uses (gemma3's GELU, GGML_OP_GELU):
//             0.5 g (1 + tanh(sqrt(2 / pi) g (1 + 0.044715 g^2))).
#pragma once

#define GLU_NONE 0
#define GLU_SILU 1
#define GLU_GELU 2

template <int GLU>
__device__ __forceinline__ float glu_act(float g) {
    if constexpr (GLU == GLU_GELU) {
        const float k = 0.7978845608028654f;  // sqrt(2 / pi)
        return 0.5f * g * (1.f + tanhf(k * g * (1.f + 0.044715f * g * g)));
    } else {
        return g / (1.f + expf(-g));
    }
}

// Host harness for tests/cuda/test_nvcc_compile.py: decodes GGML blocks with the CUDA decoders
// of cuda/kernels/ggml_blocks.cuh (compiled for the CPU), both ways the kernels use them:
// dq4 (4 consecutive values) and slot8 (two quads at P0 / P1; it is raw() + decode()).
//   host_decoders TYPE N_BLOCKS IN OUT_DQ4 OUT_SLOT8   (TYPE: index into TYPES below)
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ggml_blocks.cuh"

template <class T>
static int run(const char *in, const char *out_dq4, const char *out_slot8, int nblk) {
    std::vector<uint8_t> raw(size_t(nblk) * T::BYTES + 16);  // + 16: room for aligned reads
    FILE *f = fopen(in, "rb");
    if (!f || fread(raw.data(), 1, size_t(nblk) * T::BYTES, f) != size_t(nblk) * T::BYTES) return 2;
    fclose(f);
    std::vector<float> a(size_t(nblk) * T::QK), b(size_t(nblk) * T::QK);
    for (int i = 0; i < nblk; ++i) {
        const uint8_t *blk = raw.data() + size_t(i) * T::BYTES;
        float *ai = &a[size_t(i) * T::QK], *bi = &b[size_t(i) * T::QK];
        for (int q = 0; q < T::QK / 4; ++q) {
            float4 v;
            T::dq4(blk, q, v);
            ai[4 * q] = v.x, ai[4 * q + 1] = v.y, ai[4 * q + 2] = v.z, ai[4 * q + 3] = v.w;
        }
        for (int s = 0; s < T::QK / 8; ++s) {
            float4 v, w;
            T::slot8(blk, s, v, w);
            float *p = bi + T::P0(s), *r = bi + T::P1(s);
            p[0] = v.x, p[1] = v.y, p[2] = v.z, p[3] = v.w;
            r[0] = w.x, r[1] = w.y, r[2] = w.z, r[3] = w.w;
        }
    }
    f = fopen(out_dq4, "wb");
    fwrite(a.data(), sizeof(float), a.size(), f);
    fclose(f);
    f = fopen(out_slot8, "wb");
    fwrite(b.data(), sizeof(float), b.size(), f);
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6) return 1;
    const int type = atoi(argv[1]), nblk = atoi(argv[2]);
    switch (type) {  // the order of tests/cuda/ggml_random.py TYPES
        case 0: return run<ggml::F32>(argv[3], argv[4], argv[5], nblk);
        case 1: return run<ggml::F16>(argv[3], argv[4], argv[5], nblk);
        case 2: return run<ggml::Q8_0>(argv[3], argv[4], argv[5], nblk);
        case 3: return run<ggml::Q4_0>(argv[3], argv[4], argv[5], nblk);
        case 4: return run<ggml::Q4_1>(argv[3], argv[4], argv[5], nblk);
        case 5: return run<ggml::Q5_0>(argv[3], argv[4], argv[5], nblk);
        case 6: return run<ggml::Q4_K>(argv[3], argv[4], argv[5], nblk);
        case 7: return run<ggml::Q6_K>(argv[3], argv[4], argv[5], nblk);
        case 8: return run<ggml::MXFP4>(argv[3], argv[4], argv[5], nblk);
    }
    return 1;
}

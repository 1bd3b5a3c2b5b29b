// CUDA kernels of the score network's fused ops (launched by each op family's `mod cuda` in
// engine/src/ops/, helpers in engine/src/ops/cuda.rs), compiled to PTX by engine/build.rs when the
// `cuda` feature is on. Each kernel exists for f32, bf16 and f16 (suffixes _f32, _bf16, _f16);
// arithmetic is in f32 whatever the storage type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Sums `a` and `b` over the block (blockDim.x a multiple of 32, at most 1024); thread 0 gets them.
__device__ __forceinline__ void block_sum2(float &a, float &b) {
    __shared__ float sa[32], sb[32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffff, a, o);
        b += __shfl_down_sync(0xffffffff, b, o);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sa[warp] = a; sb[warp] = b; }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x >> 5;
        a = lane < warps ? sa[lane] : 0.f;
        b = lane < warps ? sb[lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) {
            a += __shfl_down_sync(0xffffffff, a, o);
            b += __shfl_down_sync(0xffffffff, b, o);
        }
    }
}

// Mean and 1/√(var + eps) of x[0, n), computed by the whole block from sums shifted by x[0] (less
// cancellation); every thread gets them.
template <typename T>
__device__ void block_stats(const T *x, uint64_t n, float eps, float &mean, float &rstd) {
    __shared__ float stats[2];
    const float x0 = to_f(x[0]);
    float s = 0.f, s2 = 0.f;
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = to_f(x[i]) - x0;
        s += v;
        s2 += v * v;
    }
    block_sum2(s, s2);
    if (threadIdx.x == 0) {
        const float m = s / (float)n;
        stats[0] = x0 + m;
        stats[1] = rsqrtf(fmaxf(s2 / (float)n - m * m, 0.f) + eps);
    }
    __syncthreads();
    mean = stats[0];
    rstd = stats[1];
}

// GroupNorm, pass 1. Group g (blockIdx.y, over batch × groups) is `n` contiguous values; block
// blockIdx.x of `splits` sums its chunk, shifted by the group's first value (less cancellation):
// partial[(g · splits + split) · 2 + {0, 1}] = Σ (x − x₀), Σ (x − x₀)².
template <typename T>
__device__ void gn_partial(const T *x, float *partial, uint64_t n, uint32_t splits) {
    const uint64_t g = blockIdx.y;
    const T *xg = x + g * n;
    const float x0 = to_f(xg[0]);
    const uint64_t chunk = (n + splits - 1) / splits;
    const uint64_t start = blockIdx.x * chunk;
    const uint64_t end = min(n, start + chunk);
    float s = 0.f, s2 = 0.f;
    for (uint64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        const float v = to_f(xg[i]) - x0;
        s += v;
        s2 += v * v;
    }
    block_sum2(s, s2);
    if (threadIdx.x == 0) {
        partial[(g * splits + blockIdx.x) * 2] = s;
        partial[(g * splits + blockIdx.x) * 2 + 1] = s2;
    }
}

// GroupNorm, pass 2, fused with the affine weight/bias, the optional FiLM scale/shift
// (h · (scale + 1) + shift, `scale`/`shift` [B, C] or null) and SiLU. Row r = b · C + c is
// blockIdx.y; blockIdx.x covers `blockDim.x · 4` time steps of it.
template <typename T>
__device__ void gn_apply(const T *x, const float *partial, const T *weight, const T *bias, const T *scale,
                         const T *shift, T *y, uint32_t channels, uint32_t groups, uint32_t len, uint32_t splits,
                         float eps) {
    __shared__ float coeff[2];
    const uint64_t row = blockIdx.y;
    const uint32_t c = row % channels;
    const uint64_t b = row / channels;
    const uint32_t per_group = channels / groups;
    const uint64_t g = b * groups + c / per_group;
    if (threadIdx.x == 0) {
        const uint64_t n = (uint64_t)per_group * len;
        float s = 0.f, s2 = 0.f;
        for (uint32_t i = 0; i < splits; i++) {
            s += partial[(g * splits + i) * 2];
            s2 += partial[(g * splits + i) * 2 + 1];
        }
        const float x0 = to_f(x[g * n]);
        const float m = s / (float)n;  // mean of x − x₀
        const float var = fmaxf(s2 / (float)n - m * m, 0.f);
        const float rstd = rsqrtf(var + eps);
        const float mean = x0 + m;
        float a = to_f(weight[c]) * rstd;
        float bb = to_f(bias[c]) - mean * a;
        if (scale != nullptr) {
            const float k = to_f(scale[row]) + 1.f;
            a *= k;
            bb = bb * k + to_f(shift[row]);
        }
        coeff[0] = a;
        coeff[1] = bb;
    }
    __syncthreads();
    const float a = coeff[0], bb = coeff[1];
    const T *xr = x + row * len;
    T *yr = y + row * len;
    const uint32_t base = blockIdx.x * blockDim.x * 4 + threadIdx.x;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t t = base + k * blockDim.x;
        if (t < len) {
            const float h = to_f(xr[t]) * a + bb;
            yr[t] = from_f<T>(h / (1.f + __expf(-h)));
        }
    }
}

// GroupNorm + affine + optional scale/shift + SiLU in one kernel, for groups short enough for one
// block (blockIdx.x = b · groups + g): statistics over the group, then the normalised values. Its
// entry point takes gn_apply's parameters, leaving the partial sums and split count unused.
template <typename T>
__device__ void gn_single(const T *x, const T *weight, const T *bias, const T *scale, const T *shift, T *y,
                          uint32_t channels, uint32_t groups, uint32_t len, float eps) {
    const uint64_t g = blockIdx.x;
    const uint32_t per_group = channels / groups;
    const uint64_t n = (uint64_t)per_group * len;
    const T *xg = x + g * n;
    T *yg = y + g * n;
    float mean, rstd;
    block_stats(xg, n, eps, mean, rstd);
    const uint64_t b = g / groups;
    const uint32_t c0 = (g % groups) * per_group;
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const uint32_t c = c0 + i / len;
        float a = to_f(weight[c]) * rstd;
        float bb = to_f(bias[c]) - mean * a;
        if (scale != nullptr) {
            const float k = to_f(scale[b * channels + c]) + 1.f;
            a *= k;
            bb = bb * k + to_f(shift[b * channels + c]);
        }
        const float h = to_f(xg[i]) * a + bb;
        yg[i] = from_f<T>(h / (1.f + __expf(-h)));
    }
}

// [x, skip · scale] along the channels: x [B, C1, L], skip [B, C2, L] → y [B, C1 + C2, L].
template <typename T>
__device__ void cat_scaled(const T *x, const T *skip, T *y, uint32_t c1, uint32_t c2, uint32_t len, float scale) {
    const uint64_t row = blockIdx.y;  // b · (C1 + C2) + c
    const uint64_t b = row / (c1 + c2);
    const uint32_t c = row % (c1 + c2);
    const uint32_t base = blockIdx.x * blockDim.x * 4 + threadIdx.x;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t t = base + k * blockDim.x;
        if (t >= len) continue;
        y[row * len + t] = c < c1 ? x[(b * c1 + c) * len + t]
                                  : from_f<T>(to_f(skip[(b * c2 + (c - c1)) * len + t]) * scale);
    }
}

// Columns of a 1-D convolution: x [B, C, L] → cols [B, C·K, L_out] with
// cols[b, c·K + j, o] = x[b, c, o·S + j − P] (zero outside the input).
template <typename T>
__device__ void im2col(const T *x, T *cols, uint32_t batch, uint32_t channels, uint32_t len, uint32_t kernel,
                       uint32_t stride, uint32_t pad, uint32_t len_out) {
    const uint64_t total = (uint64_t)batch * channels * kernel * len_out;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t o = i % len_out;
        uint64_t r = i / len_out;
        const uint32_t j = r % kernel;
        r /= kernel;  // b · C + c
        const int64_t t = (int64_t)o * stride + j - pad;
        cols[i] = (t >= 0 && t < (int64_t)len) ? x[r * len + t] : from_f<T>(0.f);
    }
}

// LayerNorm without bias over the last dimension: row blockIdx.x of `size` contiguous values,
// y = (x − mean) / √(var + eps) · g. One shifted pass for the statistics, as in gn_partial.
template <typename T>
__device__ void ln_last(const T *x, const T *g, T *y, uint32_t size, float eps) {
    const T *xr = x + (uint64_t)blockIdx.x * size;
    T *yr = y + (uint64_t)blockIdx.x * size;
    float mean, rstd;
    block_stats(xr, size, eps, mean, rstd);
    for (uint32_t i = threadIdx.x; i < size; i += blockDim.x) {
        yr[i] = from_f<T>((to_f(xr[i]) - mean) * rstd * to_f(g[i]));
    }
}

// LayerNorm without bias over the channels of x [B, C, L] at every (b, t). A block of 32 × 32
// threads takes 32 adjacent time steps (threadIdx.x, coalesced reads) of one batch item
// (blockIdx.y); its 32 rows of threads split the channels and pool their sums in shared memory.
template <typename T>
__device__ void ln_channels(const T *x, const T *g, T *y, uint32_t channels, uint32_t len, float eps) {
    __shared__ float ps[32][33], ps2[32][33], stats[2][32];
    const uint32_t tx = threadIdx.x, ty = threadIdx.y;
    const uint32_t t = blockIdx.x * 32 + tx;
    const bool live = t < len;
    const uint64_t base = (uint64_t)blockIdx.y * channels * len + t;
    const float x0 = live ? to_f(x[base]) : 0.f;
    float s = 0.f, s2 = 0.f;
    if (live) {
        for (uint32_t c = ty; c < channels; c += 32) {
            const float v = to_f(x[base + (uint64_t)c * len]) - x0;
            s += v;
            s2 += v * v;
        }
    }
    ps[ty][tx] = s;
    ps2[ty][tx] = s2;
    __syncthreads();
    if (ty == 0) {
        float a = 0.f, q = 0.f;
        for (int i = 0; i < 32; i++) {
            a += ps[i][tx];
            q += ps2[i][tx];
        }
        const float m = a / (float)channels;
        stats[0][tx] = x0 + m;
        stats[1][tx] = rsqrtf(fmaxf(q / (float)channels - m * m, 0.f) + eps);
    }
    __syncthreads();
    if (live) {
        const float mean = stats[0][tx], rstd = stats[1][tx];
        for (uint32_t c = ty; c < channels; c += 32) {
            const uint64_t i = base + (uint64_t)c * len;
            y[i] = from_f<T>((to_f(x[i]) - mean) * rstd * to_f(g[c]));
        }
    }
}

// y = x + bias[c] for x [B, C, L] (rows of L), four values per thread.
template <typename T>
__device__ void add_channel(const T *x, const T *bias, T *y, uint32_t channels, uint32_t len) {
    const uint64_t row = blockIdx.y;
    const float a = to_f(bias[row % channels]);
    const uint32_t base = blockIdx.x * blockDim.x * 4 + threadIdx.x;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t t = base + k * blockDim.x;
        if (t < len) y[row * len + t] = from_f<T>(to_f(x[row * len + t]) + a);
    }
}

#define MSDM_KERNELS(T, SUFFIX)                                                                              \
    extern "C" __global__ void gn_partial_##SUFFIX(const T *x, float *partial, uint64_t n, uint32_t splits) { \
        gn_partial<T>(x, partial, n, splits);                                                                \
    }                                                                                                        \
    extern "C" __global__ void gn_apply_##SUFFIX(const T *x, const float *partial, const T *weight,           \
                                                 const T *bias, const T *scale, const T *shift, T *y,          \
                                                 uint32_t channels, uint32_t groups, uint32_t len,             \
                                                 uint32_t splits, float eps) {                                 \
        gn_apply<T>(x, partial, weight, bias, scale, shift, y, channels, groups, len, splits, eps);          \
    }                                                                                                        \
    extern "C" __global__ void im2col_##SUFFIX(const T *x, T *cols, uint32_t batch, uint32_t channels,        \
                                               uint32_t len, uint32_t kernel, uint32_t stride, uint32_t pad,   \
                                               uint32_t len_out) {                                           \
        im2col<T>(x, cols, batch, channels, len, kernel, stride, pad, len_out);                              \
    }                                                                                                        \
    extern "C" __global__ void ln_last_##SUFFIX(const T *x, const T *g, T *y, uint32_t size, float eps) {    \
        ln_last<T>(x, g, y, size, eps);                                                                      \
    }                                                                                                        \
    extern "C" __global__ void ln_channels_##SUFFIX(const T *x, const T *g, T *y, uint32_t channels,          \
                                                    uint32_t len, float eps) {                               \
        ln_channels<T>(x, g, y, channels, len, eps);                                                         \
    }                                                                                                        \
    extern "C" __global__ void gn_single_##SUFFIX(const T *x, const float *, const T *weight, const T *bias,  \
                                                  const T *scale, const T *shift, T *y, uint32_t channels,   \
                                                  uint32_t groups, uint32_t len, uint32_t, float eps) {      \
        gn_single<T>(x, weight, bias, scale, shift, y, channels, groups, len, eps);                          \
    }                                                                                                        \
    extern "C" __global__ void cat_scaled_##SUFFIX(const T *x, const T *skip, T *y, uint32_t c1, uint32_t c2, \
                                                   uint32_t len, float scale) {                              \
        cat_scaled<T>(x, skip, y, c1, c2, len, scale);                                                       \
    }                                                                                                        \
    extern "C" __global__ void add_channel_##SUFFIX(const T *x, const T *bias, T *y, uint32_t channels,      \
                                                    uint32_t len) {                                          \
        add_channel<T>(x, bias, y, channels, len);                                                           \
    }

MSDM_KERNELS(float, f32)
MSDM_KERNELS(__nv_bfloat16, bf16)
MSDM_KERNELS(__half, f16)

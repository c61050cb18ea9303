// CUDA kernels of the training pass (built to PTX by runtime/build.rs with the `cuda` feature;
// loaded by src/train_kernels.rs). Each replaces a chain of candle elementwise kernels that
// the Nsight profile of a 7B micro-batch showed dominating it (docs/benchmarks.md):
//
// dropout_*:           out = x · keep(seed, i) / (1 − p): the mask is a hash of (seed, element
//                      index), so the backward recomputes it instead of storing it (was cuRAND
//                      uniforms, a compare, two casts and a product).
// causal_softmax_*:    probabilities (f32) of one row of scores: the row's scores rounded to T
//                      after the scale (as HF's eager attention multiplies in T), keys after the
//                      row's query position masked, softmax in f32 (was 9 kernels, several of
//                      them broadcasts over [b, kv, rep, t, t]).
// softmax_backward_*:  dS = scale · P · (dP − Σ dP·P) per row, rounded to T.
// silu_mul_backward_*: dg = gy·u·σ(g)(1 + g(1 − σ(g))), du = gy·silu(g) in f32, rounded to T.
#include "common.cuh"

// splitmix64 of (seed, index): 24 uniform bits → [0, 1).
__device__ __forceinline__ float hash_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

template <typename T>
__device__ void dropout(const T* __restrict__ x, T* __restrict__ out, size_t n, uint64_t seed,
                        float p) {
  const float scale = 1.0f / (1.0f - p);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float keep = hash_uniform(seed, i) >= p ? scale : 0.0f;
    out[i] = from_f<T>(to_f(x[i]) * keep);
  }
}

__device__ __forceinline__ float block_reduce(float v, bool is_max, float* shared) {
  for (int o = 16; o > 0; o >>= 1) {
    float w = __shfl_xor_sync(0xffffffff, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : (is_max ? -INFINITY : 0.0f);
  for (int o = 16; o > 0; o >>= 1) {
    float w = __shfl_xor_sync(0xffffffff, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  return v;
}

// One block per row of `rows` rows of length t; row r's query position is r % t_q.
template <typename T>
__device__ void causal_softmax(const T* __restrict__ scores, float* __restrict__ probs, int t,
                               int t_q, float scale) {
  __shared__ float shared[32];
  const size_t row = blockIdx.x;
  const int limit = (int)(row % t_q);  // keys 0..=limit are visible
  const T* s = scores + row * t;
  float* p = probs + row * t;
  float m = -INFINITY;
  for (int j = threadIdx.x; j <= limit; j += blockDim.x)
    m = fmaxf(m, to_f(from_f<T>(to_f(s[j]) * scale)));
  m = block_reduce(m, true, shared);
  float sum = 0.0f;
  for (int j = threadIdx.x; j <= limit; j += blockDim.x)
    sum += expf(to_f(from_f<T>(to_f(s[j]) * scale)) - m);
  sum = block_reduce(sum, false, shared);
  const float inv = 1.0f / sum;
  for (int j = threadIdx.x; j < t; j += blockDim.x)
    p[j] = j <= limit ? expf(to_f(from_f<T>(to_f(s[j]) * scale)) - m) * inv : 0.0f;
}

template <typename T>
__device__ void softmax_backward(const float* __restrict__ probs, const T* __restrict__ dp,
                                 T* __restrict__ ds, int t, float scale) {
  __shared__ float shared[32];
  const size_t row = blockIdx.x;
  const float* p = probs + row * t;
  const T* g = dp + row * t;
  T* o = ds + row * t;
  float dot = 0.0f;
  for (int j = threadIdx.x; j < t; j += blockDim.x) dot += to_f(g[j]) * p[j];
  dot = block_reduce(dot, false, shared);
  for (int j = threadIdx.x; j < t; j += blockDim.x)
    o[j] = from_f<T>(scale * p[j] * (to_f(g[j]) - dot));
}

template <typename T>
__device__ void silu_mul_backward(const T* __restrict__ g, const T* __restrict__ u,
                                  const T* __restrict__ gy, T* __restrict__ dg,
                                  T* __restrict__ du, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const float gv = to_f(g[i]), uv = to_f(u[i]), y = to_f(gy[i]);
    const float sig = 1.0f / (1.0f + expf(-gv));
    dg[i] = from_f<T>(y * uv * sig * (1.0f + gv * (1.0f - sig)));
    du[i] = from_f<T>(y * gv * sig);
  }
}

#define DEFINE(NAME, T)                                                                        \
  extern "C" __global__ void dropout_##NAME(const T* x, T* out, size_t n, uint64_t seed,      \
                                            float p) {                                         \
    dropout<T>(x, out, n, seed, p);                                                            \
  }                                                                                            \
  extern "C" __global__ void causal_softmax_##NAME(const T* s, float* p, int t, int t_q,       \
                                                   float scale) {                              \
    causal_softmax<T>(s, p, t, t_q, scale);                                                    \
  }                                                                                            \
  extern "C" __global__ void softmax_backward_##NAME(const float* p, const T* dp, T* ds, int t, \
                                                     float scale) {                            \
    softmax_backward<T>(p, dp, ds, t, scale);                                                  \
  }                                                                                            \
  extern "C" __global__ void silu_mul_backward_##NAME(const T* g, const T* u, const T* gy,     \
                                                      T* dg, T* du, size_t n) {                \
    silu_mul_backward<T>(g, u, gy, dg, du, n);                                                 \
  }

DEFINE(f32, float)
DEFINE(bf16, __nv_bfloat16)
DEFINE(f16, __half)

// adamw_f32: one AdamW step for one f32 parameter, in place (p, m, v), with the gradient
// scaled by `gscale` first when `clip` is set. The exact op sequence and f32 roundings of the
// candle path in extractor/src/train/optim.rs, so both paths give the same bits: candle's
// affine (x·mul + add, also tensor·scalar and tensor/scalar) compiles to one fma.rn, its
// binary ops, sqr and sqrt are IEEE round-to-nearest (the train check compares the two).
extern "C" __global__ void adamw_f32(float* __restrict__ p, const float* __restrict__ g,
                                     float* __restrict__ m, float* __restrict__ v, size_t n,
                                     int clip, float gscale, float decay, float b1, float omb1,
                                     float b2, float omb2, float inv_bias2_sqrt, float eps,
                                     float step_size) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float gi = g[i];
    if (clip) gi = __fmaf_rn(gi, gscale, 0.f);
    const float decayed = __fmaf_rn(p[i], decay, 0.f);
    const float mi = __fadd_rn(__fmaf_rn(m[i], b1, 0.f), __fmaf_rn(gi, omb1, 0.f));
    const float vi = __fadd_rn(__fmaf_rn(v[i], b2, 0.f), __fmaf_rn(__fmul_rn(gi, gi), omb2, 0.f));
    const float denom = __fmaf_rn(__fmaf_rn(__fsqrt_rn(vi), inv_bias2_sqrt, 0.f), 1.f, eps);
    const float update = __fmaf_rn(__fdiv_rn(mi, denom), step_size, 0.f);
    m[i] = mi;
    v[i] = vi;
    p[i] = __fsub_rn(decayed, update);
  }
}

// Fused CUDA kernels for the forward passes (built to a fatbin by runtime/build.rs with the
// `cuda` feature; launched from src/cuda_ops.rs, which says what each replaces, and
// src/tc_attention.rs).
//
// cached_attention_*: grouped-query attention of t new positions over the K/V cache buffers
//   (decoding: t = 1; prefill: the chunk), one (position, KV head, row) per block: scores of the
//   KV head's `rep` query heads, softmax and P·V in f32, one rounding to the output type; each
//   K/V row is read once for all of the KV head's query heads.
// tc_attention_*: the same on the tensor cores for bf16/f16 (attention_tc.cuh).
// qkv_rope_*, silu_mul_*, add_residual_*, rms_norm_to_*, add_residual_rms_norm_*, argmax_rows_*:
// see each kernel.
#include "common.cuh"
#include "attention_tc.cuh"

// 16 bytes of T as floats (4 f32 or 8 bf16/f16). `p` is 16-byte aligned (checked on the host:
// head_dim · sizeof(T) is a multiple of 16 and the buffers come from cudaMalloc).
template <typename T> struct Vec16;
template <> struct Vec16<float> {
  static constexpr int N = 4;
  __device__ __forceinline__ static void load(const float* p, float* f) {
    float4 x = *reinterpret_cast<const float4*>(p);
    f[0] = x.x; f[1] = x.y; f[2] = x.z; f[3] = x.w;
  }
};
template <> struct Vec16<__nv_bfloat16> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void load(const __nv_bfloat16* p, float* f) {
    uint4 x = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 t = __bfloat1622float2(h[i]);
      f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
  }
};
template <> struct Vec16<__half> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void load(const __half* p, float* f) {
    uint4 x = *reinterpret_cast<const uint4*>(p);
    const __half2* h = reinterpret_cast<const __half2*>(&x);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 t = __half22float2(h[i]);
      f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
  }
};

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Small vector loads of 4 elements (8 bytes of bf16/f16, 16 of f32) as floats.
__device__ __forceinline__ void load4(const float* p, float* f) {
  float4 x = *reinterpret_cast<const float4*>(p);
  f[0] = x.x; f[1] = x.y; f[2] = x.z; f[3] = x.w;
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float* f) {
  uint2 x = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&x);
  float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
  f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
}
__device__ __forceinline__ void load4(const __half* p, float* f) {
  uint2 x = *reinterpret_cast<const uint2*>(p);
  const __half2* h = reinterpret_cast<const __half2*>(&x);
  float2 a = __half22float2(h[0]), b = __half22float2(h[1]);
  f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
}

// Attention of t new query positions per row over the cache (decoding: t = 1; prefill: t =
// the chunk), one (query position, KV head, batch row) per block:
// q   [b, nh, t, hd]        the queries (after RoPE)
// k,v [b, nkv, cap, hd]     the cache buffers, this chunk's keys already written at offset..
// out [b, t, nh, hd]        (the layout the output projection takes, no transpose)
// Query ti of row r attends keys first_key[r] .. offset + ti (left padding before, causal
// limit after); a padded query (no key) gets zeros, which nothing reads.
// grid (t, nkv, b), block 128 threads. HD > 0 fixes the head dimension at compile time (loops
// unrolled, all of a K row's loads in flight at once); HD = 0 reads it from `hd`.
// Shared memory (floats): q [rep][hd] | probabilities [offset + t][REP4] | 1/sum [REP4] |
// partial outputs [groups][rep][hd].
#define REP4 8
template <typename T, int HD>
__device__ void cached_attention(const T* __restrict__ q, const T* __restrict__ k,
                                 const T* __restrict__ v, const uint32_t* __restrict__ first_key,
                                 T* __restrict__ out, int nh, int nkv, int cap, int hd_arg, int t,
                                 int offset, float scale) {
  extern __shared__ __align__(16) float smem[];
  const int hd = HD > 0 ? HD : hd_arg;
  const int rep = nh / nkv;
  const int ti = blockIdx.x;
  const int g = blockIdx.y;
  const int row = blockIdx.z;
  const int n_keys = offset + ti + 1;
  const int j0 = (int)first_key[row];
  T* orow = out + (((size_t)row * t + ti) * nh + (size_t)g * rep) * hd;
  if (n_keys <= j0) {
    for (int i = threadIdx.x; i < rep * hd; i += blockDim.x) orow[i] = from_f<T>(0.f);
    return;
  }
  float* qs = smem;                        // [rep][hd], pre-scaled
  float* pr = qs + rep * hd;               // [n_keys][REP4]: scores, then probabilities
  float* inv_sum = pr + (offset + t) * REP4;  // [REP4]
  float* part = inv_sum + REP4;            // [groups][rep][hd]
  for (int i = threadIdx.x; i < rep * hd; i += blockDim.x) {
    const int h = i / hd, d = i % hd;
    qs[i] = to_f(q[((((size_t)row * nh + g * rep + h) * t) + ti) * hd + d]) * scale;
  }
  __syncthreads();
  const size_t base = ((size_t)row * nkv + g) * (size_t)cap * hd;
  constexpr int VN = Vec16<T>::N;
  // Scores: one key per thread; its K row read in 16-byte pieces, all in flight when HD is
  // known; q read as float4 broadcasts.
  for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
    float acc[REP4];
#pragma unroll
    for (int h = 0; h < REP4; ++h) acc[h] = 0.f;
    if (j >= j0) {
      const T* krow = k + base + (size_t)j * hd;
#pragma unroll
      for (int d = 0; d < hd; d += VN) {
        float kf[VN];
        Vec16<T>::load(krow + d, kf);
#pragma unroll
        for (int h = 0; h < REP4; ++h) {
          if (h < rep) {
            const float4* qh = reinterpret_cast<const float4*>(qs + h * hd + d);
#pragma unroll
            for (int e = 0; e < VN; e += 4) {
              float4 qq = qh[e / 4];
              acc[h] = fmaf(qq.x, kf[e], acc[h]);
              acc[h] = fmaf(qq.y, kf[e + 1], acc[h]);
              acc[h] = fmaf(qq.z, kf[e + 2], acc[h]);
              acc[h] = fmaf(qq.w, kf[e + 3], acc[h]);
            }
          }
        }
      }
    }
    float4* dst = reinterpret_cast<float4*>(pr + j * REP4);
#pragma unroll
    for (int h = 0; h < REP4; h += 4) {
      float4 s4;
      s4.x = (j >= j0 && h < rep) ? acc[h] : -INFINITY;
      s4.y = (j >= j0 && h + 1 < rep) ? acc[h + 1] : -INFINITY;
      s4.z = (j >= j0 && h + 2 < rep) ? acc[h + 2] : -INFINITY;
      s4.w = (j >= j0 && h + 3 < rep) ? acc[h + 3] : -INFINITY;
      dst[h / 4] = s4;
    }
  }
  __syncthreads();
  // Softmax per query head, one warp per head.
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  for (int h = warp; h < rep; h += nwarps) {
    float m = -INFINITY;
    for (int j = j0 + lane; j < n_keys; j += 32) m = fmaxf(m, pr[j * REP4 + h]);
    m = warp_max(m);
    float sum = 0.f;
    for (int j = lane; j < n_keys; j += 32) {
      float e = (j >= j0) ? expf(pr[j * REP4 + h] - m) : 0.f;
      pr[j * REP4 + h] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) inv_sum[h] = 1.f / sum;
  }
  __syncthreads();
  // P·V: each thread owns 4 output dimensions of every head for one group of keys
  // (j = j0 + group, step groups), so that several V loads are in flight per thread; the
  // groups' partial sums are added through shared memory.
  const int quads = hd / 4;
  const int groups = blockDim.x / quads;
  const int quad = threadIdx.x % quads, grp = threadIdx.x / quads;
  if (grp < groups) {
    float o[REP4][4];
#pragma unroll
    for (int h = 0; h < REP4; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[h][e] = 0.f;
    const T* vcol = v + base + quad * 4;
#pragma unroll 8
    for (int j = j0 + grp; j < n_keys; j += groups) {
      float vf[4];
      load4(vcol + (size_t)j * hd, vf);
      const float4* p4 = reinterpret_cast<const float4*>(pr + j * REP4);
      float4 pa = p4[0], pb = p4[1];
      float pj[REP4] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};
#pragma unroll
      for (int h = 0; h < REP4; ++h)
        if (h < rep)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[h][e] = fmaf(pj[h], vf[e], o[h][e]);
    }
#pragma unroll
    for (int h = 0; h < REP4; ++h)
      if (h < rep) {
        float4 w = make_float4(o[h][0], o[h][1], o[h][2], o[h][3]);
        *reinterpret_cast<float4*>(part + ((size_t)grp * rep + h) * hd + quad * 4) = w;
      }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rep * hd; i += blockDim.x) {
    float s = 0.f;
    for (int gg = 0; gg < groups; ++gg) s += part[(size_t)gg * rep * hd + i];
    orow[i] = from_f<T>(s * inv_sum[i / hd]);
  }
}

// After the stacked q/k/v projection: adds the bias, applies RoPE (rotate-half form) to the
// q and k heads and scatters them: q to q_out [b, nh, t, hd], k and v straight into the cache
// buffers [b, nkv, cap, hd] at positions offset .. offset+t. Replaces candle's bias add, three
// strided copies, two RoPE kernels and two cache copies.
// qkv [b·t, (nh + 2·nkv)·hd]; bias [(nh + 2·nkv)·hd] or null; cos/sin [b·t, hd/2].
// The biased projection is rounded to T before RoPE (as the reference's biased linear layer
// is), RoPE runs in f32 and is rounded once.
template <typename T>
__device__ void qkv_rope(const T* __restrict__ qkv, const T* __restrict__ bias,
                         const T* __restrict__ cos, const T* __restrict__ sin,
                         T* __restrict__ q_out, T* __restrict__ kc, T* __restrict__ vc, int t,
                         int nh, int nkv, int hd, int cap, int offset) {
  const int n = blockIdx.x;
  const int bi = n / t, ti = n % t;
  const int half = hd / 2;
  const int heads = nh + 2 * nkv;
  const T* src = qkv + (size_t)n * heads * hd;
  const T* cs = cos + (size_t)n * half;
  const T* sn = sin + (size_t)n * half;
  for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
    const int h = p / half, i = p % half;
    const int c1 = h * hd + i, c2 = c1 + half;
    float x1 = to_f(src[c1]), x2 = to_f(src[c2]);
    if (bias != nullptr) {
      x1 = to_f(from_f<T>(x1 + to_f(bias[c1])));
      x2 = to_f(from_f<T>(x2 + to_f(bias[c2])));
    }
    T* dst;
    if (h < nh + nkv) {
      const float c = to_f(cs[i]), s = to_f(sn[i]);
      const float o1 = x1 * c - x2 * s, o2 = x2 * c + x1 * s;
      x1 = o1;
      x2 = o2;
      dst = h < nh ? q_out + (((size_t)bi * nh + h) * t + ti) * hd
                   : kc + (((size_t)bi * nkv + (h - nh)) * cap + offset + ti) * hd;
    } else {
      dst = vc + (((size_t)bi * nkv + (h - nh - nkv)) * cap + offset + ti) * hd;
    }
    dst[i] = from_f<T>(x1);
    dst[i + half] = from_f<T>(x2);
  }
}

// silu(gate) · up, 8 elements per thread with 16-byte loads where the sizes allow (n % 8 == 0;
// candle's buffers are 256-byte aligned), else one element per thread.
template <typename T>
__device__ void silu_mul(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                         size_t n) {
  constexpr int VN = Vec16<T>::N;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  const bool aligned = ((reinterpret_cast<uintptr_t>(gate) | reinterpret_cast<uintptr_t>(up) |
                         reinterpret_cast<uintptr_t>(out)) & 15) == 0;
  if (n % VN == 0 && aligned) {
    for (size_t c = first; c < n / VN; c += stride) {
      float g[VN], u[VN];
      Vec16<T>::load(gate + c * VN, g);
      Vec16<T>::load(up + c * VN, u);
      T r[VN];
#pragma unroll
      for (int e = 0; e < VN; ++e) {
        float s = to_f(from_f<T>(g[e] / (1.f + expf(-g[e]))));
        r[e] = from_f<T>(s * u[e]);
      }
      *reinterpret_cast<uint4*>(out + c * VN) = *reinterpret_cast<const uint4*>(r);
    }
  } else {
    for (size_t i = first; i < n; i += stride) {
      float g = to_f(gate[i]);
      float s = to_f(from_f<T>(g / (1.f + expf(-g))));
      out[i] = from_f<T>(s * to_f(up[i]));
    }
  }
}

// The residual update h + f32(delta) (f32 out), one pass instead of a cast and an add.
template <typename T>
__device__ void add_residual(const float* __restrict__ h, const T* __restrict__ delta,
                             float* __restrict__ out, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = h[i] + to_f(delta[i]);
}

// The sum of every thread's `v` over the block, returned to all threads: warp sums, then the
// first warp sums those. The two norms below share it, so the same row gives the same bits.
// Called once per kernel (its shared scratch is static).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  v = warp_sum(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < nwarps ? partial[lane] : 0.f;
    w = warp_sum(w);
    if (lane == 0) partial[0] = w;
  }
  __syncthreads();
  return partial[0];
}

// RMSNorm of f32 rows with f32 weights, written in T: x · rsqrt(mean(x²) + eps) · w computed in
// f32 (candle's rmsnorm formula) and rounded once. One block per row.
template <typename T>
__device__ void rms_norm_to(const float* __restrict__ x, const float* __restrict__ w,
                            T* __restrict__ out, int cols, float eps) {
  const float* xr = x + (size_t)blockIdx.x * cols;
  T* orow = out + (size_t)blockIdx.x * cols;
  float ss = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) ss = fmaf(xr[c], xr[c], ss);
  const float scale = rsqrtf(block_sum(ss) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) orow[c] = from_f<T>(scale * xr[c] * w[c]);
}

// The residual update and the norm that follows it, in one pass per row: out_h = h + f32(delta)
// (add_residual's values) and out_x = RMSNorm(out_h) · w in T with the same per-thread sums,
// warp/block reduction and block size (256) as rms_norm_to, so that the pair of outputs is
// bit-identical to add_residual followed by rms_norm_to while h is read once and one launch is
// saved. Each thread re-reads only the out_h elements it wrote itself. One block per row.
template <typename T>
__device__ void add_residual_rms_norm(const float* __restrict__ h, const T* __restrict__ delta,
                                      const float* __restrict__ w, float* __restrict__ out_h,
                                      T* __restrict__ out_x, int cols, float eps) {
  const size_t base = (size_t)blockIdx.x * cols;
  const float* hr = h + base;
  const T* dr = delta + base;
  float* ohr = out_h + base;
  T* oxr = out_x + base;
  float ss = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = hr[c] + to_f(dr[c]);
    ohr[c] = v;
    ss = fmaf(v, v, ss);
  }
  const float scale = rsqrtf(block_sum(ss) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) oxr[c] = from_f<T>(scale * ohr[c] * w[c]);
}

// Greedy decoding's argmax over each row of logits (first index of the largest value, as
// torch.argmax), read in the logits' own dtype: no f32 copy of a [rows, vocab] tensor.
template <typename T>
__device__ void argmax_rows(const T* __restrict__ logits, uint32_t* __restrict__ out, int cols) {
  __shared__ float best_v[32];
  __shared__ int best_i[32];
  const T* row = logits + (size_t)blockIdx.x * cols;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = to_f(row[c]);
    if (v > bv) { bv = v; bi = c; }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  if (lane == 0) { best_v[warp] = bv; best_i[warp] = bi; }
  __syncthreads();
  if (warp == 0) {
    bv = lane < nwarps ? best_v[lane] : -INFINITY;
    bi = lane < nwarps ? best_i[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    // A row of NaNs (never seen) yields index 0 rather than an out-of-range id.
    if (lane == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0u : (uint32_t)bi;
  }
}

#define DEFINE_ATTENTION(NAME, T, HD)                                                          \
  extern "C" __global__ void __launch_bounds__(128)                                           \
      cached_attention_##NAME##_hd##HD(const T* q, const T* k, const T* v,                    \
                                       const uint32_t* first_key, T* out, int nh, int nkv,    \
                                       int cap, int hd, int t, int offset, float scale) {     \
    cached_attention<T, HD>(q, k, v, first_key, out, nh, nkv, cap, hd, t, offset, scale);    \
  }
#define DEFINE(NAME, T)                                                                        \
  DEFINE_ATTENTION(NAME, T, 0)                                                                 \
  DEFINE_ATTENTION(NAME, T, 64)                                                                \
  DEFINE_ATTENTION(NAME, T, 128)                                                               \
  extern "C" __global__ void silu_mul_##NAME(const T* gate, const T* up, T* out, size_t n) {  \
    silu_mul<T>(gate, up, out, n);                                                            \
  }                                                                                            \
  extern "C" __global__ void add_residual_##NAME(const float* h, const T* delta, float* out,   \
                                                 size_t n) {                                  \
    add_residual<T>(h, delta, out, n);                                                        \
  }                                                                                            \
  extern "C" __global__ void rms_norm_to_##NAME(const float* x, const float* w, T* out,       \
                                                int cols, float eps) {                        \
    rms_norm_to<T>(x, w, out, cols, eps);                                                     \
  }                                                                                            \
  extern "C" __global__ void add_residual_rms_norm_##NAME(const float* h, const T* delta,      \
                                                          const float* w, float* out_h,       \
                                                          T* out_x, int cols, float eps) {    \
    add_residual_rms_norm<T>(h, delta, w, out_h, out_x, cols, eps);                           \
  }                                                                                            \
  extern "C" __global__ void argmax_rows_##NAME(const T* logits, uint32_t* out, int cols) {    \
    argmax_rows<T>(logits, out, cols);                                                        \
  }                                                                                            \
  extern "C" __global__ void qkv_rope_##NAME(const T* qkv, const T* bias, const T* cos,       \
                                             const T* sin, T* q_out, T* kc, T* vc, int t,     \
                                             int nh, int nkv, int hd, int cap, int offset) {  \
    qkv_rope<T>(qkv, bias, cos, sin, q_out, kc, vc, t, nh, nkv, hd, cap, offset);             \
  }

DEFINE(f32, float)
DEFINE(bf16, __nv_bfloat16)
DEFINE(f16, __half)

// Tensor-core attention (attention_tc.cuh): `prefill` (WK = 1), `decode` (WK = 4, optionally
// split over the cache) and the splits' merge. The minimum blocks per SM cap the registers
// (ptxas -v, sm_90, hd 128: prefill 216 → 168, decode 154 → 128, no spills): 3 and 4 resident
// blocks instead of 2 and 3, for more loads in flight.
#define DEFINE_TC_SHAPE(KIND, WK, MIN_BLOCKS, NAME, T, HD)                                      \
  extern "C" __global__ void __launch_bounds__(TC_THREADS, MIN_BLOCKS)                        \
      tc_attention_##KIND##_##NAME##_hd##HD(const T* q, const T* k, const T* v,                \
                                            const uint32_t* first_key, T* out, float* part_o, \
                                            float* part_ml, int nh, int nkv, int cap, int t,  \
                                            int offset, float scale, int splits) {            \
    tc_attention<T, HD, WK>(q, k, v, first_key, out, part_o, part_ml, nh, nkv, cap, t, offset, \
                            scale, splits);                                                    \
  }
#define DEFINE_TC(NAME, T, HD)                                                                 \
  DEFINE_TC_SHAPE(prefill, 1, 3, NAME, T, HD)                                                  \
  DEFINE_TC_SHAPE(decode, 4, 4, NAME, T, HD)                                                   \
  extern "C" __global__ void __launch_bounds__(TC_THREADS)                                    \
      tc_attention_combine_##NAME##_hd##HD(const float* part_o, const float* part_ml, T* out, \
                                           int nh, int nkv, int t, int splits) {              \
    tc_attention_combine<T, HD>(part_o, part_ml, out, nh, nkv, t, splits);                    \
  }
DEFINE_TC(bf16, __nv_bfloat16, 64)
DEFINE_TC(bf16, __nv_bfloat16, 128)
DEFINE_TC(f16, __half, 64)
DEFINE_TC(f16, __half, 128)

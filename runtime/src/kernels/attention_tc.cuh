// Tensor-core attention (issue #18): the function of cached_attention (decode.cu) for bf16 and
// f16 at head dimensions 64 and 128, with Q·Kᵀ and P·V on the tensor cores (mma.sync m16n8k16,
// f32 accumulation) and the softmax in f32 (online, flash-attention style; P is rounded to the
// storage type once, for the second product, as flash-attention does).
//
// The MMA's M dimension holds (query position, query head of the KV head's group):
// m = ti · rep + h. A group's query heads thus share every K/V tile read from memory, and a
// warp's 16 rows cover consecutive positions (contiguous causal limits). Keys stream through
// shared memory in tiles of 64 (cp.async, rows padded by 8 elements so that the fragment loads
// are free of bank conflicts). Shared memory: one K and one V tile (34.8 kB at hd 128), reused
// for the WK = 4 merge; a second stage streaming the next tile while one is used was measured
// (2026-12-01, one H200): no gain in Method A or B, so it is not kept.
//
// Two shapes of the same kernel (WK = warps that split a tile's keys):
// - WK = 1 (prefill, t·rep > 16): each of the 4 warps owns 16 rows and all 64 keys of a tile;
//   grid (ceil(t·rep / 64), nkv, b).
// - WK = 4 (decoding, t·rep ≤ 16: one M tile): the 4 warps take 16 keys each of every tile and
//   their partial softmax states are merged through shared memory at the end. With splits > 1
//   (few blocks, long caches: flash-decoding) block x = split handles a contiguous range of
//   tiles and writes its unnormalised state to part_o / part_ml, which
//   tc_attention_combine merges. grid (splits, nkv, b).
// Masking as cached_attention: row r's query ti attends keys first_key[r] ..= offset + ti; keys
// outside the block's range are zero-filled in shared memory (never read from the cache, whose
// left-padding slots may hold anything), so masked products are exact zeros; a query with no
// key gets zeros.
#pragma once
#include "common.cuh"

#define TC_KEYS 64
#define TC_THREADS 128
#define LOG2E_F 1.4426950408889634f

// The MMA, packing and paired stores for a 16-bit type T (PTX type name PTX, pair type T2,
// rounding conversion CVT from two floats; lower half = the first).
template <typename T> struct TcMma;
#define DEFINE_TC_MMA(T, PTX, T2, CVT)                                                          \
  template <> struct TcMma<T> {                                                                \
    __device__ __forceinline__ static void mma(float* c, const uint32_t* a, uint32_t b0,       \
                                               uint32_t b1) {                                  \
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX "." PTX                        \
                   ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"              \
                   : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                            \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));            \
    }                                                                                          \
    /* Two floats as one 32-bit register of the MMA's A fragment. */                           \
    __device__ __forceinline__ static uint32_t pack(float x, float y) {                        \
      T2 h = CVT(x, y);                                                                        \
      return *reinterpret_cast<uint32_t*>(&h);                                                 \
    }                                                                                          \
    __device__ __forceinline__ static void store2(T* p, float x, float y) {                    \
      *reinterpret_cast<T2*>(p) = CVT(x, y);                                                   \
    }                                                                                          \
  };
DEFINE_TC_MMA(__nv_bfloat16, "bf16", __nv_bfloat162, __floats2bfloat162_rn)
DEFINE_TC_MMA(__half, "f16", __half2, __floats2half2_rn)

// 16 bytes global → shared without registers; `valid` false zero-fills (nothing is read).
__device__ __forceinline__ void tc_cp_async16(void* dst, const void* src, bool valid) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(n));
}
__device__ __forceinline__ void tc_cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> __device__ __forceinline__ void tc_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// Four 8x8 b16 matrices, transposed: the B fragments of two n-tiles for one k-step of P·V.
__device__ __forceinline__ void tc_ldmatrix_x4_trans(uint32_t* r, const void* p) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}


template <typename T, int HD, int WK>
__device__ void tc_attention(const T* __restrict__ q, const T* __restrict__ k,
                             const T* __restrict__ v, const uint32_t* __restrict__ first_key,
                             T* __restrict__ out, float* __restrict__ part_o,
                             float* __restrict__ part_ml, int nh, int nkv, int cap, int t,
                             int offset, float scale, int splits) {
  constexpr int WM = 4 / WK;          // warps along M
  constexpr int KW = TC_KEYS / WK;    // keys of a tile per warp: 64 or 16
  constexpr int NT = KW / 8;          // n-tiles of the warp's scores
  constexpr int KS = KW / 16;         // k-steps of the warp's P·V
  constexpr int DT = HD / 8;          // n-tiles of the output
  constexpr int QK = HD / 16;         // k-steps of Q·Kᵀ
  constexpr int S = HD + 8;           // padded shared row (elements)
  constexpr int CH = HD / 8;          // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char tc_smem[];
  T* ks = reinterpret_cast<T*>(tc_smem);

  const int rep = nh / nkv;
  const int m_rows = t * rep;
  const int g = blockIdx.y, row = blockIdx.z;
  const int mblock = WK == 1 ? blockIdx.x : 0;
  const int split = WK == 1 ? 0 : blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp / WK, wk = warp % WK;
  const int gr = lane >> 2, c = lane & 3;
  const int m0 = (mblock * WM + wm) * 16;  // the warp's first M row
  const int j0 = (int)first_key[row];
  // Keys the block may need: j0 .. the causal limit of its last row.
  const int block_last_row = min((mblock + 1) * WM * 16, m_rows) - 1;
  const int key_end = offset + block_last_row / rep + 1;  // exclusive
  const int tile_lo = j0 / TC_KEYS;
  const int tile_hi = key_end > j0 ? (key_end + TC_KEYS - 1) / TC_KEYS : tile_lo;
  const int per_split = (tile_hi - tile_lo + splits - 1) / splits;
  const int my_lo = tile_lo + split * per_split;
  const int my_hi = min(my_lo + per_split, tile_hi);

  // The thread's two M rows (gr and gr + 8 of the warp's 16): Q fragments and causal limits.
  uint32_t qa[QK][4];
  int lim[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int m = m0 + gr + 8 * r;
    const bool ok = m < m_rows;
    const int ti = ok ? m / rep : 0, h = ok ? m % rep : 0;
    lim[r] = ok ? offset + ti : -1;
    const T* qrow = q + ((((size_t)row * nh + g * rep + h) * t) + ti) * HD;
#pragma unroll
    for (int kk = 0; kk < QK; ++kk) {
      qa[kk][r] = ok ? *reinterpret_cast<const uint32_t*>(qrow + kk * 16 + 2 * c) : 0u;
      qa[kk][2 + r] = ok ? *reinterpret_cast<const uint32_t*>(qrow + kk * 16 + 8 + 2 * c) : 0u;
    }
  }
  const float scale2 = scale * LOG2E_F;  // scores in log2 units: exp2 below
  float o[DT][4];
#pragma unroll
  for (int i = 0; i < DT; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  const size_t base = ((size_t)row * nkv + g) * (size_t)cap * HD;

  // Tile `tile` → shared memory ([K | V][TC_KEYS][S]), one cp.async group. Each thread copies
  // one 16-byte column chunk of every (TC_THREADS / CH)-th row: fixed strides, no per-chunk
  // division.
  T* vt = ks + TC_KEYS * S;
  auto load_tile = [&](int tile) {
    constexpr int ROWS_PER_PASS = TC_THREADS / CH;
    const int cc = threadIdx.x % CH, r0 = threadIdx.x / CH;
#pragma unroll
    for (int p = 0; p < TC_KEYS / ROWS_PER_PASS; ++p) {
      const int r = r0 + p * ROWS_PER_PASS, j = tile * TC_KEYS + r;
      const bool ok = j >= j0 && j < key_end;
      const size_t src = base + (size_t)(ok ? j : j0) * HD + cc * 8;
      tc_cp_async16(ks + r * S + cc * 8, k + src, ok);
      tc_cp_async16(vt + r * S + cc * 8, v + src, ok);
    }
    tc_cp_async_commit();
  };
  for (int tile = my_lo; tile < my_hi; ++tile) {
    const int kbase = tile * TC_KEYS;
    load_tile(tile);
    tc_cp_async_wait<0>();
    __syncthreads();
    // Scores of the warp's KW keys.
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
      const T* krow = ks + (wk * KW + nt * 8 + gr) * S + 2 * c;
#pragma unroll
      for (int kk = 0; kk < QK; ++kk) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + kk * 16);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + kk * 16 + 8);
        TcMma<T>::mma(s[nt], qa[kk], b0, b1);
      }
    }
    // Mask, scale, online softmax (each row's state is shared by the 4 lanes of a quad).
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = kbase + wk * KW + nt * 8 + 2 * c + (e & 1);
        const int r = e >> 1;
        const bool ok = key >= j0 && key <= lim[r];
        s[nt][e] = ok ? s[nt][e] * scale2 : -INFINITY;
        mx[r] = fmaxf(mx[r], s[nt][e]);
      }
    float sub[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(mrow[r], mx[r]);
      sub[r] = m_new == -INFINITY ? 0.f : m_new;  // no key yet: keep exp2 away from -inf - -inf
      const float alpha = exp2f(mrow[r] - sub[r]);
      mrow[r] = m_new;
      lrow[r] *= alpha;
#pragma unroll
      for (int i = 0; i < DT; ++i) {
        o[i][2 * r] *= alpha;
        o[i][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - sub[e >> 1]);
        lrow[e >> 1] += s[nt][e];
      }
    // P·V: the scores' accumulator layout is the A fragment's (two n-tiles per k-step).
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t pa[4] = {TcMma<T>::pack(s[2 * kk][0], s[2 * kk][1]),
                        TcMma<T>::pack(s[2 * kk][2], s[2 * kk][3]),
                        TcMma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                        TcMma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const int mat = lane >> 3;
      const T* vrow = vt + (wk * KW + kk * 16 + (lane & 7) + 8 * (mat & 1)) * S + 8 * (mat >> 1);
#pragma unroll
      for (int d2 = 0; d2 < DT / 2; ++d2) {
        uint32_t bv[4];
        tc_ldmatrix_x4_trans(bv, vrow + d2 * 16);
        TcMma<T>::mma(o[2 * d2], pa, bv[0], bv[1]);
        TcMma<T>::mma(o[2 * d2 + 1], pa, bv[2], bv[3]);
      }
    }
    __syncthreads();  // every warp is done with this tile before the next is loaded
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
  }

  if (WK == 1) {
    // The warp owns its rows: normalise and write [b, t, nh, hd] (the o-proj layout).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int m = m0 + gr + 8 * r;
      if (m >= m_rows) continue;
      const int ti = m / rep, h = m % rep;
      const float inv = lrow[r] > 0.f ? 1.f / lrow[r] : 0.f;
      T* orow = out + (((size_t)row * t + ti) * nh + g * rep + h) * HD + 2 * c;
#pragma unroll
      for (int i = 0; i < DT; ++i)
        TcMma<T>::store2(orow + i * 8, o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
    }
    return;
  }
  // WK = 4: merge the warps' states (shared memory reused: [4][16][HD] outputs, then m and l).
  __syncthreads();
  float* red_o = reinterpret_cast<float*>(tc_smem);
  float* red_m = red_o + 4 * 16 * HD;
  float* red_l = red_m + 4 * 16;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (gr + 8 * r >= m_rows) continue;  // rows past t·rep: never read
    float* dst = red_o + (warp * 16 + gr + 8 * r) * HD + 2 * c;
#pragma unroll
    for (int i = 0; i < DT; ++i) {
      dst[i * 8] = o[i][2 * r];
      dst[i * 8 + 1] = o[i][2 * r + 1];
    }
    if (c == 0) {
      red_m[warp * 16 + gr + 8 * r] = mrow[r];
      red_l[warp * 16 + gr + 8 * r] = lrow[r];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < min(m_rows, 16) * HD; i += TC_THREADS) {
    const int m = i / HD, d = i % HD;
    float mmax = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) mmax = fmaxf(mmax, red_m[w * 16 + m]);
    float num = 0.f, den = 0.f;
    if (mmax != -INFINITY) {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const float f = exp2f(red_m[w * 16 + m] - mmax);
        num += f * red_o[(w * 16 + m) * HD + d];
        den += f * red_l[w * 16 + m];
      }
    }
    if (splits == 1) {
      const int ti = m / rep, h = m % rep;
      out[(((size_t)row * t + ti) * nh + g * rep + h) * HD + d] =
          from_f<T>(den > 0.f ? num / den : 0.f);
    } else {
      const size_t slot = (((size_t)row * nkv + g) * splits + split) * 16 + m;
      part_o[slot * HD + d] = num;
      if (d == 0) {
        part_ml[slot * 2] = mmax;
        part_ml[slot * 2 + 1] = den;
      }
    }
  }
}

// Merges the splits' states of tc_attention (WK = 4, splits > 1) into the output.
// grid (nkv, b), block TC_THREADS.
template <typename T, int HD>
__device__ void tc_attention_combine(const float* __restrict__ part_o,
                                     const float* __restrict__ part_ml, T* __restrict__ out,
                                     int nh, int nkv, int t, int splits) {
  const int rep = nh / nkv, m_rows = t * rep;
  const int g = blockIdx.x, row = blockIdx.y;
  const size_t slot0 = ((size_t)row * nkv + g) * splits * 16;
  for (int i = threadIdx.x; i < m_rows * HD; i += blockDim.x) {
    const int m = i / HD, d = i % HD;
    float mmax = -INFINITY;
    for (int s = 0; s < splits; ++s) mmax = fmaxf(mmax, part_ml[(slot0 + s * 16 + m) * 2]);
    float num = 0.f, den = 0.f;
    if (mmax != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const size_t slot = slot0 + s * 16 + m;
        const float f = exp2f(part_ml[slot * 2] - mmax);
        num += f * part_o[slot * HD + d];
        den += f * part_ml[slot * 2 + 1];
      }
    }
    const int ti = m / rep, h = m % rep;
    out[(((size_t)row * t + ti) * nh + g * rep + h) * HD + d] =
        from_f<T>(den > 0.f ? num / den : 0.f);
  }
}

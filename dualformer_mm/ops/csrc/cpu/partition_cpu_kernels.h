// Copyright (c) dualformer-mm contributors.
// OpenMP CPU kernel bodies of the partition ops of MHPA (paper section 3.2, eqs. 4-9).
//
// No include guard on purpose: partition_cpu.cpp includes this file twice, into namespace
// DUALFORMER_CPU_NS = base (the compiler's default target) and = avx2 (under
// `#pragma GCC target("avx2,fma")`), and picks one at run time from the CPU's features, the way
// ATen compiles its CPU kernels once per instruction set. Includes live in partition_cpu.cpp.
#ifndef DUALFORMER_CPU_NS
#error "include partition_cpu_kernels.h from partition_cpu.cpp only"
#endif

namespace dualformer {
namespace DUALFORMER_CPU_NS {


// Channels per reduction task: 16 floats are one 64-byte cache line of a token's row.
constexpr int64_t kBlock = 16;
// Tokens per task of the per-token maps; small tasks are not worth a thread wake-up.
constexpr int64_t kTokenGrain = 64;

inline int64_t num_blocks(int64_t dim) { return (dim + kBlock - 1) / kBlock; }

// exp() for float that the compiler can vectorise. std::exp is a libm call per element, which
// made the fused softmax pooling slower than ATen's vectorised (Sleef) exp; this is the
// classic Cephes expf: exp(x) = 2^n * exp(r), r = x - n ln2 in [-ln2/2, ln2/2], with a
// degree-6 polynomial (about 2 ulp), all in plain arithmetic and integer bit operations.
// Arguments are clamped to [-87.3, 88.7]: below, the true result is under FLT_MIN and only
// ever added to a sum that contains exp(0) = 1 (the partition's maximum).
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3365f), 88.7228f);
  // Round x / ln2 to the nearest integer with the 1.5 * 2^23 trick (no libm floor call).
  const float shifter = 12582912.0f;
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return er * scale;
}
inline double fast_exp(double x) { return std::exp(x); }

// Tokens hashed together: their projections accumulate side by side, one SIMD lane per token,
// so the sum over channels stays sequential for every token and still vectorises.
constexpr int64_t kHashTile = 12;
constexpr int64_t kMaxPlanes = 62;

// Projections of one tile onto P planes: acc[p * kHashTile + t] = sum_d xt[d * kHashTile + t]
// * w[d * stride + p]. The P x kHashTile accumulators are P x 3 vectors of 4 doubles held in
// registers (with P <= 4 they fit in AVX2's 16, with the planes and one input vector). GCC's
// auto-vectoriser shuffled them through the stack instead, hence GCC/Clang vector types,
// which compile to AVX2 in the avx2 build and to SSE2 pairs in the base one.
typedef double v4d __attribute__((vector_size(32)));
// The same type for loads from 8-byte aligned addresses.
typedef double v4d_u __attribute__((vector_size(32), aligned(8)));
constexpr int64_t kHashVecs = kHashTile / 4;

template <int P>
inline void project_tile(const double* xt, const double* w, int64_t dim, int64_t stride,
                         double* acc) {
  v4d a[P][kHashVecs];
  for (int p = 0; p < P; ++p)
    for (int64_t v = 0; v < kHashVecs; ++v) a[p][v] = v4d{0.0, 0.0, 0.0, 0.0};
  for (int64_t d = 0; d < dim; ++d) {
    const double* xd = xt + d * kHashTile;
    double wp[P];
    for (int p = 0; p < P; ++p) wp[p] = w[d * stride + p];
    for (int64_t v = 0; v < kHashVecs; ++v) {
      const v4d xv = *reinterpret_cast<const v4d_u*>(xd + 4 * v);
      for (int p = 0; p < P; ++p) a[p][v] += xv * wp[p];
    }
  }
  for (int p = 0; p < P; ++p)
    for (int64_t v = 0; v < kHashVecs; ++v)
      for (int i = 0; i < 4; ++i) acc[p * kHashTile + 4 * v + i] = a[p][v][i];
}

// Projections of one tile onto all `bits` planes, four at a time.
inline void project_planes(const double* xt, const double* w, int64_t dim, int64_t bits,
                           double* acc) {
  for (int64_t p0 = 0; p0 < bits; p0 += 4) {
    double* out = acc + p0 * kHashTile;
    switch (std::min<int64_t>(bits - p0, 4)) {
      case 1: project_tile<1>(xt, w + p0, dim, bits, out); break;
      case 2: project_tile<2>(xt, w + p0, dim, bits, out); break;
      case 3: project_tile<3>(xt, w + p0, dim, bits, out); break;
      default: project_tile<4>(xt, w + p0, dim, bits, out); break;
    }
  }
}

// Fused LSH hash (eqs. 4-5): project every token onto its head's planes in float64 and pack
// the sign bits. x is (B, H, N, D) with any strides; planes (H, D, P) float64, contiguous.
// The products of float32 (or half) values are exact in float64, so the computed sign agrees
// with any other float64 summation order (ATen's einsum, cuBLAS) unless the projection lies
// within about D * 2^-53 * sum_d |x_d w_d| of zero.
template <typename scalar_t>
void lsh_hash_kernel(const scalar_t* x, const double* planes, int64_t* codes, int64_t batch,
                     int64_t heads, int64_t tokens, int64_t dim, int64_t bits,
                     const int64_t* strides) {
  const int64_t sb = strides[0], sh = strides[1], sn = strides[2], sd = strides[3];
  const int64_t tiles = (tokens + kHashTile - 1) / kHashTile;
  at::parallel_for(0, batch * heads * tiles, 4, [&](int64_t begin, int64_t end) {
    std::vector<double> xt(dim * kHashTile);
    double acc[kMaxPlanes * kHashTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tile = task % tiles, bh = task / tiles, h = bh % heads, b = bh / heads;
      const int64_t n0 = tile * kHashTile, count = std::min(kHashTile, tokens - n0);
      const scalar_t* src = x + b * sb + h * sh + n0 * sn;
      // Transposed to (D, tile) in float64, read along the smaller stride: MHPA's tokens are
      // a transposed view of the feature map, rows in channels-last and columns in NCHW.
      // Lanes past the last token hash zeros and are never written out.
      if (sd <= sn) {
        for (int64_t t = 0; t < count; ++t)
          for (int64_t d = 0; d < dim; ++d)
            xt[d * kHashTile + t] = static_cast<double>(src[t * sn + d * sd]);
      } else {
        for (int64_t d = 0; d < dim; ++d)
          for (int64_t t = 0; t < count; ++t)
            xt[d * kHashTile + t] = static_cast<double>(src[t * sn + d * sd]);
      }
      for (int64_t t = count; t < kHashTile; ++t)
        for (int64_t d = 0; d < dim; ++d) xt[d * kHashTile + t] = 0.0;
      project_planes(xt.data(), planes + h * dim * bits, dim, bits, acc);
      int64_t* out = codes + bh * tokens + n0;
      for (int64_t t = 0; t < count; ++t) {
        int64_t code = 0;
        // Same test as the reference, `proj >= 0`: -0.0 counts as positive, NaN as negative.
        for (int64_t p = 0; p < bits; ++p)
          code |= static_cast<int64_t>(acc[p * kHashTile + t] >= 0.0) << p;
        out[t] = code;
      }
    }
  });
}

// Pass 1 of both softmax ops: the maximum of `width` channels of one group's scores `s` (a
// row stride of `dim`) over the tokens of each partition, into peak (K x kBlock). A code out
// of range sets `bad` (the entry raises once the kernel is done) and the token is skipped.
template <typename scalar_t>
inline void partition_max_block(const scalar_t* s, const int64_t* code, int64_t tokens,
                                int64_t dim, int64_t width, int64_t parts,
                                at::opmath_type<scalar_t>* peak, std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  std::fill_n(peak, parts * kBlock, -std::numeric_limits<acc_t>::infinity());
  for (int64_t n = 0; n < tokens; ++n) {
    const int64_t k = code[n];
    if (k < 0 || k >= parts) {
      bad.store(true);
      continue;
    }
    acc_t* __restrict__ m = peak + k * kBlock;
    const scalar_t* __restrict__ row = s + n * dim;
    if (width == kBlock) {  // full block: a fixed trip count the compiler vectorises
      for (int64_t c = 0; c < kBlock; ++c) m[c] = std::max(m[c], static_cast<acc_t>(row[c]));
    } else {
      for (int64_t c = 0; c < width; ++c) m[c] = std::max(m[c], static_cast<acc_t>(row[c]));
    }
  }
}

template <typename scalar_t>
void softmax_pool_forward_kernel(const scalar_t* scores, const scalar_t* values,
                                 const int64_t* codes, scalar_t* pooled,
                                 at::opmath_type<scalar_t>* stats, int64_t groups, int64_t tokens,
                                 int64_t dim, int64_t parts, std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks = num_blocks(dim);
  const int64_t stat_stride = groups * parts * dim;  // stats[0] = lse, stats[1] = pooled
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> peak(parts * kBlock), denom(parts * kBlock), numer(parts * kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, c0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, dim - c0);
      const int64_t* code = codes + g * tokens;
      const scalar_t* s = scores + g * tokens * dim + c0;
      const scalar_t* v = values + g * tokens * dim + c0;
      std::fill(denom.begin(), denom.end(), acc_t(0));
      std::fill(numer.begin(), numer.end(), acc_t(0));
      // Pass 1: the per-partition maximum, so that exp() below cannot overflow.
      partition_max_block(s, code, tokens, dim, width, parts, peak.data(), bad);
      // Pass 2: softmax denominator and weighted sum of the values. Fixed-size inner loops
      // over a full block (the tail of D is padded in the accumulators, never read from the
      // inputs) let the compiler vectorise them.
      for (int64_t n = 0; n < tokens; ++n) {
        const int64_t k = code[n];
        if (k < 0 || k >= parts) continue;
        const acc_t* m = peak.data() + k * kBlock;
        acc_t* __restrict__ den = denom.data() + k * kBlock;
        acc_t* __restrict__ num = numer.data() + k * kBlock;
        const scalar_t* srow = s + n * dim;
        const scalar_t* vrow = v + n * dim;
        if (width == kBlock) {
          // One fused loop of fixed trip count: load, exp, accumulate, all vectorised.
          for (int64_t c = 0; c < kBlock; ++c) {
            const acc_t ec = fast_exp(static_cast<acc_t>(srow[c]) - m[c]);
            den[c] += ec;
            num[c] += ec * static_cast<acc_t>(vrow[c]);
          }
        } else {
          for (int64_t c = 0; c < width; ++c) {
            const acc_t ec = fast_exp(static_cast<acc_t>(srow[c]) - m[c]);
            den[c] += ec;
            num[c] += ec * static_cast<acc_t>(vrow[c]);
          }
        }
      }
      for (int64_t k = 0; k < parts; ++k) {
        const int64_t at = (g * parts + k) * dim + c0;
        for (int64_t c = 0; c < width; ++c) {
          const acc_t den = denom[k * kBlock + c];
          // An empty partition has no tokens to pool: zeros, and lse = -inf marks it. Only
          // an empty partition has den == 0 (its maximum adds exp(0) = 1); a NaN den (NaN or
          // inf scores) gives NaN, as in the reference, never a silent zero.
          const acc_t out = den != acc_t(0) ? numer[k * kBlock + c] / den : acc_t(0);
          pooled[at + c] = static_cast<scalar_t>(out);
          stats[at + c] = den != acc_t(0) ? peak[k * kBlock + c] + std::log(den)
                                          : -std::numeric_limits<acc_t>::infinity();
          stats[stat_stride + at + c] = out;
        }
      }
    }
  });
}

// Softmax pooling's backward for `width` channels of one token (Width > 0: a compile-time
// width, which the compiler vectorises).
template <typename scalar_t, int64_t Width>
inline void softmax_pool_backward_block(const scalar_t* grad, const scalar_t* s,
                                        const scalar_t* v,
                                        const at::opmath_type<scalar_t>* lse,
                                        const at::opmath_type<scalar_t>* pooled,
                                        scalar_t* __restrict__ gs, scalar_t* __restrict__ gv,
                                        int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = Width > 0 ? Width : width;
  for (int64_t c = 0; c < n; ++c) {
    const acc_t w = fast_exp(static_cast<acc_t>(s[c]) - lse[c]);
    const acc_t go = w * static_cast<acc_t>(grad[c]);
    gv[c] = static_cast<scalar_t>(go);
    gs[c] = static_cast<scalar_t>(go * (static_cast<acc_t>(v[c]) - pooled[c]));
  }
}

template <typename scalar_t>
void softmax_pool_backward_kernel(const scalar_t* grad, const scalar_t* scores,
                                  const scalar_t* values, const int64_t* codes,
                                  const at::opmath_type<scalar_t>* stats,
                                  scalar_t* grad_scores, scalar_t* grad_values, int64_t groups,
                                  int64_t tokens, int64_t dim, int64_t parts,
                                  std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* lse = stats;
  const acc_t* pooled = stats + groups * parts * dim;
  at::parallel_for(0, groups * tokens, kTokenGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / tokens, k = codes[i];
      if (k < 0 || k >= parts) {
        bad.store(true);
        continue;
      }
      const int64_t p = (g * parts + k) * dim;
      const scalar_t* s = scores + i * dim;
      const scalar_t* v = values + i * dim;
      scalar_t* gs = grad_scores + i * dim;
      scalar_t* gv = grad_values + i * dim;
      // w = softmax weight of this token; d out/d v = w, d out/d s = w (v - out). In blocks
      // of kBlock channels: full blocks have a fixed trip count, so the whole body, exp
      // included, vectorises; a tail block (D not a multiple of kBlock) runs the same code.
      int64_t c0 = 0;
      for (; c0 + kBlock <= dim; c0 += kBlock)
        softmax_pool_backward_block<scalar_t, kBlock>(grad + p + c0, s + c0, v + c0,
                                                      lse + p + c0, pooled + p + c0, gs + c0,
                                                      gv + c0, kBlock);
      if (c0 < dim)
        softmax_pool_backward_block<scalar_t, 0>(grad + p + c0, s + c0, v + c0, lse + p + c0,
                                                 pooled + p + c0, gs + c0, gv + c0, dim - c0);
    }
  });
}

// One token's `width` channels of the per-token softmax (Width > 0: a compile-time width, which
// the compiler vectorises): w = exp(s - max) / sum, with the reciprocal of the sum given.
template <typename scalar_t, int64_t Width>
inline void softmax_weights_block(const scalar_t* s, const at::opmath_type<scalar_t>* m,
                                  const at::opmath_type<scalar_t>* inv,
                                  scalar_t* __restrict__ w, int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = Width > 0 ? Width : width;
  for (int64_t c = 0; c < n; ++c)
    w[c] = static_cast<scalar_t>(fast_exp(static_cast<acc_t>(s[c]) - m[c]) * inv[c]);
}

// Per-token softmax over each partition (intra='token'): tasks of (group, channel block), as
// in the softmax pooling; pass 1 the maxima, pass 2 the sums of exp, pass 3 the weights.
template <typename scalar_t>
void softmax_forward_kernel(const scalar_t* scores, const int64_t* codes, scalar_t* weights,
                            at::opmath_type<scalar_t>* stats, int64_t groups, int64_t tokens,
                            int64_t dim, int64_t parts, std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks = num_blocks(dim);
  const int64_t stat_stride = groups * parts * dim;  // stats[0] = max, stats[1] = sum of exp
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> peak(parts * kBlock), denom(parts * kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, c0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, dim - c0);
      const int64_t* code = codes + g * tokens;
      const scalar_t* s = scores + g * tokens * dim + c0;
      scalar_t* w = weights + g * tokens * dim + c0;
      partition_max_block(s, code, tokens, dim, width, parts, peak.data(), bad);
      std::fill(denom.begin(), denom.end(), acc_t(0));
      for (int64_t n = 0; n < tokens; ++n) {
        const int64_t k = code[n];
        if (k < 0 || k >= parts) continue;
        const acc_t* m = peak.data() + k * kBlock;
        acc_t* __restrict__ den = denom.data() + k * kBlock;
        const scalar_t* srow = s + n * dim;
        if (width == kBlock) {
          for (int64_t c = 0; c < kBlock; ++c) den[c] += fast_exp(static_cast<acc_t>(srow[c]) - m[c]);
        } else {
          for (int64_t c = 0; c < width; ++c) den[c] += fast_exp(static_cast<acc_t>(srow[c]) - m[c]);
        }
      }
      for (int64_t k = 0; k < parts; ++k) {
        const int64_t at = (g * parts + k) * dim + c0;
        for (int64_t c = 0; c < width; ++c) {
          stats[at + c] = peak[k * kBlock + c];
          stats[stat_stride + at + c] = denom[k * kBlock + c];
          // Reciprocal once per partition and channel; a token's own partition has a sum of
          // at least exp(0) = 1 (an empty one becomes inf and is never read).
          denom[k * kBlock + c] = acc_t(1) / denom[k * kBlock + c];
        }
      }
      for (int64_t n = 0; n < tokens; ++n) {
        const int64_t k = code[n];
        if (k < 0 || k >= parts) continue;
        if (width == kBlock) {
          softmax_weights_block<scalar_t, kBlock>(s + n * dim, peak.data() + k * kBlock,
                                                  denom.data() + k * kBlock, w + n * dim, width);
        } else {
          softmax_weights_block<scalar_t, 0>(s + n * dim, peak.data() + k * kBlock,
                                             denom.data() + k * kBlock, w + n * dim, width);
        }
      }
    }
  });
}

// Its backward: with w = softmax weights and g the incoming gradient of one partition and
// channel, ds_i = w_i (g_i - sum_j w_j g_j). Pass 1 recomputes w from the saved max and sum
// (as the forward computed it) and sums w g per partition; pass 2 writes ds.
template <typename scalar_t>
void softmax_backward_kernel(const scalar_t* grad, const scalar_t* scores, const int64_t* codes,
                             const at::opmath_type<scalar_t>* stats, scalar_t* grad_scores,
                             int64_t groups, int64_t tokens, int64_t dim, int64_t parts,
                             std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks = num_blocks(dim);
  const int64_t stat_stride = groups * parts * dim;
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    // Padded channels past `width` stay 0 (max) and 1 (reciprocal), so full-width loops
    // never see NaN there; they are never written out.
    std::vector<acc_t> peak(parts * kBlock), inv(parts * kBlock), dot(parts * kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, c0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, dim - c0);
      const int64_t* code = codes + g * tokens;
      const int64_t offset = g * tokens * dim + c0;
      std::fill(peak.begin(), peak.end(), acc_t(0));
      std::fill(inv.begin(), inv.end(), acc_t(1));
      std::fill(dot.begin(), dot.end(), acc_t(0));
      for (int64_t k = 0; k < parts; ++k) {
        const int64_t at = (g * parts + k) * dim + c0;
        for (int64_t c = 0; c < width; ++c) {
          peak[k * kBlock + c] = stats[at + c];
          inv[k * kBlock + c] = acc_t(1) / stats[stat_stride + at + c];
        }
      }
      for (int64_t n = 0; n < tokens; ++n) {
        const int64_t k = code[n];
        if (k < 0 || k >= parts) {
          bad.store(true);
          continue;
        }
        const scalar_t* srow = scores + offset + n * dim;
        const scalar_t* grow = grad + offset + n * dim;
        const acc_t* m = peak.data() + k * kBlock;
        const acc_t* r = inv.data() + k * kBlock;
        acc_t* __restrict__ acc = dot.data() + k * kBlock;
        const int64_t count = width == kBlock ? kBlock : width;
        for (int64_t c = 0; c < count; ++c)
          acc[c] += fast_exp(static_cast<acc_t>(srow[c]) - m[c]) * r[c] *
                    static_cast<acc_t>(grow[c]);
      }
      for (int64_t n = 0; n < tokens; ++n) {
        const int64_t k = code[n];
        if (k < 0 || k >= parts) continue;
        const scalar_t* srow = scores + offset + n * dim;
        const scalar_t* grow = grad + offset + n * dim;
        scalar_t* __restrict__ out = grad_scores + offset + n * dim;
        const acc_t* m = peak.data() + k * kBlock;
        const acc_t* r = inv.data() + k * kBlock;
        const acc_t* acc = dot.data() + k * kBlock;
        const int64_t count = width == kBlock ? kBlock : width;
        for (int64_t c = 0; c < count; ++c) {
          const acc_t wc = fast_exp(static_cast<acc_t>(srow[c]) - m[c]) * r[c];
          out[c] = static_cast<scalar_t>(wc * (static_cast<acc_t>(grow[c]) - acc[c]));
        }
      }
    }
  });
}

// Tokens per task of the per-partition sums: a task sums whole rows of one group's chunk of
// tokens into a K x D buffer, then the chunks' partial sums are added in chunk order. The
// chunking depends on the shape only, so the result does not depend on the number of threads;
// whole rows (not 16-channel blocks, as in the softmax pooling) let the adds stream through
// memory at the speed of a plain sum.
constexpr int64_t kSumChunk = 1024;

// acc[0:dim] += row[0:dim] in the accumulation type. Full kBlock-channel blocks have a fixed
// trip count, which the compiler turns into straight vector code without run-time alias checks.
template <typename scalar_t, typename acc_t>
inline void add_row(acc_t* __restrict__ acc, const scalar_t* __restrict__ row, int64_t dim) {
  int64_t c = 0;
  for (; c + kBlock <= dim; c += kBlock)
    for (int64_t j = 0; j < kBlock; ++j) acc[c + j] += static_cast<acc_t>(row[c + j]);
  for (; c < dim; ++c) acc[c] += static_cast<acc_t>(row[c]);
}

// dst[0:dim] = src[0:dim], inline: a memcpy call per 64-channel row cost a fifth of the
// distribution's time.
template <typename scalar_t>
inline void copy_row(scalar_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t dim) {
  int64_t c = 0;
  for (; c + kBlock <= dim; c += kBlock)
    for (int64_t j = 0; j < kBlock; ++j) dst[c + j] = src[c + j];
  for (; c < dim; ++c) dst[c] = src[c];
}

// Sums (K x D, zeroed here) and counts (K) of the rows n0..n1 of one group.
template <typename scalar_t, typename acc_t>
inline void sum_rows(const scalar_t* x, const int64_t* code, int64_t n0, int64_t n1, int64_t dim,
                     int64_t parts, acc_t* sums, int64_t* cnt, std::atomic<bool>& bad) {
  std::fill_n(sums, parts * dim, acc_t(0));
  std::fill_n(cnt, parts, int64_t(0));
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t k = code[n];
    if (k < 0 || k >= parts) {
      bad.store(true);
      continue;
    }
    ++cnt[k];
    add_row(sums + k * dim, x + n * dim, dim);
  }
}

// Per-partition sums and counts of the rows of x (G, N, D); `finish(g, k, sum, count)` gets
// each partition's sum (D values in the accumulation type) and token count.
template <typename scalar_t, typename Finish>
void partition_sums(const scalar_t* x, const int64_t* codes, int64_t groups, int64_t tokens,
                    int64_t dim, int64_t parts, std::atomic<bool>& bad, const Finish& finish) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t chunks = std::max<int64_t>((tokens + kSumChunk - 1) / kSumChunk, 1);
  const int64_t slab = parts * dim;
  if (chunks == 1) {
    // Every group fits one chunk (224x224 inputs: 196 tokens): a task sums its group and
    // finishes it at once, in the same order as below, without a second parallel pass.
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sums(slab);
      std::vector<int64_t> cnt(parts);
      for (int64_t g = begin; g < end; ++g) {
        sum_rows(x + g * tokens * dim, codes + g * tokens, 0, tokens, dim, parts, sums.data(),
                 cnt.data(), bad);
        for (int64_t k = 0; k < parts; ++k) finish(g, k, sums.data() + k * dim, cnt[k]);
      }
    });
    return;
  }
  std::vector<acc_t> partial(groups * chunks * slab);
  std::vector<int64_t> count(groups * chunks * parts);
  at::parallel_for(0, groups * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / chunks, n0 = (task % chunks) * kSumChunk;
      sum_rows(x + g * tokens * dim, codes + g * tokens, n0, std::min(tokens, n0 + kSumChunk),
               dim, parts, partial.data() + task * slab, count.data() + task * parts, bad);
    }
  });
  at::parallel_for(0, groups * parts, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(dim);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / parts, k = i % parts;
      const acc_t* src = partial.data() + g * chunks * slab + k * dim;
      std::copy_n(src, dim, total.data());
      int64_t n = count[g * chunks * parts + k];
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        for (int64_t c = 0; c < dim; ++c) total[c] += src[chunk * slab + c];
        n += count[(g * chunks + chunk) * parts + k];
      }
      finish(g, k, total.data(), n);
    }
  });
}

template <typename scalar_t>
void mean_forward_kernel(const scalar_t* x, const int64_t* codes, scalar_t* means,
                         int64_t* counts, int64_t groups, int64_t tokens, int64_t dim,
                         int64_t parts, std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  partition_sums(x, codes, groups, tokens, dim, parts, bad,
                 [&](int64_t g, int64_t k, const acc_t* sum, int64_t count) {
                   counts[g * parts + k] = count;
                   // An empty partition has a zero sum: its mean is zero, not NaN.
                   const acc_t denom = static_cast<acc_t>(std::max<int64_t>(count, 1));
                   scalar_t* out = means + (g * parts + k) * dim;
                   for (int64_t c = 0; c < dim; ++c) out[c] = static_cast<scalar_t>(sum[c] / denom);
                 });
}

template <typename scalar_t>
void distribute_forward_kernel(const scalar_t* pooled, const int64_t* codes, scalar_t* out,
                               int64_t groups, int64_t tokens, int64_t dim, int64_t parts,
                               std::atomic<bool>& bad) {
  at::parallel_for(0, groups * tokens, kTokenGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / tokens, k = codes[i];
      if (k < 0 || k >= parts) {
        bad.store(true);
        continue;
      }
      copy_row(out + i * dim, pooled + (g * parts + k) * dim, dim);
    }
  });
}

template <typename scalar_t>
void mean_backward_kernel(const scalar_t* grad, const int64_t* codes, const int64_t* counts,
                          scalar_t* grad_x, int64_t groups, int64_t tokens, int64_t dim,
                          int64_t parts, std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  // Every token of partition k gets grad[k] / count[k]: scale the K rows once, then copy them
  // out like the distribution's forward (a row copy runs at memory speed).
  std::vector<scalar_t> scaled(groups * parts * dim);
  at::parallel_for(0, groups * parts, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const acc_t inv = acc_t(1) / static_cast<acc_t>(std::max<int64_t>(counts[row], 1));
      for (int64_t c = 0; c < dim; ++c)
        scaled[row * dim + c] = static_cast<scalar_t>(static_cast<acc_t>(grad[row * dim + c]) * inv);
    }
  });
  distribute_forward_kernel(scaled.data(), codes, grad_x, groups, tokens, dim, parts, bad);
}

template <typename scalar_t>
void distribute_backward_kernel(const scalar_t* grad, const int64_t* codes, scalar_t* grad_pooled,
                                int64_t groups, int64_t tokens, int64_t dim, int64_t parts,
                                std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  partition_sums(grad, codes, groups, tokens, dim, parts, bad,
                 [&](int64_t g, int64_t k, const acc_t* sum, int64_t) {
                   scalar_t* out = grad_pooled + (g * parts + k) * dim;
                   for (int64_t c = 0; c < dim; ++c) out[c] = static_cast<scalar_t>(sum[c]);
                 });
}

}  // namespace DUALFORMER_CPU_NS
}  // namespace dualformer

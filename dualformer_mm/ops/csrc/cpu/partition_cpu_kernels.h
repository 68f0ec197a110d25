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
      std::fill(peak.begin(), peak.end(), -std::numeric_limits<acc_t>::infinity());
      std::fill(denom.begin(), denom.end(), acc_t(0));
      std::fill(numer.begin(), numer.end(), acc_t(0));
      // Pass 1: the per-partition maximum, so that exp() below cannot overflow.
      for (int64_t n = 0; n < tokens; ++n) {
        const int64_t k = code[n];
        if (k < 0 || k >= parts) {
          bad.store(true);
          continue;
        }
        acc_t* __restrict__ m = peak.data() + k * kBlock;
        const scalar_t* __restrict__ row = s + n * dim;
        if (width == kBlock) {  // full block: a fixed trip count the compiler vectorises
          for (int64_t c = 0; c < kBlock; ++c) m[c] = std::max(m[c], static_cast<acc_t>(row[c]));
        } else {
          for (int64_t c = 0; c < width; ++c) m[c] = std::max(m[c], static_cast<acc_t>(row[c]));
        }
      }
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
          // An empty partition has no tokens to pool: zeros, and lse = -inf marks it.
          const acc_t out = den > 0 ? numer[k * kBlock + c] / den : acc_t(0);
          pooled[at + c] = static_cast<scalar_t>(out);
          stats[at + c] = den > 0 ? peak[k * kBlock + c] + std::log(den)
                                  : -std::numeric_limits<acc_t>::infinity();
          stats[stat_stride + at + c] = out;
        }
      }
    }
  });
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
      // w = softmax weight of this token; d out/d v = w, d out/d s = w (v - out). In blocks,
      // so that the exp loop vectorises.
      acc_t w[kBlock];
      for (int64_t c0 = 0; c0 < dim; c0 += kBlock) {
        const int64_t width = std::min(kBlock, dim - c0);
        for (int64_t c = 0; c < width; ++c) w[c] = static_cast<acc_t>(s[c0 + c]) - lse[p + c0 + c];
        for (int64_t c = 0; c < width; ++c) w[c] = fast_exp(w[c]);
        for (int64_t c = 0; c < width; ++c) {
          const acc_t go = w[c] * static_cast<acc_t>(grad[p + c0 + c]);
          gv[c0 + c] = static_cast<scalar_t>(go);
          gs[c0 + c] = static_cast<scalar_t>(go * (static_cast<acc_t>(v[c0 + c]) - pooled[p + c0 + c]));
        }
      }
    }
  });
}

template <typename scalar_t>
void mean_forward_kernel(const scalar_t* x, const int64_t* codes, scalar_t* means,
                         int64_t* counts, int64_t groups, int64_t tokens, int64_t dim,
                         int64_t parts, std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  // At least one task, so that the counts are written even when D = 0.
  const int64_t blocks = std::max<int64_t>(num_blocks(dim), 1);
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums(parts * kBlock);
    std::vector<int64_t> count(parts);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, block = task % blocks, c0 = block * kBlock;
      const int64_t width = std::max<int64_t>(std::min(kBlock, dim - c0), 0);
      const int64_t* code = codes + g * tokens;
      const scalar_t* xg = x + g * tokens * dim + c0;
      std::fill(sums.begin(), sums.end(), acc_t(0));
      std::fill(count.begin(), count.end(), int64_t(0));
      for (int64_t n = 0; n < tokens; ++n) {
        const int64_t k = code[n];
        if (k < 0 || k >= parts) {
          bad.store(true);
          continue;
        }
        ++count[k];
        acc_t* acc = sums.data() + k * kBlock;
        const scalar_t* row = xg + n * dim;
        for (int64_t c = 0; c < width; ++c) acc[c] += static_cast<acc_t>(row[c]);
      }
      for (int64_t k = 0; k < parts; ++k) {
        // Every block counts (cheap); the first one writes, so counts has a single writer.
        if (block == 0) counts[g * parts + k] = count[k];
        const acc_t denom = static_cast<acc_t>(std::max<int64_t>(count[k], 1));
        scalar_t* out = means + (g * parts + k) * dim + c0;
        for (int64_t c = 0; c < width; ++c)
          out[c] = static_cast<scalar_t>(sums[k * kBlock + c] / denom);
      }
    }
  });
}

template <typename scalar_t>
void mean_backward_kernel(const scalar_t* grad, const int64_t* codes, const int64_t* counts,
                          scalar_t* grad_x, int64_t groups, int64_t tokens, int64_t dim,
                          int64_t parts, std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, groups * tokens, kTokenGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / tokens, k = codes[i];
      if (k < 0 || k >= parts) {
        bad.store(true);
        continue;
      }
      const acc_t inv = acc_t(1) / static_cast<acc_t>(std::max<int64_t>(counts[g * parts + k], 1));
      const scalar_t* go = grad + (g * parts + k) * dim;
      scalar_t* gx = grad_x + i * dim;
      for (int64_t c = 0; c < dim; ++c) gx[c] = static_cast<scalar_t>(static_cast<acc_t>(go[c]) * inv);
    }
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
      std::copy_n(pooled + (g * parts + k) * dim, dim, out + i * dim);
    }
  });
}

template <typename scalar_t>
void distribute_backward_kernel(const scalar_t* grad, const int64_t* codes, scalar_t* grad_pooled,
                                int64_t groups, int64_t tokens, int64_t dim, int64_t parts,
                                std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks = num_blocks(dim);
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums(parts * kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, c0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, dim - c0);
      const int64_t* code = codes + g * tokens;
      const scalar_t* gg = grad + g * tokens * dim + c0;
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for (int64_t n = 0; n < tokens; ++n) {
        const int64_t k = code[n];
        if (k < 0 || k >= parts) {
          bad.store(true);
          continue;
        }
        acc_t* acc = sums.data() + k * kBlock;
        const scalar_t* row = gg + n * dim;
        for (int64_t c = 0; c < width; ++c) acc[c] += static_cast<acc_t>(row[c]);
      }
      for (int64_t k = 0; k < parts; ++k) {
        scalar_t* out = grad_pooled + (g * parts + k) * dim + c0;
        for (int64_t c = 0; c < width; ++c) out[c] = static_cast<scalar_t>(sums[k * kBlock + c]);
      }
    }
  });
}

}  // namespace DUALFORMER_CPU_NS
}  // namespace dualformer

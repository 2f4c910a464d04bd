#include "model/avx512_mlp.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/gelu_avx512.h"
#include "model/layer_norm_rows.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace convnext {
namespace {

#define CONVNEXT_AVX512 __attribute__((target("avx512f")))

// Under AddressSanitizer the tile's loads and stores are not checked one by one (ten checks every
// 24 FMAs made the kernel slower than the rest of the network together, and a large image then
// held a sanitized server for over a minute); Product checks instead every range a tile reads or
// writes, once a call (CheckRange).
#if defined(__SANITIZE_ADDRESS__)
#define CONVNEXT_TILE_NO_ASAN __attribute__((no_sanitize("address")))
void CheckRange(const float* begin, int64_t floats) {
  if (void* bad = __asan_region_is_poisoned(const_cast<float*>(begin), floats * sizeof(float))) {
    // An instrumented read of the first bad byte: ASan reports it as any access, with its stack.
    (void)*static_cast<volatile const char*>(bad);
  }
}
// rows ranges of `floats` floats, `stride` apart.
void CheckRows(const float* begin, int64_t rows, int64_t stride, int64_t floats) {
  for (int64_t r = 0; r < rows; ++r) CheckRange(begin + r * stride, floats);
}
#else
#define CONVNEXT_TILE_NO_ASAN
void CheckRange(const float*, int64_t) {}
void CheckRows(const float*, int64_t, int64_t, int64_t) {}
#endif

using gelu_avx512::Gelu;

// A register tile: up to kRows rows x up to kPanelVectors vectors of 16 outputs (24 of the 32
// vector registers as accumulators, 4 for the panel's row of weights).
constexpr int kRows = 6;
constexpr int kPanelVectors = 4;
constexpr int64_t kPanel = 16 * kPanelVectors;

// Inputs a panel's weights are taken in at a time: 128 x 64 floats, 32 KB, stay in the L1 cache
// while every row of the group passes over them.
constexpr int64_t kChunk = 128;

// One chunk of k inputs of R rows of `a` (lda apart) through a panel `w` [k][16 V] of weights, into
// out[r, 0..16V): the sums start at zero or (kLoad) from what out holds; they are stored as they
// are, or (kFinish, the last chunk) with the bias added and (kGelu) through the GELU. fc1 starts
// from zero and finishes through the GELU; fc2 starts from out (the residual) and adds to it.
// With a `prefetch` address, the k x 16V floats there (the next chunk's weights) are asked into
// the L2 cache along the way.
template <bool kGelu, bool kLoad, bool kFinish, int R, int V>
CONVNEXT_AVX512 CONVNEXT_TILE_NO_ASAN void Tile(const float* a, int64_t lda, const float* w,
                                                int64_t k, const float* bias, float* out,
                                                int64_t ldo, const float* prefetch = nullptr) {
  __m512 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      acc[r][v] = kLoad ? _mm512_loadu_ps(out + r * ldo + 16 * v) : _mm512_setzero_ps();
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    if (prefetch != nullptr) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(prefetch + i * 16 * V + 16 * v), _MM_HINT_T1);
      }
    }
    __m512 b[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) b[v] = _mm512_load_ps(w + i * 16 * V + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(a[r * lda + i]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(s, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      float* o = out + r * ldo + 16 * v;
      if constexpr (!kFinish) {
        _mm512_storeu_ps(o, acc[r][v]);
      } else if constexpr (kGelu) {
        _mm512_storeu_ps(o, Gelu(_mm512_add_ps(acc[r][v], _mm512_loadu_ps(bias + 16 * v))));
      } else {
        _mm512_storeu_ps(o, _mm512_add_ps(acc[r][v], _mm512_loadu_ps(bias + 16 * v)));
      }
    }
  }
}

// One chunk through tiles over `rows` rows, kRows at a time. The first tile also asks for the
// weights that follow the chunk's (the panel's next chunk, or the next panel's first) to be brought
// into L2 while the chunk's other tiles run: the hardware's prefetchers alone left the first tile
// of each chunk waiting on L3 or memory where a batch has few rows. Measured with bench/mlp_kernels
// on an AMX Xeon, float32, batch 1: stage 4 (49 rows, 18.9 MB of weights a block) 6.8-8.0 ->
// 5.1-5.6 ms.
template <bool kGelu, bool kLoad, bool kFinish, int V>
CONVNEXT_AVX512 void Rows(const float* a, int64_t lda, int64_t rows, const float* w, int64_t k,
                          const float* bias, const float* next_weights, float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    Tile<kGelu, kLoad, kFinish, kRows, V>(a + r * lda, lda, w, k, bias, out + r * ldo, ldo,
                                          r == 0 ? next_weights : nullptr);
  }
  a += r * lda;
  out += r * ldo;
  switch (rows - r) {
    case 5:
      return Tile<kGelu, kLoad, kFinish, 5, V>(a, lda, w, k, bias, out, ldo);
    case 4:
      return Tile<kGelu, kLoad, kFinish, 4, V>(a, lda, w, k, bias, out, ldo);
    case 3:
      return Tile<kGelu, kLoad, kFinish, 3, V>(a, lda, w, k, bias, out, ldo);
    case 2:
      return Tile<kGelu, kLoad, kFinish, 2, V>(a, lda, w, k, bias, out, ldo);
    case 1:
      return Tile<kGelu, kLoad, kFinish, 1, V>(a, lda, w, k, bias, out, ldo);
    default:
      return;
  }
}

// A panel of weights [k][16 V] over `rows` rows, kChunk inputs at a time. `last_panel`: no
// weights follow this panel's (nothing to prefetch after its last chunk).
template <bool kGelu, int V>
CONVNEXT_AVX512 void Panel(const float* a, int64_t lda, int64_t rows, const float* w, int64_t k,
                           const float* bias, float* out, int64_t ldo, bool last_panel) {
  for (int64_t k0 = 0; k0 < k; k0 += kChunk) {
    const int64_t kc = std::min(kChunk, k - k0);
    const float* ak = a + k0;
    const float* wk = w + k0 * 16 * V;
    const bool first = k0 == 0, last = k0 + kc == k;
    // The weights after this chunk's (the next panel's, where it is the last): as many as this
    // chunk's, or none after the last panel. (Where the next panel is narrower, that reaches past
    // it: a prefetch is a hint, which never faults.)
    const float* next = last && last_panel ? nullptr : wk + kc * 16 * V;
    if constexpr (kGelu) {
      if (first && last) {
        Rows<true, false, true, V>(ak, lda, rows, wk, kc, bias, next, out, ldo);
      } else if (first) {
        Rows<true, false, false, V>(ak, lda, rows, wk, kc, bias, next, out, ldo);
      } else if (last) {
        Rows<true, true, true, V>(ak, lda, rows, wk, kc, bias, next, out, ldo);
      } else {
        Rows<true, true, false, V>(ak, lda, rows, wk, kc, bias, next, out, ldo);
      }
    } else if (last) {
      Rows<false, true, true, V>(ak, lda, rows, wk, kc, bias, next, out, ldo);
    } else {
      Rows<false, true, false, V>(ak, lda, rows, wk, kc, bias, next, out, ldo);
    }
  }
}

// The product of `rows` rows of `a` [.., k] (lda apart) and the packed weights w ([k, n] in
// panels), plus bias [n], into out (ldo apart): through the GELU (kGelu) or added to it. Panel by
// panel, so that each panel of weights is read from L3 or memory once for all the rows.
template <bool kGelu>
CONVNEXT_AVX512 void Product(const float* a, int64_t lda, int64_t rows, const float* w, int64_t k,
                             int64_t n, const float* bias, float* out, int64_t ldo) {
  CheckRows(a, rows, lda, k);
  CheckRange(w, n * k);
  CheckRange(bias, n);
  CheckRows(out, rows, ldo, n);
  for (int64_t n0 = 0; n0 < n; n0 += kPanel) {
    const float* panel = w + n0 * k;
    const bool last = n0 + kPanel >= n;
    switch (std::min(kPanel, n - n0) / 16) {
      case 4:
        Panel<kGelu, 4>(a, lda, rows, panel, k, bias + n0, out + n0, ldo, last);
        break;
      case 3:
        Panel<kGelu, 3>(a, lda, rows, panel, k, bias + n0, out + n0, ldo, last);
        break;
      case 2:
        Panel<kGelu, 2>(a, lda, rows, panel, k, bias + n0, out + n0, ldo, last);
        break;
      default:
        Panel<kGelu, 1>(a, lda, rows, panel, k, bias + n0, out + n0, ldo, last);
        break;
    }
  }
}

// What the kernel reads of one block's Avx512MlpWeights.
struct Raw {
  int64_t channels;
  float eps;
  const float* norm_weight;
  const float* norm_bias;
  const float* fc1;
  const float* fc1_bias;
  const float* fc2;
  const float* fc2_bias;
};

// Rows a group takes through fc1 and fc2 together: as many as keep the GELU's output (16 C bytes
// a row) within 3/4 of the core's L2 cache (1 MB where the OS does not say), a multiple of the
// tile's rows. Each group reads all of the block's weights, so fewer, larger groups read them
// fewer times: measured with bench/mlp_kernels on an AMX Xeon (2 MB of L2 a core), float32, the
// limit at 512 KB -> 1 or 1.5 MB took stage 3 at batch 1 (196 rows, 9 blocks) from 19.0 to 15.6 ms,
// and all stages at batch 8 from 254 to 224-230 ms.
int64_t GroupRows(int64_t c) {
  static const int64_t budget = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? int64_t{l2} / 4 * 3 : int64_t{1} << 20;
  }();
  const int64_t most = budget / (16 * c);
  return std::max<int64_t>(kRows, most / kRows * kRows);
}

// Rows are split into `groups` groups of whole tiles (kRows rows; the last tile of all may be
// shorter), group g taking tiles [g * tiles / groups, (g + 1) * tiles / groups): sizes differ by
// one tile at most, so that the threads finish together.
struct Split {
  int64_t rows, tiles, groups;
  int64_t Begin(int64_t g) const { return std::min(rows, g * tiles / groups * kRows); }
  int64_t MostRows() const { return (tiles + groups - 1) / groups * kRows; }
};

// As many groups as keep each within GroupRows, rounded up to a multiple of the threads where
// there are enough tiles (three equal groups on two threads leave one thread idle a third of the
// time: at batch 1, stages 2 and 3 ran so before).
Split SplitRows(int64_t rows, int64_t channels, int64_t threads) {
  const int64_t tiles = (rows + kRows - 1) / kRows, most = GroupRows(channels) / kRows;
  int64_t groups = (tiles + most - 1) / most;
  if (tiles >= threads) groups = (groups + threads - 1) / threads * threads;
  return Split{rows, tiles, std::max<int64_t>(1, std::min(groups, tiles))};
}

// This thread's share of the rows: groups taken one at a time from `next` until none is left (a
// thread the OS holds back leaves its groups to the others). `normed` [group, C] and `hidden`
// [group, 4C] are the thread's buffers.
CONVNEXT_AVX512 void RunGroups(const Raw& w, const float* y, const Split& split, float* x,
                               std::atomic<int64_t>& next, float* normed, float* hidden) {
  const int64_t c = w.channels, hc = 4 * c;
  for (int64_t g = next++; g < split.groups; g = next++) {
    const int64_t r0 = split.Begin(g), n = split.Begin(g + 1) - r0;
    LayerNormRowsOnThisThread(y + r0 * c, normed, n, c, w.norm_weight, w.norm_bias, w.eps);
    Product</*kGelu=*/true>(normed, c, n, w.fc1, c, hc, w.fc1_bias, hidden, hc);
    Product</*kGelu=*/false>(hidden, hc, n, w.fc2, hc, c, w.fc2_bias, x + r0 * c, c);
  }
}

// w [out, in] -> panels of kPanel outputs (the last one narrower), each [in][width].
at::Tensor PackPanels(const at::Tensor& w) {
  const at::Tensor plain = w.to(at::kFloat).contiguous();
  const int64_t out = plain.size(0);
  std::vector<at::Tensor> panels;
  for (int64_t n0 = 0; n0 < out; n0 += kPanel) {
    panels.push_back(plain.narrow(0, n0, std::min(kPanel, out - n0)).t().contiguous().view(-1));
  }
  return at::cat(panels);
}

}  // namespace

bool Avx512MlpAvailable() {
  static const bool available =
      __builtin_cpu_supports("avx512f") && LayerNormRowsAvailable(/*bf16_output=*/false);
  return available;
}

absl::StatusOr<Avx512MlpWeights> Avx512MlpWeights::Pack(const at::Tensor& norm_weight,
                                                        const at::Tensor& norm_bias, double eps,
                                                        const at::Tensor& fc1_weight,
                                                        const at::Tensor& fc1_bias,
                                                        const at::Tensor& fc2_weight,
                                                        const at::Tensor& fc2_bias) {
  const int64_t c = fc1_weight.dim() == 2 ? fc1_weight.size(1) : 0;
  if (c <= 0 || c % 16 != 0 || fc1_weight.size(0) != 4 * c || fc1_bias.numel() != 4 * c ||
      fc2_weight.dim() != 2 || fc2_weight.size(0) != c || fc2_weight.size(1) != 4 * c ||
      fc2_bias.numel() != c || norm_weight.numel() != c || norm_bias.numel() != c) {
    return absl::InvalidArgumentError(
        absl::StrCat("the AVX-512 MLP needs the LayerNorm's [C] weight and bias, fc1 [4C, C], "
                     "fc2 [C, 4C] and their biases, with C a multiple of 16; fc1 is [",
                     fc1_weight.dim() == 2 ? fc1_weight.size(0) : -1, ", ", c, "]"));
  }
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous().clone(); };
  Avx512MlpWeights w;
  w.channels_ = c;
  w.eps_ = static_cast<float>(eps);
  w.norm_weight_ = f32(norm_weight);
  w.norm_bias_ = f32(norm_bias);
  w.fc1_ = PackPanels(fc1_weight);
  w.fc2_ = PackPanels(fc2_weight);
  w.fc1_bias_ = f32(fc1_bias);
  w.fc2_bias_ = f32(fc2_bias);
  return w;
}

void Avx512MlpWeights::Run(const float* y, int64_t rows, float* x) const {
  const Raw w{channels_,
              eps_,
              norm_weight_.data_ptr<float>(),
              norm_bias_.data_ptr<float>(),
              fc1_.data_ptr<float>(),
              fc1_bias_.data_ptr<float>(),
              fc2_.data_ptr<float>(),
              fc2_bias_.data_ptr<float>()};
  const int64_t threads = at::get_num_threads();
  const Split split = SplitRows(rows, w.channels, threads);
  std::atomic<int64_t> next{0};
  // One task a thread (ATen's intra-op threads, as oneDNN's); each takes groups from `next`.
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    // This thread's buffers, kept from call to call: the normalised rows and the GELU's output of
    // one group, 5C floats a row (5/4 of GroupRows's budget at most).
    thread_local std::vector<float> buffer;
    const int64_t normed_size = split.MostRows() * w.channels;
    if (buffer.size() < static_cast<size_t>(5 * normed_size)) buffer.resize(5 * normed_size);
    RunGroups(w, y, split, x, next, buffer.data(), buffer.data() + normed_size);
  });
}

}  // namespace convnext

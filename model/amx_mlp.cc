#include "model/amx_mlp.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/gelu_avx512.h"
#include "model/layer_norm_rows.h"

namespace convnext {
namespace {

#define CONVNEXT_AMX \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16,avx512bw,avx512vl")))

// What the kernel reads of one block's AmxMlpWeights.
struct Raw {
  int64_t channels;
  float eps;
  const float* norm_weight;
  const float* norm_bias;
  const uint16_t* fc1;
  const float* fc1_bias;
  const uint16_t* fc2;
  const float* fc2_bias;
};

// Rows and columns of a block of the output: 2 x 2 tiles of 16 x 16 float32 accumulators.
constexpr int64_t kBlock = 32;
// One packed weight tile: 16 rows of 32 bfloat16 (16 k pairs x 16 outputs x 2).
constexpr int64_t kTileElements = 512;

// The tile configuration: palette 1, tiles 0-7 all 16 rows of 64 bytes (0-3 accumulators, 4-5
// the activations, 6-7 the weights).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Linux hands out the tile state (XTILEDATA, feature 18) per process, on request.
bool RequestTileState() {
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

using gelu_avx512::GeluForBfloat16;

// Accumulates into tiles 0-3 the 32 x 32 block a[0..32, 0..k] x w[.., n0..n0 + 32]: `a` holds 32
// bfloat16 rows `lda` elements apart, `w` the packed weights of `k` inputs.
CONVNEXT_AMX inline void MultiplyBlock(const uint16_t* a, int64_t lda, int64_t k, const uint16_t* w,
                                       int64_t n0) {
  const int64_t k_tiles = k / 32;
  const uint16_t* w0 = w + (n0 / 16) * k_tiles * kTileElements;
  const uint16_t* w1 = w0 + k_tiles * kTileElements;
  const int64_t stride = lda * 2;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    _tile_loadd(4, a + kt * 32, stride);
    _tile_loadd(6, w0 + kt * kTileElements, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, w1 + kt * kTileElements, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a + 16 * lda + kt * 32, stride);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
}

// Tiles 0-3 into a 32 x 32 float32 block (rows of 32).
CONVNEXT_AMX inline void StoreBlock(float* block) {
  _tile_stored(0, block, 128);
  _tile_stored(1, block + 16, 128);
  _tile_stored(2, block + 16 * kBlock, 128);
  _tile_stored(3, block + 16 * kBlock + 16, 128);
}

// hidden[r, n0..n0 + 32] = bfloat16(gelu(block[r] + bias[n0..])) for the 32 rows.
CONVNEXT_AMX inline void GeluBlock(const float* block, const float* bias, int64_t n0,
                                   uint16_t* hidden, int64_t ldh) {
  const __m512 bias0 = _mm512_loadu_ps(bias + n0), bias1 = _mm512_loadu_ps(bias + n0 + 16);
  for (int64_t r = 0; r < kBlock; ++r) {
    const __m512 v0 = GeluForBfloat16(_mm512_add_ps(_mm512_load_ps(block + r * kBlock), bias0));
    const __m512 v1 =
        GeluForBfloat16(_mm512_add_ps(_mm512_load_ps(block + r * kBlock + 16), bias1));
    _mm512_storeu_si512(hidden + r * ldh + n0,
                        reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v1, v0)));
  }
}

// x[r, c0..c0 + 32] += block[r] + bias[c0..] for the first `rows` rows.
CONVNEXT_AMX inline void AddBlock(const float* block, const float* bias, int64_t c0, int64_t rows,
                                  float* x, int64_t ldx) {
  const __m512 bias0 = _mm512_loadu_ps(bias + c0), bias1 = _mm512_loadu_ps(bias + c0 + 16);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ldx + c0;
    const __m512 v0 = _mm512_add_ps(_mm512_load_ps(block + r * kBlock), bias0);
    const __m512 v1 = _mm512_add_ps(_mm512_load_ps(block + r * kBlock + 16), bias1);
    _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), v0));
    _mm512_storeu_ps(row + 16, _mm512_add_ps(_mm512_loadu_ps(row + 16), v1));
  }
}

// How many 32-row blocks a thread takes through fc1 and fc2 together: each weight tile is loaded
// once for all of them (from L1 after the first), so the weights (16 C^2 bytes) are read from
// L3 or memory once per group rather than once per block, while the group's GELU output (256 C
// bytes a block) stays in L2. C / 64 blocks (GELU output a quarter of the weights' size), at
// most 2 MB of it: on convnext_tiny (AMX Xeon, batch 1 and 8) stage 1 ran fastest one block at a
// time (its weights stay in L2 anyway), stage 3 with about 6 and stage 4 with about 10.
int64_t GroupBlocks(int64_t c) {
  const int64_t most = (int64_t{2} << 20) / (kBlock * 4 * c * int64_t{sizeof(uint16_t)});
  return std::max<int64_t>(1, std::min(c / 64, most));
}

// This thread's share of the rows: groups of `group` 32-row blocks, taken one at a time from
// `next` until none is left (dynamic: a thread the OS holds back, say for a request's JPEG decode
// in the server, leaves its groups to the others instead of making them wait for its static
// half). `normed` and `hidden` are the thread's buffers of `group` x 32 rows: the normalised rows
// (C) and the GELU's output (4C), bfloat16.
CONVNEXT_AMX void RunGroups(const Raw& w, const float* y, int64_t rows, float* x, int64_t group,
                            std::atomic<int64_t>& next, uint16_t* normed, uint16_t* hidden) {
  const int64_t c = w.channels, hc = 4 * c;
  const int64_t blocks_in_all = (rows + kBlock - 1) / kBlock;
  TileConfig config;
  for (int i = 0; i < 8; ++i) {
    config.rows[i] = 16;
    config.bytes_per_row[i] = 64;
  }
  _tile_loadconfig(&config);
  alignas(64) float blocks[2][kBlock * kBlock];
  for (int64_t g = next++; g * group < blocks_in_all; g = next++) {
    const int64_t g0 = g * group, count = std::min(group, blocks_in_all - g0);
    // The group's rows, normalised and rounded to bfloat16; the last block of all zero-padded to
    // 32 rows (the tiles read 16 rows at a time).
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r0 = (g0 + i) * kBlock, n = std::min(kBlock, rows - r0);
      uint16_t* dst = normed + i * kBlock * c;
      LayerNormRowsToBf16OnThisThread(y + r0 * c, dst, n, c, w.norm_weight, w.norm_bias, w.eps);
      if (n < kBlock) std::memset(dst + n * c, 0, (kBlock - n) * c * sizeof(uint16_t));
    }
    auto block_rows = [&](int64_t i) { return normed + i * kBlock * c; };
    // fc1 + GELU, a 32 x 32 block at a time, each column block of weights for every row block:
    // the GELU of one block runs while the tiles compute the next.
    int64_t step = 0, last_i = 0, last_n0 = 0;
    for (int64_t n0 = 0; n0 < hc; n0 += kBlock) {
      for (int64_t i = 0; i < count; ++i, ++step) {
        MultiplyBlock(block_rows(i), c, c, w.fc1, n0);
        if (step > 0) {
          GeluBlock(blocks[(step - 1) & 1], w.fc1_bias, last_n0, hidden + last_i * kBlock * hc, hc);
        }
        StoreBlock(blocks[step & 1]);
        last_i = i;
        last_n0 = n0;
      }
    }
    GeluBlock(blocks[(step - 1) & 1], w.fc1_bias, last_n0, hidden + last_i * kBlock * hc, hc);
    // fc2 + bias + residual.
    for (int64_t c0 = 0; c0 < c; c0 += kBlock) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t r0 = (g0 + i) * kBlock;
        MultiplyBlock(hidden + i * kBlock * hc, hc, hc, w.fc2, c0);
        StoreBlock(blocks[0]);
        AddBlock(blocks[0], w.fc2_bias, c0, std::min(kBlock, rows - r0), x + r0 * c, c);
      }
    }
  }
  _tile_release();
}

// w [out, in] float32 -> bfloat16 tiles [out / 16][in / 32][16 (k pairs)][16 (outputs)][2].
at::Tensor PackTiles(const at::Tensor& w) {
  const int64_t out = w.size(0), in = w.size(1);
  return w.to(at::kFloat)
      .contiguous()
      .to(at::kBFloat16)
      .view({out / 16, 16, in / 32, 16, 2})
      .permute({0, 2, 3, 1, 4})
      .contiguous();
}

}  // namespace

bool AmxMlpAvailable() {
  // The tiles, and the AVX-512 BF16 LayerNorm the kernel normalises its rows with.
  static const bool available = __builtin_cpu_supports("amx-tile") &&
                                __builtin_cpu_supports("amx-bf16") &&
                                LayerNormRowsAvailable(/*bf16_output=*/true) && RequestTileState();
  return available;
}

absl::StatusOr<AmxMlpWeights> AmxMlpWeights::Pack(const at::Tensor& norm_weight,
                                                  const at::Tensor& norm_bias, double eps,
                                                  const at::Tensor& fc1_weight,
                                                  const at::Tensor& fc1_bias,
                                                  const at::Tensor& fc2_weight,
                                                  const at::Tensor& fc2_bias) {
  const int64_t c = fc1_weight.dim() == 2 ? fc1_weight.size(1) : 0;
  if (c <= 0 || c % 32 != 0 || fc1_weight.size(0) != 4 * c || fc1_bias.numel() != 4 * c ||
      fc2_weight.dim() != 2 || fc2_weight.size(0) != c || fc2_weight.size(1) != 4 * c ||
      fc2_bias.numel() != c || norm_weight.numel() != c || norm_bias.numel() != c) {
    return absl::InvalidArgumentError(
        absl::StrCat("the AMX MLP needs the LayerNorm's [C] weight and bias, fc1 [4C, C], fc2 "
                     "[C, 4C] and their biases, with C a multiple of 32; fc1 is [",
                     fc1_weight.dim() == 2 ? fc1_weight.size(0) : -1, ", ", c, "]"));
  }
  AmxMlpWeights w;
  w.channels_ = c;
  w.eps_ = static_cast<float>(eps);
  w.norm_weight_ = norm_weight.to(at::kFloat).contiguous().clone();
  w.norm_bias_ = norm_bias.to(at::kFloat).contiguous().clone();
  w.fc1_ = PackTiles(fc1_weight);
  w.fc2_ = PackTiles(fc2_weight);
  w.fc1_bias_ = fc1_bias.to(at::kFloat).contiguous().clone();
  w.fc2_bias_ = fc2_bias.to(at::kFloat).contiguous().clone();
  return w;
}

void AmxMlpWeights::Run(const float* y, int64_t rows, float* x) const {
  const Raw w{channels_,
              eps_,
              norm_weight_.data_ptr<float>(),
              norm_bias_.data_ptr<float>(),
              static_cast<const uint16_t*>(fc1_.data_ptr()),
              fc1_bias_.data_ptr<float>(),
              static_cast<const uint16_t*>(fc2_.data_ptr()),
              fc2_bias_.data_ptr<float>()};
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  const int64_t threads = at::get_num_threads();
  // At least one group a thread where there are enough blocks.
  const int64_t group =
      std::max<int64_t>(1, std::min(GroupBlocks(w.channels), (blocks + threads - 1) / threads));
  std::atomic<int64_t> next{0};
  // One task a thread (ATen's intra-op threads, as oneDNN's); each takes groups from `next`.
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    // This thread's buffers, kept from call to call (no allocation per block and request): the
    // normalised rows and the GELU's output of one group, 5C bfloat16 a row, at most 2.5 MB.
    thread_local std::vector<uint16_t> buffer;
    const int64_t normed_size = group * kBlock * w.channels;
    if (buffer.size() < static_cast<size_t>(5 * normed_size)) buffer.resize(5 * normed_size);
    RunGroups(w, y, rows, x, group, next, buffer.data(), buffer.data() + normed_size);
  });
}

}  // namespace convnext

// Our own block kernels (model/avx512_mlp.h in float32, model/amx_mlp.h in bfloat16) stage by
// stage, on convnext_tiny's shapes: a block's LayerNorm, fc1, GELU, fc2 and residual for the rows
// of one batch, each stage's blocks with weights of their own (as the model reads them: a stage's
// weights do not all stay in L2), timed apart from the depthwise convolutions and downsampling
// around them. Prints ms per stage, GFLOP/s (the two products) and the stage's share of the
// kernels' time, so that one sees where a batch size loses against the GEMM ceiling that
// model_throughput prints. Asserts nothing.
//
//   build/bin/mlp_kernels [--batches 1,8] [--seconds 2] [--threads 2] [--dtypes float32,bfloat16]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "model/amx_mlp.h"
#include "model/avx512_mlp.h"
#include "model/onednn_stage.h"
#include "model/process_tuning.h"

ABSL_FLAG(std::string, batches, "1,8", "Comma-separated batch sizes.");
ABSL_FLAG(double, seconds, 2, "Minimum measuring time per stage and batch size.");
ABSL_FLAG(int, threads, 2, "Intra-op threads.");
ABSL_FLAG(std::string, dtypes, "float32,bfloat16",
          "Comma-separated: float32 (the AVX-512 kernel), bfloat16 (the AMX kernel).");

namespace convnext {
namespace {

struct Stage {
  int64_t channels, side, blocks;
};
// convnext_tiny at 224: channels, feature map side, blocks.
constexpr Stage kStages[] = {{96, 56, 3}, {192, 28, 3}, {384, 14, 9}, {768, 7, 3}};

// One stage's kernels for one dtype, run as the model would: every block once, in order.
struct StageKernels {
  std::function<void(const float* y, int64_t rows, float* x)> run_block;
  int64_t blocks = 0;
};

template <typename Weights>
std::vector<Weights> MakeBlocks(const Stage& s) {
  std::vector<Weights> out;
  const int64_t c = s.channels;
  for (int64_t b = 0; b < s.blocks; ++b) {
    auto w = Weights::Pack(at::rand({c}) + 0.5, at::randn({c}) * 0.1, 1e-6,
                           at::randn({4 * c, c}) / std::sqrt(double(c)), at::randn({4 * c}) * 0.1,
                           at::randn({c, 4 * c}) / std::sqrt(4.0 * c), at::randn({c}) * 0.1);
    if (!w.ok()) {
      std::fprintf(stderr, "mlp_kernels: %s\n", std::string(w.status().message()).c_str());
      std::exit(1);
    }
    out.push_back(*std::move(w));
  }
  return out;
}

// Runs all of a stage's blocks on the rows of `batch` images until `seconds` have passed; returns
// ms per pass over the stage.
template <typename Weights>
double TimeStage(const Stage& s, int64_t batch, double seconds) {
  const std::vector<Weights> blocks = MakeBlocks<Weights>(s);
  const int64_t rows = batch * s.side * s.side;
  const at::Tensor y = at::randn({rows, s.channels});
  at::Tensor x = at::randn({rows, s.channels});
  auto pass = [&] {
    for (const Weights& w : blocks) w.Run(y.data_ptr<float>(), rows, x.data_ptr<float>());
  };
  for (int i = 0; i < 3; ++i) pass();  // Warm-up: thread buffers, caches.
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  int64_t passes = 0;
  double elapsed = 0;
  do {
    pass();
    ++passes;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  return elapsed / passes * 1e3;
}

int Main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  ConfigureProcessForInference();
  SetIntraOpThreads(absl::GetFlag(FLAGS_threads));
  std::vector<int64_t> batches;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(b, &n) || n <= 0) {
      std::fprintf(stderr, "mlp_kernels: bad batch size '%s'\n", std::string(b).c_str());
      return 2;
    }
    batches.push_back(n);
  }
  std::printf("CPU: oneDNN ISA %s; AVX-512 kernel: %s; AMX kernel: %s; %d threads\n",
              OneDnnIsaName().c_str(), Avx512MlpAvailable() ? "yes" : "no",
              AmxMlpAvailable() && CpuHasAmx() ? "yes" : "no", at::get_num_threads());
  for (absl::string_view dtype : absl::StrSplit(absl::GetFlag(FLAGS_dtypes), ',')) {
    const bool bf16 = dtype == "bfloat16";
    if (bf16 ? !(AmxMlpAvailable() && CpuHasAmx()) : !Avx512MlpAvailable()) {
      std::printf("%s: this CPU does not run that kernel, skipped\n", std::string(dtype).c_str());
      continue;
    }
    for (int64_t batch : batches) {
      std::printf("%s, batch %lld:\n  stage  C    rows  blocks  ms/stage  GFLOP/s  share\n",
                  std::string(dtype).c_str(), static_cast<long long>(batch));
      double ms[4], total = 0;
      for (int i = 0; i < 4; ++i) {
        ms[i] = bf16 ? TimeStage<AmxMlpWeights>(kStages[i], batch, absl::GetFlag(FLAGS_seconds))
                     : TimeStage<Avx512MlpWeights>(kStages[i], batch, absl::GetFlag(FLAGS_seconds));
        total += ms[i];
      }
      for (int i = 0; i < 4; ++i) {
        const Stage& s = kStages[i];
        const double rows = double(batch) * s.side * s.side;
        const double flop = 2.0 * 2 * rows * s.channels * 4 * s.channels * s.blocks;
        std::printf("  %5d %4lld %6.0f %7lld %9.3f %8.1f %5.0f%%\n", i + 1,
                    static_cast<long long>(s.channels), rows, static_cast<long long>(s.blocks),
                    ms[i], flop / ms[i] / 1e6, 100 * ms[i] / total);
      }
      std::printf("  all stages: %.3f ms per batch\n", total);
    }
  }
  return 0;
}

}  // namespace
}  // namespace convnext

int main(int argc, char** argv) {
  int code = 0;
  // As model_throughput: everything on one thread, so that one set of OpenMP threads serves it.
  convnext::RunOnThreadOfItsOwn([&] { code = convnext::Main(argc, argv); });
  return code;
}

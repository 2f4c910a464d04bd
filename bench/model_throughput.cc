// Benchmark: in-process ConvNeXt throughput against torchvision eager, measured in the same run
// with the same number of threads. Prints images/s per batch size and the ratio. Not a test: it
// asserts nothing.
//
//   build/bin/model_throughput [--variant convnext_tiny] [--batches 1,8] [--threads 2]
//                              [--seconds 10] [--reference=true]
//
// Weights are random (speed does not depend on their values). The reference side runs
// bench/torchvision_eager.py with Debian's /usr/bin/python3.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/convnext.h"
#include "model/convnext_config.h"
#include "model/runtime.h"

ABSL_FLAG(std::string, variant, "convnext_tiny", "Named ConvNeXt variant.");
ABSL_FLAG(std::string, batches, "1,8", "Comma-separated batch sizes.");
ABSL_FLAG(int, threads, 2, "Intra-op threads, for both sides.");
ABSL_FLAG(double, seconds, 10.0, "Minimum measuring time per batch size and side.");
ABSL_FLAG(int, size, 224, "Input side in pixels.");
ABSL_FLAG(bool, reference, true, "Also measure torchvision eager (python3-torchvision).");
ABSL_FLAG(std::string, reference_script, CONVNEXT_SOURCE_DIR "/bench/torchvision_eager.py",
          "The reference benchmark script.");

namespace convnext {
namespace {

struct Result {
  int batch = 0;
  double images_per_s = 0;
  double ms_per_batch = 0;
};

std::unique_ptr<ConvNeXt> RandomModel(const ConvNeXtConfig& config, int threads) {
  StateDict weights;
  for (const auto& [name, shape] : ExpectedParameters(config)) {
    weights[name] = at::randn(shape) * 0.02;
  }
  ModelOptions options;
  options.intra_op_threads = threads;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model = ConvNeXt::Create(config, weights, options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(model);
}

Result Measure(const ConvNeXt& model, int batch, int size, double seconds) {
  const at::Tensor x = at::randn({batch, 3, size, size});
  for (int i = 0; i < 2; ++i) (void)model.Forward(x, OutputRequest());
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  int n = 0;
  double elapsed = 0;
  do {
    absl::StatusOr<ForwardOutputs> out = model.Forward(x, OutputRequest());
    if (!out.ok()) {
      std::fprintf(stderr, "%s\n", out.status().ToString().c_str());
      std::exit(1);
    }
    ++n;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds || n < 3);
  return {batch, n * batch / elapsed, 1000 * elapsed / n};
}

// Runs the torchvision side and parses its JSON lines.
std::vector<Result> MeasureReference(const std::string& variant, const std::string& batches,
                                     int threads, double seconds, int size) {
  const std::string cmd = absl::StrCat(
      "/usr/bin/python3 ", absl::GetFlag(FLAGS_reference_script), " --variant ", variant,
      " --batches ", batches, " --threads ", threads, " --seconds ", seconds, " --size ", size);
  std::vector<Result> results;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return results;
  char line[512];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    Result r;
    if (std::sscanf(line, "{\"batch\": %d, \"images_per_s\": %lf, \"ms_per_batch\": %lf}", &r.batch,
                    &r.images_per_s, &r.ms_per_batch) == 3) {
      results.push_back(r);
    }
  }
  ::pclose(pipe);
  return results;
}

int Main() {
  ConfigureProcessForInference();
  const std::string variant = absl::GetFlag(FLAGS_variant);
  absl::StatusOr<ConvNeXtConfig> config = ConfigForVariant(variant);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 2;
  }
  const int threads = absl::GetFlag(FLAGS_threads);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int size = absl::GetFlag(FLAGS_size);
  std::vector<int> batches;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',')) {
    int v = 0;
    if (absl::SimpleAtoi(b, &v) && v > 0) batches.push_back(v);
  }

  std::printf("%s at %dx%d, %d intra-op threads, >= %.0f s per measurement\n", variant.c_str(),
              size, size, threads, seconds);
  std::unique_ptr<ConvNeXt> model = RandomModel(*config, threads);
  std::vector<Result> ours;
  // The model runs on a thread of its own, as in the server (its executors). Measured here, a
  // forward pass on the process's main thread with 2 OpenMP intra-op threads is up to 2x slower
  // than the same call on any other thread.
  std::thread([&] {
    for (int b : batches) ours.push_back(Measure(*model, b, size, seconds));
  }).join();
  model.reset();

  std::vector<Result> reference;
  if (absl::GetFlag(FLAGS_reference)) {
    reference = MeasureReference(variant, absl::GetFlag(FLAGS_batches), threads, seconds, size);
  }
  std::printf("%6s %14s %12s %18s %8s\n", "batch", "convnext-serve", "ms/batch",
              "torchvision eager", "ratio");
  for (const Result& r : ours) {
    const Result* ref = nullptr;
    for (const Result& t : reference) {
      if (t.batch == r.batch) ref = &t;
    }
    if (ref != nullptr) {
      std::printf("%6d %10.2f img/s %12.1f %12.2f img/s %7.2fx\n", r.batch, r.images_per_s,
                  r.ms_per_batch, ref->images_per_s, r.images_per_s / ref->images_per_s);
    } else {
      std::printf("%6d %10.2f img/s %12.1f %18s %8s\n", r.batch, r.images_per_s, r.ms_per_batch,
                  "-", "-");
    }
  }
  return 0;
}

}  // namespace
}  // namespace convnext

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return convnext::Main();
}

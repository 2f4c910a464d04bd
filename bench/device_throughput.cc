// Benchmark: model-only ConvNeXt throughput on a device (the GPU device check's figures; on the
// CPU too), against PyTorch eager on the same device measured in the same run
// (bench/torch_device_eager.py: torchvision's model, channels_last, autocast for float16 and
// bfloat16). Prints, per variant, dtype and batch size: our images/s and ms per batch, PyTorch's,
// and the ratio; and, for every dtype other than float32, its agreement with float32 on the same
// device (top-1 agreement and the lowest cosine of the logits, TF32 off). Not a test: it asserts
// nothing. On CUDA, also the pooled pass eager against replaying a CUDA graph at --graph_batches
// (batch-1 latency is what graphs are for).
//
//   build/bin/device_throughput --device cuda [--dtypes float16,bfloat16]
//       [--variants convnext_tiny,convnext_small,convnext_base,convnext_large,convnext_xlarge]
//       [--batches 1,8,64,256] [--seconds 3] [--reference=true] [--python python3] [--json]
//
// Weights are random (speed does not depend on their values). Inputs are already on the device
// in the compute dtype, as a model-only figure should be (the serving path's copies are measured
// by the serving benchmarks).
#include <ATen/ATen.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "model/batch.h"
#include "model/convnext.h"
#include "model/convnext_config.h"
#include "model/process_tuning.h"

ABSL_FLAG(std::string, device, "cuda", "LibTorch device: cuda, cuda:1, cpu.");
ABSL_FLAG(std::string, dtypes, "float16,bfloat16", "Compute dtypes: float32, float16, bfloat16.");
ABSL_FLAG(std::string, variants,
          "convnext_tiny,convnext_small,convnext_base,convnext_large,convnext_xlarge",
          "Named variants.");
ABSL_FLAG(std::string, batches, "1,8,64,256", "Batch sizes.");
ABSL_FLAG(double, seconds, 3.0, "Minimum measuring time per figure.");
ABSL_FLAG(int, size, 224, "Input side in pixels.");
ABSL_FLAG(int, threads, 0, "Intra-op threads on the CPU; 0 = one per core.");
ABSL_FLAG(bool, reference, true, "Also measure PyTorch eager (bench/torch_device_eager.py).");
ABSL_FLAG(std::string, python, "python3", "The Python that has torch and torchvision.");
ABSL_FLAG(std::string, reference_script, CONVNEXT_SOURCE_DIR "/bench/torch_device_eager.py",
          "The reference benchmark script.");
ABSL_FLAG(bool, json, false, "After the table, one JSON line per figure.");
ABSL_FLAG(std::string, graph_batches, "1,8",
          "CUDA only: batch sizes also measured replaying CUDA graphs "
          "(ModelOptions::cuda_graph_max_batch), next to the same pass eager; empty: none.");
ABSL_FLAG(std::string, graph_variants, "convnext_tiny",
          "The variants measured with CUDA graphs too (of --variants).");

namespace convnext {
namespace {

struct Figure {
  double images_per_s = 0;
  double ms_per_batch = 0;
};

using Key = std::tuple<std::string, std::string, int>;  // variant, dtype, batch

absl::StatusOr<c10::ScalarType> DtypeFromName(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "'"));
}

std::vector<int> ParseInts(const std::string& list) {
  std::vector<int> out;
  for (absl::string_view b : absl::StrSplit(list, ',')) {
    int v = 0;
    if (absl::SimpleAtoi(b, &v) && v > 0) out.push_back(v);
  }
  return out;
}

std::unique_ptr<ConvNeXt> RandomModel(const ConvNeXtConfig& config, c10::Device device,
                                      c10::ScalarType dtype, int64_t graph_max_batch = 0) {
  at::manual_seed(0);
  StateDict weights;
  for (const auto& [name, shape] : ExpectedParameters(config)) {
    // Layer scales of 0.1 and unit norm weights: every block matters to the agreement figures.
    weights[name] =
        name.find("gamma") != std::string::npos ? at::full(shape, 0.1)
        : name.find("norm") != std::string::npos && name.find("weight") != std::string::npos
            ? at::ones(shape)
            : at::randn(shape) * 0.02;
  }
  ModelOptions options;
  options.device = device;
  options.dtype = dtype;
  options.cuda_graph_max_batch = graph_max_batch;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model = ConvNeXt::Create(config, weights, options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(model);
}

// Logits copied to the CPU, which also waits for the device.
at::Tensor RunOnce(const ConvNeXt& model, const at::Tensor& x) {
  absl::StatusOr<ForwardOutputs> out = model.Forward(x, OutputRequest());
  if (!out.ok()) {
    std::fprintf(stderr, "%s\n", out.status().ToString().c_str());
    std::exit(1);
  }
  return out->logits.to(at::kCPU, at::kFloat);
}

// The pooled features (a CUDA graph's part when the model has one for x's shape), then the head
// eagerly, as RunBatch computes classes: logits copied to the CPU.
at::Tensor RunPooledThenHead(const ConvNeXt& model, const at::Tensor& x) {
  OutputRequest request;
  request.logits = false;
  request.pooled = true;
  absl::StatusOr<ForwardOutputs> out = model.Forward(x, request);
  if (!out.ok()) {
    std::fprintf(stderr, "%s\n", out.status().ToString().c_str());
    std::exit(1);
  }
  return model.head().Classify(model.head().Embed(out->pooled)).to(at::kCPU, at::kFloat);
}

using RunFn = at::Tensor (*)(const ConvNeXt&, const at::Tensor&);

Figure Measure(const ConvNeXt& model, const at::Tensor& x, double seconds, RunFn run = RunOnce) {
  using Clock = std::chrono::steady_clock;
  for (int i = 0; i < 3; ++i) run(model, x);  // Warm-up (cuDNN's choices, allocator).
  int calls = 0;
  double elapsed = 0;
  const auto start = Clock::now();
  do {
    run(model, x);
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds || calls < 3);
  return {calls * x.size(0) / elapsed, 1000 * elapsed / calls};
}

// PyTorch's figures for one variant (a process per variant, so that a run cut short keeps the
// variants it finished).
std::map<Key, Figure> MeasureReference(const std::string& variant, double seconds) {
  const std::string cmd = absl::StrCat(
      absl::GetFlag(FLAGS_python), " ", absl::GetFlag(FLAGS_reference_script), " --device ",
      absl::GetFlag(FLAGS_device), " --dtypes ", absl::GetFlag(FLAGS_dtypes), " --variants ",
      variant, " --batches ", absl::GetFlag(FLAGS_batches), " --seconds ", seconds, " --size ",
      absl::GetFlag(FLAGS_size), " --threads ", absl::GetFlag(FLAGS_threads));
  std::map<Key, Figure> out;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return out;
  char line[512], name[64], dtype[32];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    int batch = 0;
    Figure f;
    if (std::sscanf(line,
                    "{\"variant\": \"%63[^\"]\", \"dtype\": \"%31[^\"]\", \"batch\": %d, "
                    "\"images_per_s\": %lf, \"ms_per_batch\": %lf}",
                    name, dtype, &batch, &f.images_per_s, &f.ms_per_batch) == 5) {
      out[{name, dtype, batch}] = f;
    } else {
      std::fputs(line, stdout);  // Its notes (versions, skipped dtypes).
    }
  }
  ::pclose(pipe);
  return out;
}

// One variant's rows (ours against PyTorch's, with the ratio), its agreement with float32, its
// CUDA graph figures, and with --json one JSON line per figure.
void PrintVariant(const std::map<Key, Figure>& ours, const std::map<Key, Figure>& theirs,
                  const std::vector<std::string>& agreement,
                  const std::map<Key, std::pair<Figure, Figure>>& graphs,
                  const std::vector<std::string>& graph_notes, bool json) {
  for (const auto& [key, f] : ours) {
    const auto& [variant, dtype, batch] = key;
    auto it = theirs.find(key);
    std::printf("%-16s %-9s %6d %12.1f %10.2f %14s %8s\n", variant.c_str(), dtype.c_str(), batch,
                f.images_per_s, f.ms_per_batch,
                it == theirs.end() ? "-" : absl::StrFormat("%.1f", it->second.images_per_s).c_str(),
                it == theirs.end()
                    ? "-"
                    : absl::StrFormat("%.2fx", f.images_per_s / it->second.images_per_s).c_str());
  }
  for (const std::string& line : agreement) std::printf("  %s\n", line.c_str());
  if (!graphs.empty()) {
    std::printf("  CUDA graphs (pooled features then the head, as RunBatch; ms per batch):\n");
    std::printf("  %-16s %-9s %6s %10s %10s %8s\n", "variant", "dtype", "batch", "eager ms",
                "graph ms", "speedup");
    for (const auto& [key, f] : graphs) {
      const auto& [variant, dtype, batch] = key;
      std::printf("  %-16s %-9s %6d %10.3f %10.3f %7.2fx\n", variant.c_str(), dtype.c_str(), batch,
                  f.first.ms_per_batch, f.second.ms_per_batch,
                  f.first.ms_per_batch / f.second.ms_per_batch);
    }
  }
  for (const std::string& line : graph_notes)
    std::printf("  CUDA graphs not measured: %s\n", line.c_str());
  if (json) {
    for (const auto& [key, f] : ours) {
      const auto& [variant, dtype, batch] = key;
      auto it = theirs.find(key);
      std::printf(
          "{\"variant\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"images_per_s\": %.3f, "
          "\"ms_per_batch\": %.4f, \"pytorch_images_per_s\": %.3f}\n",
          variant.c_str(), dtype.c_str(), batch, f.images_per_s, f.ms_per_batch,
          it == theirs.end() ? 0.0 : it->second.images_per_s);
    }
    for (const auto& [key, f] : graphs) {
      const auto& [variant, dtype, batch] = key;
      std::printf(
          "{\"variant\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"eager_ms\": %.4f, "
          "\"graph_ms\": %.4f}\n",
          variant.c_str(), dtype.c_str(), batch, f.first.ms_per_batch, f.second.ms_per_batch);
    }
  }
  std::fflush(stdout);
}

int Main() {
  ConfigureProcessForInference();
  absl::StatusOr<c10::Device> device = ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "%s\n", device.status().ToString().c_str());
    return 2;
  }
  if (device->is_cpu()) {
    SetIntraOpThreads(absl::GetFlag(FLAGS_threads));
  } else if (!at::hasCUDA()) {
    std::fprintf(stderr, "device %s: this LibTorch sees no CUDA device\n", device->str().c_str());
    return 1;
  }
  // float32 means float32 (TF32 would round the products' inputs to 10 bits).
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setBenchmarkCuDNN(true);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int size = absl::GetFlag(FLAGS_size);
  const std::vector<int> batches = ParseInts(absl::GetFlag(FLAGS_batches));
  std::vector<std::string> dtypes = absl::StrSplit(absl::GetFlag(FLAGS_dtypes), ',');
  std::vector<std::string> variants = absl::StrSplit(absl::GetFlag(FLAGS_variants), ',');
  std::printf("device %s, %dx%d, >= %.1f s per figure, random weights, LibTorch %s\n",
              device->str().c_str(), size, size, seconds, TORCH_VERSION);

  std::printf("%-16s %-9s %6s %12s %10s %14s %8s\n", "variant", "dtype", "batch", "ours img/s",
              "ms/batch", "PyTorch img/s", "ratio");
  std::fflush(stdout);
  const std::vector<int> graph_batches = ParseInts(absl::GetFlag(FLAGS_graph_batches));
  const std::set<std::string> graph_variants =
      absl::StrSplit(absl::GetFlag(FLAGS_graph_variants), ',', absl::SkipEmpty());
  // Each variant is measured, compared and printed before the next starts: a run cut short (the
  // device check has a time budget) keeps every variant it finished.
  for (const std::string& variant : variants) {
    absl::StatusOr<ConvNeXtConfig> config = ConfigForVariant(variant);
    if (!config.ok()) {
      std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
      return 2;
    }
    std::map<Key, Figure> ours;
    std::vector<std::string> agreement;
    // Per dtype and batch: the pooled pass eager, then replaying a CUDA graph.
    std::map<Key, std::pair<Figure, Figure>> graphs;
    std::vector<std::string> graph_notes;
    at::Tensor check = at::randn({8, 3, size, size});
    at::Tensor reference;  // float32 logits on the device, for the agreement figures.
    for (const std::string& name : dtypes) {
      absl::StatusOr<c10::ScalarType> dtype = DtypeFromName(name);
      if (!dtype.ok()) {
        std::fprintf(stderr, "%s\n", dtype.status().ToString().c_str());
        return 2;
      }
      if (*dtype != at::kFloat && !reference.defined()) {
        reference = RunOnce(*RandomModel(*config, *device, at::kFloat), check.to(*device));
      }
      std::unique_ptr<ConvNeXt> model = RandomModel(*config, *device, *dtype);
      if (*dtype != at::kFloat) {
        const at::Tensor got = RunOnce(*model, check.to(*device, *dtype)).to(at::kDouble);
        const at::Tensor ref = reference.to(at::kDouble);
        const double cosine =
            ((got * ref).sum(1) / (got.norm(2, {1}) * ref.norm(2, {1}))).min().item<double>();
        const int64_t agree = got.argmax(1).eq(ref.argmax(1)).sum().item<int64_t>();
        agreement.push_back(absl::StrCat(variant, " ", name, " vs float32 on ", device->str(),
                                         ": top-1 ", agree, "/", got.size(0),
                                         ", lowest cosine of logits ", cosine));
      }
      for (int batch : batches) {
        const at::Tensor x = at::randn({batch, 3, size, size}).to(*device, *dtype);
        ours[{variant, name, batch}] = Measure(*model, x, seconds);
      }
      if (!graph_batches.empty() && device->is_cuda() && graph_variants.count(variant) > 0) {
        const int top = *std::max_element(graph_batches.begin(), graph_batches.end());
        std::unique_ptr<ConvNeXt> graphed = RandomModel(*config, *device, *dtype, top);
        if (const absl::Status s = WarmUp(*graphed, top, size); !s.ok()) {
          graph_notes.push_back(absl::StrCat(variant, " ", name, ": ", s.ToString()));
          continue;
        }
        for (int batch : graph_batches) {
          const at::Tensor x = at::randn({batch, 3, size, size}).to(*device, *dtype);
          graphs[{variant, name, batch}] = {Measure(*model, x, seconds, RunPooledThenHead),
                                            Measure(*graphed, x, seconds, RunPooledThenHead)};
        }
      }
    }
    std::map<Key, Figure> theirs;
    if (absl::GetFlag(FLAGS_reference)) theirs = MeasureReference(variant, seconds);
    PrintVariant(ours, theirs, agreement, graphs, graph_notes, absl::GetFlag(FLAGS_json));
  }
  return 0;
}

}  // namespace
}  // namespace convnext

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return convnext::Main();
}

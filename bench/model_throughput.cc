// Benchmark: in-process ConvNeXt throughput against torchvision eager, measured in the same run
// with the same number of threads. Prints the instruction set oneDNN uses here and, per batch
// size: images/s of our CPU fast path (fused oneDNN blocks) in float32 and, where the CPU has
// native bfloat16, in bfloat16, of our ATen path (the operators torchvision also runs), of
// torchvision eager, the ratios, and each fast path's GFLOP/s with its share of this machine's
// GEMM ceiling in that dtype, which it measures first (the best oneDNN matrix-product rate over
// the model's own pointwise-layer shapes). Not a test: it asserts nothing.
//
//   build/bin/model_throughput [--variant convnext_tiny] [--batches 1,8] [--threads 2]
//                              [--seconds 10] [--reference=true] [--aten=true] [--bf16=true]
//                              [--instances 1] [--own_kernels=true] [--json]
//
// Weights are random (speed does not depend on their values). The reference side runs
// bench/torchvision_eager.py with Debian's /usr/bin/python3.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "model/convnext.h"
#include "model/convnext_config.h"
#include "model/onednn_stage.h"
#include "model/process_tuning.h"
#if CONVNEXT_HAVE_ONEDNN
#include "oneapi/dnnl/dnnl.hpp"
#endif

ABSL_FLAG(std::string, variant, "convnext_tiny", "Named ConvNeXt variant.");
ABSL_FLAG(std::string, batches, "1,8", "Comma-separated batch sizes.");
ABSL_FLAG(int, threads, 2, "Intra-op threads, for both sides.");
ABSL_FLAG(int, instances, 1,
          "Threads calling the model concurrently (as the server's executor instances); "
          "img/s is their total, ms/batch the mean time of one call.");
ABSL_FLAG(double, seconds, 10.0, "Minimum measuring time per batch size and side.");
ABSL_FLAG(int, size, 224, "Input side in pixels.");
ABSL_FLAG(bool, reference, true, "Also measure torchvision eager (python3-torchvision).");
ABSL_FLAG(bool, aten, true, "Also measure our ATen path (ModelOptions::cpu_fast_path = false).");
ABSL_FLAG(bool, own_kernels, true,
          "The fast path's blocks through our own kernels where the CPU allows "
          "(ModelOptions::cpu_own_kernels); false: oneDNN's matrix products, the A/B baseline.");
ABSL_FLAG(bool, json, false,
          "After the table, one JSON line per measurement (bench/cpu_peers.py reads them).");
ABSL_FLAG(bool, bf16, true,
          "Also measure the fast path in bfloat16 (ModelOptions::cpu_precision), where the CPU "
          "has native bfloat16.");
ABSL_FLAG(std::string, reference_script, CONVNEXT_SOURCE_DIR "/bench/torchvision_eager.py",
          "The reference benchmark script.");

namespace convnext {
namespace {

struct Result {
  int batch = 0;
  double images_per_s = 0;
  double ms_per_batch = 0;
};

std::unique_ptr<ConvNeXt> RandomModel(const ConvNeXtConfig& config, int threads, bool fast,
                                      BlockPrecision precision = BlockPrecision::kFloat32) {
  StateDict weights;
  for (const auto& [name, shape] : ExpectedParameters(config)) {
    weights[name] = at::randn(shape) * 0.02;
  }
  ModelOptions options;
  SetIntraOpThreads(threads);
  options.cpu_fast_path = fast;
  options.cpu_precision = precision;
  options.cpu_own_kernels = absl::GetFlag(FLAGS_own_kernels);
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model = ConvNeXt::Create(config, weights, options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(model);
}

// Calls Forward on a batch of `batch` images for at least `seconds`: on the calling thread (the
// one that loaded the model: a second thread with intra-op threads of its own would leave the
// first's idle beside them, which slows every OpenMP region; see RunOnThreadOfItsOwn) or, with
// several `instances`, on as many threads at once. Returns the images per second of all threads
// together and the mean time of one call.
Result Measure(const ConvNeXt& model, int batch, int size, double seconds, int instances) {
  const at::Tensor x = at::randn({batch, 3, size, size});
  using Clock = std::chrono::steady_clock;
  std::vector<int> calls(instances, 0);
  std::vector<double> elapsed(instances, 0);
  std::vector<std::thread> threads;
  auto run = [&](int t) {
    for (int i = 0; i < 2; ++i) (void)model.Forward(x, OutputRequest());
    const auto start = Clock::now();
    do {
      absl::StatusOr<ForwardOutputs> out = model.Forward(x, OutputRequest());
      if (!out.ok()) {
        std::fprintf(stderr, "%s\n", out.status().ToString().c_str());
        std::exit(1);
      }
      ++calls[t];
      elapsed[t] = std::chrono::duration<double>(Clock::now() - start).count();
    } while (elapsed[t] < seconds || calls[t] < 3);
  };
  if (instances == 1) {
    run(0);
  } else {
    for (int t = 0; t < instances; ++t) threads.emplace_back(run, t);
  }
  for (std::thread& t : threads) t.join();
  double images_per_s = 0, ms_per_call = 0;
  for (int t = 0; t < instances; ++t) {
    images_per_s += calls[t] * batch / elapsed[t];
    ms_per_call += 1000 * elapsed[t] / calls[t] / instances;
  }
  return {batch, images_per_s, ms_per_call};
}

#if CONVNEXT_HAVE_ONEDNN
// The best rate, in GFLOP/s, of a oneDNN matrix product in `type` (float32 or bfloat16; weights
// prepacked, as the fast path does) over the pointwise layers' shapes of `config` at `batch`
// images of size x size.
double MeasureGemmCeiling(const ConvNeXtConfig& config, int batch, int size, bool bf16) {
  const dnnl::memory::data_type type =
      bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
  using dnnl::memory;
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  double best = 0;
  int64_t side = size / 4;
  for (int i = 0; i < kNumStages; ++i, side /= 2) {
    const int64_t m = batch * side * side, c = config.dims[i];
    for (const auto& [k, n] : {std::make_pair(c, 4 * c), std::make_pair(4 * c, c)}) {
      const memory::desc a_md({m, k}, type, memory::format_tag::ab);
      const memory::desc c_md({m, n}, type, memory::format_tag::ab);
      const memory::desc w_any({k, n}, type, memory::format_tag::any);
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, w_any, c_md), engine);
      memory a(a_md, engine), w(pd.weights_desc(), engine), out(c_md, engine);
      for (memory* mem : {&a, &w}) {
        const size_t bytes = mem->get_desc().get_size();
        if (type == memory::data_type::bf16) {
          uint16_t* p = static_cast<uint16_t*>(mem->get_data_handle());
          for (size_t j = 0; j < bytes / 2; ++j) p[j] = 0x3c24;  // About 0.01.
        } else {
          float* p = static_cast<float*>(mem->get_data_handle());
          for (size_t j = 0; j < bytes / sizeof(float); ++j) p[j] = 0.01f;
        }
      }
      const dnnl::matmul mm(pd);
      using Clock = std::chrono::steady_clock;
      for (int rep = 0; rep < 3; ++rep) {  // Best of three bursts of >= 0.2 s.
        const auto start = Clock::now();
        int runs = 0;
        double elapsed = 0;
        do {
          mm.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, out}});
          stream.wait();
          ++runs;
          elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        } while (elapsed < 0.2);
        best = std::max(best, 2.0 * m * k * n * runs / elapsed / 1e9);
      }
    }
  }
  return best;
}

#else
// Without the fast path (CONVNEXT_ONEDNN=OFF), the same shapes through ATen's matrix product.
double MeasureGemmCeiling(const ConvNeXtConfig& config, int batch, int size, bool bf16) {
  double best = 0;
  int64_t side = size / 4;
  for (int i = 0; i < kNumStages; ++i, side /= 2) {
    const int64_t m = batch * side * side, c = config.dims[i];
    for (const auto& [k, n] : {std::make_pair(c, 4 * c), std::make_pair(4 * c, c)}) {
      const auto type = bf16 ? at::kBFloat16 : at::kFloat;
      const at::Tensor a = at::full({m, k}, 0.01, type), w = at::full({k, n}, 0.01, type);
      using Clock = std::chrono::steady_clock;
      for (int rep = 0; rep < 3; ++rep) {
        const auto start = Clock::now();
        int runs = 0;
        double elapsed = 0;
        do {
          at::mm(a, w);
          ++runs;
          elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        } while (elapsed < 0.2);
        best = std::max(best, 2.0 * m * k * n * runs / elapsed / 1e9);
      }
    }
  }
  return best;
}
#endif

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
  const int instances = std::max(1, absl::GetFlag(FLAGS_instances));
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int size = absl::GetFlag(FLAGS_size);
  std::vector<int> batches;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',')) {
    int v = 0;
    if (absl::SimpleAtoi(b, &v) && v > 0) batches.push_back(v);
  }

  std::printf("%s at %dx%d, %d intra-op threads, %d instance(s), >= %.0f s per measurement\n",
              variant.c_str(), size, size, threads, instances, seconds);
  const bool bf16 = absl::GetFlag(FLAGS_bf16) && CpuHasNativeBf16();
  std::printf("CPU: oneDNN ISA %s; native bfloat16: %s%s\n", OneDnnIsaName().c_str(),
              CpuHasNativeBf16() ? "yes" : "no",
              absl::GetFlag(FLAGS_bf16) && !bf16 ? " (the bfloat16 path is not measured)" : "");
  std::printf("Fast path blocks: %s\n", absl::GetFlag(FLAGS_own_kernels)
                                            ? "our own kernels where the CPU allows"
                                            : "oneDNN's matrix products (--own_kernels=false)");
  const double gflop_per_image = ForwardFlops(*config, size, size) / 1e9;
  std::vector<Result> fast, aten, fast16;
  double ceiling = 0, ceiling16 = 0;
  // Loads, ceilings and measurements all on one thread of its own, as a server executor runs its
  // model: one set of OpenMP intra-op threads in the process (see RunOnThreadOfItsOwn).
  std::thread([&] {
    // The ATen path first: once oneDNN's OpenMP threads have run, they spin while OpenBLAS's own
    // threads (which the ATen path's matrix products use) want the same two cores.
    if (absl::GetFlag(FLAGS_aten)) {
      std::unique_ptr<ConvNeXt> model = RandomModel(*config, threads, /*fast=*/false);
      for (int b : batches) aten.push_back(Measure(*model, b, size, seconds, instances));
    }
    std::unique_ptr<ConvNeXt> model = RandomModel(*config, threads, /*fast=*/true);
    ceiling = MeasureGemmCeiling(*config, 8, size, /*bf16=*/false);
    for (int b : batches) fast.push_back(Measure(*model, b, size, seconds, instances));
    if (bf16) {
      model.reset();
      model = RandomModel(*config, threads, /*fast=*/true, BlockPrecision::kBFloat16);
      ceiling16 = MeasureGemmCeiling(*config, 8, size, /*bf16=*/true);
      for (int b : batches) fast16.push_back(Measure(*model, b, size, seconds, instances));
    }
  }).join();

  std::vector<Result> reference;
  if (absl::GetFlag(FLAGS_reference)) {
    reference = MeasureReference(variant, absl::GetFlag(FLAGS_batches), threads, seconds, size);
  }
  auto find = [](const std::vector<Result>& results, int batch) -> const Result* {
    for (const Result& r : results) {
      if (r.batch == batch) return &r;
    }
    return nullptr;
  };
  auto cell = [](const Result* r) {
    return r == nullptr ? std::string("-") : absl::StrFormat("%.2f", r->images_per_s);
  };
  // "-" where either figure is missing.
  auto ratio = [](const Result* r, const Result* base) {
    return r == nullptr || base == nullptr
               ? std::string("-")
               : absl::StrFormat("%.2f", r->images_per_s / base->images_per_s);
  };
  // A path's GFLOP/s as a share of `instances` x the GEMM ceiling in its dtype.
  auto share = [&](const Result* r, double gemm_ceiling) {
    return r == nullptr ? std::string("-")
                        : absl::StrFormat("%.0f", 100 * r->images_per_s * gflop_per_image /
                                                      (gemm_ceiling * instances));
  };
  std::printf(
      "GEMM ceiling (best oneDNN matmul on the model's pointwise shapes, batch 8, on one "
      "instance's threads): float32 %.1f GFLOP/s, bfloat16 %s GFLOP/s; model: %.2f GFLOP per "
      "image; the shares below are of %d x the ceiling in the path's dtype\n",
      ceiling, bf16 ? absl::StrFormat("%.1f", ceiling16).c_str() : "-", gflop_per_image, instances);
  std::printf("%6s %10s %9s %10s %10s %10s %8s %8s %9s %8s %10s %8s %8s\n", "batch", "fast img/s",
              "ms/batch", "ATen img/s", "tv img/s", "fast/tv", "fast/ATen", "GFLOP/s", "ceiling",
              "bf16 img/s", "bf16/fast", "bf16/tv", "ceiling");
  for (const Result& r : fast) {
    const Result* ref = find(reference, r.batch);
    const Result* slow = find(aten, r.batch);
    const Result* r16 = find(fast16, r.batch);
    std::printf("%6d %10.2f %9.1f %10s %10s %9sx %7sx %8.1f %7s%% %10s %8sx %7sx %7s%%\n", r.batch,
                r.images_per_s, r.ms_per_batch, cell(slow).c_str(), cell(ref).c_str(),
                ratio(&r, ref).c_str(), ratio(&r, slow).c_str(), r.images_per_s * gflop_per_image,
                share(&r, ceiling).c_str(), cell(r16).c_str(), ratio(r16, &r).c_str(),
                ratio(r16, ref).c_str(), share(r16, ceiling16).c_str());
  }
  if (absl::GetFlag(FLAGS_json)) {
    auto json = [](const char* path, const std::vector<Result>& results, double gemm_ceiling) {
      for (const Result& r : results) {
        std::printf(
            "{\"path\": \"%s\", \"batch\": %d, \"images_per_s\": %.4f, \"ms_per_batch\": "
            "%.3f, \"gemm_ceiling_gflops\": %.1f}\n",
            path, r.batch, r.images_per_s, r.ms_per_batch, gemm_ceiling);
      }
    };
    json("fast", fast, ceiling);
    json("fast-bf16", fast16, ceiling16);
    json("aten", aten, 0);
  }
  return 0;
}

}  // namespace
}  // namespace convnext

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return convnext::Main();
}

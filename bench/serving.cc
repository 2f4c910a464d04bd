// Benchmark: gRPC Classify at saturation against the in-process model at the same batch size,
// measured in the same run. Prints throughput, efficiency (gRPC / in-process), end-to-end latency
// percentiles and the overhead: end-to-end minus queue, preprocess and compute, both as the client
// sees it and inside the server (Timings.server_us), beside the floor of a no-op gRPC round trip
// measured in the same run, and the CPU time the client threads took from the machine: they run
// on the same cores as the server here, which a deployment's remote clients would not. Not a
// test: it asserts nothing.
//
//   build/bin/serving_bench [--checkpoint CKPT] [--image samples/chelsea.jpg]
//       [--max_batch_size 8] [--concurrency 16] [--seconds 20] [--rounds 4]
//       [--max_queue_delay_us 5000] [--bf16] [--input jpeg|tensor]
//
// --input tensor sends the image already preprocessed (Image.tensor, [3, 224, 224] float32, what a
// client that preprocesses for itself sends): the server then decodes nothing, and the efficiency
// is that of serving alone. With JPEG inputs (the default) the server also decodes and transforms
// every image on the same cores as the model, which the in-process side does not.
//
// The server (server/server.h, the same Server object as convnext-server) runs in this process on a
// loopback port; the clients are synchronous C++ stubs on their own threads. The in-process side
// (the same model called directly at the same batch size) runs in a child process, one a round,
// while the server idles. Without --checkpoint, a random-weight convnext_tiny is written to a
// temporary file first.
#include <ATen/ATen.h>
#include <grpcpp/grpcpp.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "checkpoint/safetensors.h"
#include "convnext/v1/image_model.grpc.pb.h"
#include "image/preprocess.h"
#include "model/convnext_config.h"
#include "model/load_model.h"
#include "model/process_tuning.h"
#include "server/server.h"
#include "server/server_config.h"

ABSL_FLAG(std::string, checkpoint, "", "Checkpoint; empty: random-weight convnext_tiny.");
ABSL_FLAG(std::string, image, CONVNEXT_SOURCE_DIR "/samples/chelsea.jpg", "JPEG sent by clients.");
ABSL_FLAG(int, max_batch_size, 8, "Server max_batch_size (and the in-process batch size).");
ABSL_FLAG(int, max_queue_delay_us, 5000, "Server max_queue_delay_us.");
ABSL_FLAG(int, concurrency, 16, "Concurrent client calls (>= 2 x max_batch_size saturates).");
ABSL_FLAG(double, seconds, 20, "Measuring time for each side.");
ABSL_FLAG(int, rounds, 4, "Alternations of the in-process and gRPC sides.");
ABSL_FLAG(int, threads, 2, "Intra-op threads.");
ABSL_FLAG(bool, metrics, true, "Record Prometheus metrics, as the server does by default.");
ABSL_FLAG(std::string, input, "jpeg",
          "What clients send: jpeg (--image, decoded and transformed by the server) or tensor "
          "(the same image preprocessed here, sent as a float32 [3, 224, 224] Image.tensor).");
ABSL_FLAG(double, in_process_worker_seconds, 0,
          "Internal: run as the in-process side's worker process for this long and print what it "
          "did (the parent starts it once a round).");
ABSL_FLAG(bool, bf16, false,
          "compute_dtype BF16 on both sides (the fast path's bfloat16 blocks; needs a CPU with "
          "native bfloat16).");

namespace convnext::server {
namespace {

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

std::string RandomTiny() {
  const std::string path = "/tmp/convnext_serving_bench_tiny.safetensors";
  StateDict weights;
  for (const auto& [name, shape] : ExpectedParameters(*ConfigForVariant("convnext_tiny"))) {
    weights[name] = at::randn(shape) * 0.02;
  }
  if (!WriteSafetensors(path, weights).ok()) std::exit(1);
  return path;
}

// The in-process side: the same model and batch size on a preprocessed input, in a process with
// no server in it. Loads, warms up and calls Forward for `seconds` on one thread (the one that
// loaded it, as an executor runs its model), then prints "images N seconds S".
int InProcessWorker(const std::string& checkpoint, const std::string& jpeg, double seconds) {
  SetIntraOpThreads(absl::GetFlag(FLAGS_threads));
  const int batch = absl::GetFlag(FLAGS_max_batch_size);
  absl::Status status;
  double images = 0, elapsed = 0;
  RunOnThreadOfItsOwn([&] {
    absl::StatusOr<at::Tensor> one = DecodeAndTransform(jpeg, PreprocessConfig());
    LoadOptions load;
    load.path = checkpoint;
    if (absl::GetFlag(FLAGS_bf16)) load.model.cpu_precision = BlockPrecision::kBFloat16;
    absl::StatusOr<LoadedModel> direct = LoadModel(load);
    if (!one.ok() || !direct.ok()) {
      status = one.ok() ? direct.status() : one.status();
      return;
    }
    const at::Tensor x = one->expand({batch, 3, 224, 224}).contiguous();
    for (int i = 0; i < 2; ++i) (void)direct->model->Forward(x, OutputRequest());
    int n = 0;
    const absl::Time t0 = absl::Now();
    while (absl::Now() - t0 < absl::Seconds(seconds)) {
      (void)direct->model->Forward(x, OutputRequest());
      ++n;
    }
    images = n * batch;
    elapsed = absl::ToDoubleSeconds(absl::Now() - t0);
  });
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("images %.0f seconds %.6f\n", images, elapsed);
  return 0;
}

// CPU seconds the calling thread has used.
double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct InProcessRound {
  double images = 0, seconds = 0;
};

// Starts this program as the in-process worker (above) and reads what it did.
absl::StatusOr<InProcessRound> RunInProcessWorker(const std::string& checkpoint, double seconds) {
  const std::string command = absl::StrCat(
      "/proc/", getpid(), "/exe --in_process_worker_seconds=", seconds, " --checkpoint='",
      checkpoint, "' --image='", absl::GetFlag(FLAGS_image),
      "' --max_batch_size=", absl::GetFlag(FLAGS_max_batch_size),
      " --threads=", absl::GetFlag(FLAGS_threads), " --bf16=", absl::GetFlag(FLAGS_bf16));
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("could not start the in-process worker");
  InProcessRound round;
  const int read = std::fscanf(pipe, "images %lf seconds %lf", &round.images, &round.seconds);
  if (pclose(pipe) != 0 || read != 2 || round.seconds <= 0) {
    return absl::InternalError(absl::StrCat("the in-process worker failed: ", command));
  }
  return round;
}

int Main() {
  ConfigureProcessForInference();
  const std::string checkpoint =
      absl::GetFlag(FLAGS_checkpoint).empty() ? RandomTiny() : absl::GetFlag(FLAGS_checkpoint);
  std::ifstream in(absl::GetFlag(FLAGS_image), std::ios::binary);
  const std::string jpeg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (absl::GetFlag(FLAGS_in_process_worker_seconds) > 0) {
    return InProcessWorker(checkpoint, jpeg, absl::GetFlag(FLAGS_in_process_worker_seconds));
  }
  const int batch = absl::GetFlag(FLAGS_max_batch_size);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const std::string input = absl::GetFlag(FLAGS_input);
  if (input != "jpeg" && input != "tensor") {
    std::fprintf(stderr, "--input must be jpeg or tensor, not %s\n", input.c_str());
    return 1;
  }
  const int concurrency = absl::GetFlag(FLAGS_concurrency);

  ServerConfig config;
  ModelConfig* m = config.add_model();
  m->set_name("model");
  m->set_checkpoint(checkpoint);
  m->mutable_batching()->set_max_batch_size(batch);
  m->mutable_batching()->set_max_queue_delay_us(absl::GetFlag(FLAGS_max_queue_delay_us));
  m->mutable_batching()->set_max_queue_size(std::max(64, 4 * concurrency));
  if (absl::GetFlag(FLAGS_bf16)) m->set_compute_dtype(BF16);
  config.set_intra_op_threads(absl::GetFlag(FLAGS_threads));
  config.set_preprocess_threads(2);
  NormalizeConfig(&config, 2, int64_t{8} << 30);
  if (absl::Status s = ValidateServerConfig(config); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  // The product's own Server: the same wiring and shutdown as convnext-server.
  ServerOptions server_options;
  server_options.host = "127.0.0.1";
  server_options.port = 0;
  server_options.metrics_host = "127.0.0.1";
  server_options.metrics_port = absl::GetFlag(FLAGS_metrics) ? 0 : -1;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Create(config, server_options);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  const std::shared_ptr<ModelHost> host = (*server)->model("model");

  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*server)->port()),
                                     grpc::InsecureChannelCredentials());
  v1::ClassifyRequest request;
  if (input == "jpeg") {
    request.add_images()->set_encoded(jpeg);
  } else {
    absl::StatusOr<at::Tensor> one = DecodeAndTransform(jpeg, PreprocessConfig());
    if (!one.ok()) {
      std::fprintf(stderr, "%s\n", one.status().ToString().c_str());
      return 1;
    }
    const at::Tensor chw = one->reshape({3, 224, 224}).contiguous();
    v1::Tensor* tensor = request.add_images()->mutable_tensor();
    for (const int64_t d : chw.sizes()) tensor->add_shape(d);
    tensor->set_dtype(v1::FP32);
    tensor->set_data(chw.data_ptr<float>(), chw.numel() * sizeof(float));
  }

  // The floor: a no-op round trip (GetModel) over the same channel, with the server idle.
  std::vector<double> noop_us;
  {
    auto stub = v1::ImageModelService::NewStub(channel);
    v1::GetModelRequest get;
    get.set_name("model");
    for (int i = 0; i < 500; ++i) {
      grpc::ClientContext ctx;
      v1::ModelInfo info;
      const absl::Time t0 = absl::Now();
      grpc::Status s = stub->GetModel(&ctx, get, &info);
      if (s.ok() && i >= 50) noop_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    }
  }

  // Clients send while `sending`; `measuring` selects the calls that count.
  std::atomic<bool> stop{false}, sending{false}, measuring{false};
  std::atomic<int> in_flight{0};
  std::vector<std::vector<double>> latency_ms(concurrency), overhead_us(concurrency),
      server_overhead_us(concurrency);
  std::vector<int> errors(concurrency, 0);
  // CPU seconds each client thread spent in the calls that count (building nothing: the request
  // is made once; what remains is serialising, sending, waiting and parsing the answer).
  std::vector<double> client_cpu_s(concurrency, 0);
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::ImageModelService::NewStub(channel);
      while (!stop) {
        if (!sending) {
          absl::SleepFor(absl::Milliseconds(1));
          continue;
        }
        ++in_flight;
        grpc::ClientContext ctx;
        v1::ClassifyResponse response;
        const absl::Time t0 = absl::Now();
        const double cpu0 = ThreadCpuSeconds();
        grpc::Status s = stub->Classify(&ctx, request, &response);
        const double us = absl::ToDoubleMicroseconds(absl::Now() - t0);
        const bool counted = measuring;
        --in_flight;
        if (!counted) continue;
        client_cpu_s[c] += ThreadCpuSeconds() - cpu0;
        if (!s.ok()) {
          ++errors[c];
          continue;
        }
        const v1::Timings& t = response.timings();
        latency_ms[c].push_back(us / 1000);
        const double inner = t.queue_us() + t.preprocess_us() + t.compute_us();
        overhead_us[c].push_back(us - inner);
        server_overhead_us[c].push_back(t.server_us() - inner);
      }
    });
  }

  // The two sides alternate in `rounds` slices, so that both see the same machine (its speed
  // drifts by several percent over a minute here).
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  const absl::Duration slice = absl::Seconds(seconds / rounds);
  double in_process_images = 0, in_process_s = 0, grpc_images = 0, grpc_s = 0;
  for (int r = 0; r < rounds; ++r) {
    sending = false;
    while (in_flight > 0) absl::SleepFor(absl::Milliseconds(1));
    // The in-process side in a process of its own, while the server idles: in this one, the
    // server's executors keep their OpenMP intra-op threads, and a second set beside them makes
    // every OpenMP region of both sleep and wake through futex (see RunOnThreadOfItsOwn), which
    // slowed the in-process side by up to 20% at batch 1 and made gRPC look faster than it.
    absl::StatusOr<InProcessRound> round =
        RunInProcessWorker(checkpoint, absl::ToDoubleSeconds(slice));
    if (!round.ok()) {
      std::fprintf(stderr, "%s\n", round.status().ToString().c_str());
      return 1;
    }
    in_process_images += round->images;
    in_process_s += round->seconds;

    sending = true;
    absl::SleepFor(std::min(absl::Seconds(2), slice / 4));  // Fill the pipeline.
    const uint64_t images_before = host->Info().stats().images();
    const absl::Time start = absl::Now();
    measuring = true;
    absl::SleepFor(slice);
    measuring = false;
    grpc_s += absl::ToDoubleSeconds(absl::Now() - start);
    grpc_images += host->Info().stats().images() - images_before;
  }
  const double in_process = in_process_images / in_process_s;
  const double grpc_rate = grpc_images / grpc_s;
  const v1::ModelInfo info = host->Info();
  stop = true;
  for (auto& t : clients) t.join();
  (*server)->Drain(absl::Now() + absl::Seconds(10));

  std::vector<double> lat, over, server_over;
  int errs = 0;
  double client_cpu = 0;
  for (int c = 0; c < concurrency; ++c) {
    client_cpu += client_cpu_s[c];
    lat.insert(lat.end(), latency_ms[c].begin(), latency_ms[c].end());
    over.insert(over.end(), overhead_us[c].begin(), overhead_us[c].end());
    server_over.insert(server_over.end(), server_overhead_us[c].begin(),
                       server_overhead_us[c].end());
    errs += errors[c];
  }
  std::printf(
      "serving bench: %s, max_batch_size %d, max_queue_delay_us %d, concurrency %d, "
      "%d intra-op threads, %.0f s per side\n",
      info.variant().c_str(), batch, absl::GetFlag(FLAGS_max_queue_delay_us), concurrency,
      absl::GetFlag(FLAGS_threads), seconds);
  std::printf("in-process batch %d:     %8.2f img/s\n", batch, in_process);
  std::printf("gRPC Classify (%s): %8.2f img/s   efficiency %.3f\n",
              input == "jpeg" ? "JPEG  " : "tensor", grpc_rate, grpc_rate / in_process);
  std::printf(
      "latency ms:             p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  (%zu calls, %d "
      "errors)\n",
      Percentile(lat, 0.5), Percentile(lat, 0.9), Percentile(lat, 0.99), Percentile(lat, 1.0),
      lat.size(), errs);
  std::printf(
      "overhead us (end-to-end at the client - queue - preprocess - compute): "
      "p50 %.0f  p90 %.0f  p99 %.0f\n",
      Percentile(over, 0.5), Percentile(over, 0.9), Percentile(over, 0.99));
  std::printf(
      "server's own overhead us (server_us - queue - preprocess - compute): "
      "p50 %.0f  p90 %.0f  p99 %.0f\n",
      Percentile(server_over, 0.5), Percentile(server_over, 0.9), Percentile(server_over, 0.99));
  std::printf("gRPC no-op round trip (GetModel, idle server) us: p50 %.0f  p90 %.0f\n",
              Percentile(noop_us, 0.5), Percentile(noop_us, 0.9));
  // The clients' share of the machine, and what the efficiency would be if the model had that CPU
  // back (an estimate: it assumes the model turns CPU into images at the in-process rate).
  const double cpus = static_cast<double>(std::max<long>(1, sysconf(_SC_NPROCESSORS_ONLN)));
  const double client_share = client_cpu / (grpc_s * cpus);
  std::printf(
      "client threads' CPU: %.0f us a call, %.1f%% of the %.0f CPUs; efficiency without it "
      "(estimate): %.3f\n",
      1e6 * client_cpu / std::max<double>(1, static_cast<double>(lat.size() + errs)),
      100 * client_share, cpus, grpc_rate / (in_process * std::max(1e-9, 1 - client_share)));
  std::string sizes;
  for (const auto& [size, count] : info.stats().batch_sizes()) {
    absl::StrAppend(&sizes, " ", size, ":", count);
  }
  std::printf("batch sizes formed (size:count):%s\n", sizes.c_str());
  return 0;
}

}  // namespace
}  // namespace convnext::server

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return convnext::server::Main();
}

#include "server/metrics.h"

#include <dirent.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/metrics_http.h"

namespace convnext::server {
namespace {

constexpr const char* kMethodNames[kNumMethods] = {"Classify", "Embed",      "ListModels",
                                                   "GetModel", "ModelInfer", "EmbedStream"};
constexpr const char* kCodeNames[kNumStatusCodes] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

// Bucket upper bounds, documented with the metrics below.
const prometheus::Histogram::BucketBoundaries& LatencyBucketsUs() {
  // 100 us to 60 s: from an idle small model's answer to a large batch on a slow CPU.
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      100, 250,   500, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4,
      1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 3e7,   6e7};
  return *b;
}
const prometheus::Histogram::BucketBoundaries& BatchSizeBuckets() {
  static const auto* b =
      new prometheus::Histogram::BucketBoundaries{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256};
  return *b;
}

// process_* metrics from /proc (prometheus-cpp has no process collector).
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    auto gauge = [&out](const char* name, const char* help, prometheus::MetricType type,
                        double value) {
      prometheus::MetricFamily f;
      f.name = name;
      f.help = help;
      f.type = type;
      prometheus::ClientMetric m;
      if (type == prometheus::MetricType::Counter) {
        m.counter.value = value;
      } else {
        m.gauge.value = value;
      }
      f.metric.push_back(m);
      out.push_back(std::move(f));
    };
    const long page = ::sysconf(_SC_PAGESIZE);
    const long ticks = ::sysconf(_SC_CLK_TCK);
    std::ifstream statm("/proc/self/statm");
    long size = 0, resident = 0;
    statm >> size >> resident;
    gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
          prometheus::MetricType::Gauge, static_cast<double>(resident) * page);
    gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
          prometheus::MetricType::Gauge, static_cast<double>(size) * page);
    std::ifstream stat("/proc/self/stat");
    std::string line;
    std::getline(stat, line);
    // Fields after the parenthesised command: utime is field 14, stime 15 (1-based).
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stod(field);
      if (i == 15) stime = std::stod(field);
    }
    gauge("process_cpu_seconds_total", "User and system CPU time spent in seconds.",
          prometheus::MetricType::Counter, (utime + stime) / ticks);
    int fds = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
      while (::readdir(d) != nullptr) ++fds;
      ::closedir(d);
      fds -= 3;  // ".", ".." and the directory's own descriptor.
    }
    gauge("process_open_fds", "Number of open file descriptors.", prometheus::MetricType::Gauge,
          fds);
    return out;
  }
};

struct State {
  prometheus::Registry* registry = nullptr;
  prometheus::Family<prometheus::Counter>* requests = nullptr;
  prometheus::Family<prometheus::Histogram>* latency = nullptr;
  prometheus::Family<prometheus::Histogram>* queue = nullptr;
  prometheus::Family<prometheus::Histogram>* preprocess = nullptr;
  prometheus::Family<prometheus::Histogram>* compute = nullptr;
  prometheus::Family<prometheus::Histogram>* device_compute = nullptr;
  prometheus::Family<prometheus::Gauge>* device_memory = nullptr;
  prometheus::Family<prometheus::Histogram>* batch_size = nullptr;
  prometheus::Family<prometheus::Counter>* images = nullptr;
  prometheus::Family<prometheus::Gauge>* queue_depth = nullptr;
  prometheus::Family<prometheus::Gauge>* in_flight = nullptr;
  prometheus::Family<prometheus::Gauge>* ready = nullptr;
  prometheus::Family<prometheus::Gauge>* load_seconds = nullptr;
  prometheus::Family<prometheus::Counter>* loads = nullptr;
  prometheus::Family<prometheus::Gauge>* last_load_ok = nullptr;
  prometheus::Family<prometheus::Counter>* replica_batches = nullptr;
  prometheus::Family<prometheus::Counter>* replica_images = nullptr;
  prometheus::Family<prometheus::Counter>* graph_replays = nullptr;
  absl::Mutex mu;
  // By (model, version).
  std::map<std::pair<std::string, std::string>, std::unique_ptr<ModelMetrics>> models
      ABSL_GUARDED_BY(mu);
  // By (model, version, replica, device).
  std::map<std::tuple<std::string, std::string, int, std::string>, std::unique_ptr<ReplicaMetrics>>
      replicas ABSL_GUARDED_BY(mu);
};

State* g_state = nullptr;  // Set once by Metrics::Start; lives until exit.

}  // namespace

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& bind_address,
                                                        const BuildInfo& build) {
  std::unique_ptr<Metrics> metrics(new Metrics());
  metrics->registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *metrics->registry_;
  auto* s = new State();
  s->registry = &r;
  s->requests = &prometheus::BuildCounter()
                     .Name("convnext_requests_total")
                     .Help("gRPC calls answered, by model, method and status code.")
                     .Register(r);
  s->latency = &prometheus::BuildHistogram()
                    .Name("convnext_request_latency_microseconds")
                    .Help(
                        "Server-side end-to-end call latency in microseconds, from the handler "
                        "to the answer, by model and method. Buckets 100 us to 60 s.")
                    .Register(r);
  s->queue = &prometheus::BuildHistogram()
                  .Name("convnext_queue_time_microseconds")
                  .Help(
                      "Time an image waited from admission to the start of its batch, in "
                      "microseconds (preprocessing excluded).")
                  .Register(r);
  s->preprocess = &prometheus::BuildHistogram()
                       .Name("convnext_preprocess_time_microseconds")
                       .Help("Decoding and transforming one image, in microseconds.")
                       .Register(r);
  s->compute = &prometheus::BuildHistogram()
                    .Name("convnext_compute_time_microseconds")
                    .Help("One forward pass over a batch, in microseconds.")
                    .Register(r);
  s->device_compute =
      &prometheus::BuildHistogram()
           .Name("convnext_device_compute_time_microseconds")
           .Help(
               "One batch on the GPU, measured with CUDA events (the input's copy, the forward "
               "pass, the outputs' copies), in microseconds. Models on a CUDA device only.")
           .Register(r);
  s->device_memory = &prometheus::BuildGauge()
                          .Name("convnext_gpu_memory_bytes")
                          .Help(
                              "Bytes LibTorch's caching allocator holds on a CUDA device: kind "
                              "\"allocated\" in tensors, \"reserved\" from the driver.")
                          .Register(r);
  s->batch_size = &prometheus::BuildHistogram()
                       .Name("convnext_batch_size")
                       .Help(
                           "Images per forward pass, as the dynamic batcher formed them. "
                           "Buckets 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256.")
                       .Register(r);
  s->images = &prometheus::BuildCounter()
                   .Name("convnext_images_total")
                   .Help("Images computed, by model.")
                   .Register(r);
  s->queue_depth = &prometheus::BuildGauge()
                        .Name("convnext_queue_depth")
                        .Help("Images admitted and not yet answered, by model.")
                        .Register(r);
  s->in_flight = &prometheus::BuildGauge()
                      .Name("convnext_in_flight_requests")
                      .Help("Classify and Embed calls being served, by model.")
                      .Register(r);
  s->ready = &prometheus::BuildGauge()
                  .Name("convnext_model_ready")
                  .Help("1 when the model version is loaded, warmed up and serving, else 0.")
                  .Register(r);
  s->load_seconds = &prometheus::BuildGauge()
                         .Name("convnext_model_load_seconds")
                         .Help(
                             "Seconds the model version took to load, warm up and pass its golden "
                             "self-test, at its last load.")
                         .Register(r);
  s->loads = &prometheus::BuildCounter()
                  .Name("convnext_model_loads_total")
                  .Help(
                      "Loads and reloads of a model's versions after start-up (control API or "
                      "config watch), by model and result (ok, failed).")
                  .Register(r);
  s->last_load_ok = &prometheus::BuildGauge()
                         .Name("convnext_model_last_load_success")
                         .Help("1 if the model's last load or reload succeeded, else 0.")
                         .Register(r);
  s->replica_batches = &prometheus::BuildCounter()
                            .Name("convnext_replica_batches_total")
                            .Help(
                                "Forward passes by replica: one per entry of the model's devices, "
                                "each batch computed by the least busy one.")
                            .Register(r);
  s->replica_images = &prometheus::BuildCounter()
                           .Name("convnext_replica_images_total")
                           .Help("Images computed, by replica (the model's devices).")
                           .Register(r);
  s->graph_replays = &prometheus::BuildCounter()
                          .Name("convnext_cuda_graph_replays_total")
                          .Help(
                              "Batches that replayed a CUDA graph captured at warm-up instead of "
                              "running eagerly (cuda_graph_max_batch), by replica.")
                          .Register(r);
  prometheus::BuildGauge()
      .Name("convnext_build_info")
      .Help("Always 1; the labels describe the build.")
      .Register(r)
      .Add({{"version", build.version},
            {"libtorch_version", build.libtorch_version},
            {"device", build.device}})
      .Set(1);
  auto process = std::make_shared<ProcessCollector>();
  std::weak_ptr<prometheus::Registry> registry = metrics->registry_;
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> http =
      MetricsHttpServer::Start(bind_address, [registry, process] {
        std::vector<prometheus::MetricFamily> families;
        if (auto r = registry.lock()) families = r->Collect();
        for (auto& f : process->Collect()) families.push_back(std::move(f));
        return prometheus::TextSerializer().Serialize(families);
      });
  if (!http.ok()) return http.status();
  metrics->http_ = *std::move(http);
  g_state = s;
  return metrics;
}

Metrics::~Metrics() = default;

int Metrics::port() const { return http_->port(); }

ModelMetrics* Metrics::ForModel(const std::string& model, const std::string& version) {
  State* s = g_state;
  if (s == nullptr) return nullptr;
  absl::MutexLock lock(&s->mu);
  std::unique_ptr<ModelMetrics>& m = s->models[{model, version}];
  if (m != nullptr) return m.get();
  m = std::make_unique<ModelMetrics>();
  for (int method = 0; method < kNumMethods; ++method) {
    m->latency[method] =
        &s->latency->Add({{"model", model}, {"version", version}, {"method", kMethodNames[method]}},
                         LatencyBucketsUs());
    for (int code = 0; code < kNumStatusCodes; ++code) {
      m->requests[method][code] = &s->requests->Add({{"model", model},
                                                     {"version", version},
                                                     {"method", kMethodNames[method]},
                                                     {"code", kCodeNames[code]}});
    }
  }
  m->queue = &s->queue->Add({{"model", model}, {"version", version}}, LatencyBucketsUs());
  m->preprocess = &s->preprocess->Add({{"model", model}, {"version", version}}, LatencyBucketsUs());
  m->compute = &s->compute->Add({{"model", model}, {"version", version}}, LatencyBucketsUs());
  m->batch_size = &s->batch_size->Add({{"model", model}, {"version", version}}, BatchSizeBuckets());
  m->images = &s->images->Add({{"model", model}, {"version", version}});
  m->queue_depth = &s->queue_depth->Add({{"model", model}, {"version", version}});
  m->in_flight = &s->in_flight->Add({{"model", model}, {"version", version}});
  m->ready = &s->ready->Add({{"model", model}, {"version", version}});
  m->load_seconds = &s->load_seconds->Add({{"model", model}, {"version", version}});
  return m.get();
}

ReplicaMetrics* Metrics::ForReplica(const std::string& model, const std::string& version,
                                    int replica, const std::string& device) {
  State* s = g_state;
  if (s == nullptr) return nullptr;
  absl::MutexLock lock(&s->mu);
  std::unique_ptr<ReplicaMetrics>& m = s->replicas[{model, version, replica, device}];
  if (m != nullptr) return m.get();
  m = std::make_unique<ReplicaMetrics>();
  const prometheus::Labels labels = {{"model", model},
                                     {"version", version},
                                     {"replica", absl::StrCat(replica)},
                                     {"device", device}};
  m->batches = &s->replica_batches->Add(labels);
  m->images = &s->replica_images->Add(labels);
  m->graph_replays = &s->graph_replays->Add(labels);
  return m.get();
}

void RecordModelLoad(const std::string& model, bool ok) {
  State* s = g_state;
  if (s == nullptr) return;
  s->loads->Add({{"model", model}, {"result", ok ? "ok" : "failed"}}).Increment();
  s->last_load_ok->Add({{"model", model}}).Set(ok ? 1 : 0);
}

const char* MethodName(Method method) { return kMethodNames[static_cast<int>(method)]; }

void RecordRequest(ModelMetrics* m, Method method, grpc::StatusCode code, int64_t latency_us) {
  if (m == nullptr) return;
  const int c = static_cast<int>(code);
  m->requests[static_cast<int>(method)][c >= 0 && c < kNumStatusCodes ? c : 2]->Increment();
  m->latency[static_cast<int>(method)]->Observe(static_cast<double>(latency_us));
}

void RecordImage(ModelMetrics* m, int64_t queue_us, int64_t preprocess_us) {
  if (m == nullptr) return;
  m->queue->Observe(static_cast<double>(queue_us));
  m->preprocess->Observe(static_cast<double>(preprocess_us));
}

void RecordBatch(ModelMetrics* m, int batch_size, int64_t compute_us) {
  if (m == nullptr) return;
  m->batch_size->Observe(batch_size);
  m->compute->Observe(static_cast<double>(compute_us));
  m->images->Increment(batch_size);
}

void RecordReplicaBatch(ReplicaMetrics* m, int batch_size, uint64_t graph_replays) {
  if (m == nullptr) return;
  m->batches->Increment();
  m->images->Increment(batch_size);
  if (graph_replays > 0) m->graph_replays->Increment(static_cast<double>(graph_replays));
}

void EnableDeviceMetrics(ModelMetrics* m, const std::string& model, const std::string& version) {
  State* s = g_state;
  if (m == nullptr || s == nullptr) return;
  absl::MutexLock lock(&s->mu);
  if (m->device_compute == nullptr) {
    m->device_compute =
        &s->device_compute->Add({{"model", model}, {"version", version}}, LatencyBucketsUs());
  }
}

void RecordDeviceCompute(ModelMetrics* m, int64_t device_us) {
  if (m != nullptr && m->device_compute != nullptr) {
    m->device_compute->Observe(static_cast<double>(device_us));
  }
}

void SetDeviceMemory(const std::string& device, int64_t allocated, int64_t reserved) {
  State* s = g_state;
  if (s == nullptr) return;
  s->device_memory->Add({{"device", device}, {"kind", "allocated"}})
      .Set(static_cast<double>(allocated));
  s->device_memory->Add({{"device", device}, {"kind", "reserved"}})
      .Set(static_cast<double>(reserved));
}

void SetQueueDepth(ModelMetrics* m, int64_t images) {
  if (m != nullptr) m->queue_depth->Set(static_cast<double>(images));
}

void AddInFlight(ModelMetrics* m, int64_t delta) {
  if (m != nullptr) m->in_flight->Increment(static_cast<double>(delta));
}

void SetModelReady(ModelMetrics* m, bool ready, double load_seconds) {
  if (m == nullptr) return;
  m->ready->Set(ready ? 1 : 0);
  if (load_seconds >= 0) m->load_seconds->Set(load_seconds);
}

}  // namespace convnext::server

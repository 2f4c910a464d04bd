// The server's Prometheus metrics, defined once (metrics.cc: names, help, labels, buckets) and
// exposed in the Prometheus text format at GET /metrics on their own address (--metrics_port).
//
// The HTTP endpoint is a small responder of our own (metrics_http.h), not prometheus-cpp's
// Exposer: its civetweb server fails to start (mg_start returns null) in any process that links
// Debian's libtorch_cpu, which a five-line program reproduces.
// Handlers and model hosts only call the Record/Set functions below.
//
// Metrics are created per model when the model loads (ForModel), so that the request path does
// no label lookups and takes no lock: it bumps atomics inside prometheus-cpp's counters and
// histograms. Status-code counters are pre-created for every gRPC code. All functions are no-ops
// until Metrics::Start() has run (for example in unit tests and benchmarks with metrics off).
//
// Units are in the names: histograms of durations are in microseconds.
#ifndef CONVNEXT_SERVER_METRICS_H_
#define CONVNEXT_SERVER_METRICS_H_

#include <grpcpp/support/status.h>

#include <array>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
}  // namespace prometheus

namespace convnext::server {

// The inference and model-listing calls, of both protocols (ModelInfer: the Open Inference
// Protocol's).
enum class Method {
  kClassify = 0,
  kEmbed = 1,
  kListModels = 2,
  kGetModel = 3,
  kModelInfer = 4,
  kEmbedStream = 5
};
inline constexpr int kNumMethods = 6;
// The model label of calls that name no served model: never the requested name, so that hostile
// names cannot grow the metrics' label set.
inline constexpr char kUnknownModelLabel[] = "unknown";

// "Classify", "Embed", ...: the `method` label of the metrics and the access log.
const char* MethodName(Method method);
inline constexpr int kNumStatusCodes = 17;  // OK .. UNAUTHENTICATED.

// The metrics of one served model (or of "unknown" for calls naming no served model).
struct ModelMetrics {
  std::array<std::array<prometheus::Counter*, kNumStatusCodes>, kNumMethods> requests{};
  std::array<prometheus::Histogram*, kNumMethods> latency{};
  prometheus::Histogram* queue = nullptr;
  prometheus::Histogram* preprocess = nullptr;
  prometheus::Histogram* compute = nullptr;
  prometheus::Histogram* batch_size = nullptr;
  prometheus::Counter* images = nullptr;
  prometheus::Gauge* queue_depth = nullptr;
  prometheus::Gauge* in_flight = nullptr;
  prometheus::Gauge* ready = nullptr;
  prometheus::Gauge* load_seconds = nullptr;
  // CUDA models only (EnableDeviceMetrics): a batch's time on the GPU.
  prometheus::Histogram* device_compute = nullptr;
};

// The metrics of one replica of a model version (ModelConfig.devices): what it computed.
struct ReplicaMetrics {
  prometheus::Counter* batches = nullptr;
  prometheus::Counter* images = nullptr;
  prometheus::Counter* graph_replays = nullptr;  // Batches that replayed a CUDA graph.
};

class Metrics {
 public:
  struct BuildInfo {
    std::string version;
    std::string libtorch_version;
    std::string device;
  };

  // Starts the exposer on `bind_address` ("0.0.0.0:9090", "127.0.0.1:0") and makes the Record
  // functions live. Call once, from main, before models load.
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const std::string& bind_address,
                                                        const BuildInfo& build);
  ~Metrics();

  // The port the exposer listens on.
  int port() const;

  // The metrics of a model version (labels model and version; calls naming no served model use
  // kUnknownModelLabel and ""), created on first use. Never null while metrics run; null
  // otherwise. The label set is bounded by the versions ever loaded.
  static ModelMetrics* ForModel(const std::string& model, const std::string& version);
  // The metrics of replica `replica` (its index in ModelConfig.devices) of a model version, on
  // `device` (labels model, version, replica, device), created on first use. Null when metrics
  // are off.
  static ReplicaMetrics* ForReplica(const std::string& model, const std::string& version,
                                    int replica, const std::string& device);

 private:
  Metrics() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<class MetricsHttpServer> http_;
};

// A finished call: counted by code, latency observed.
void RecordRequest(ModelMetrics* m, Method method, grpc::StatusCode code, int64_t latency_us);
// One image: its queue and preprocessing times.
void RecordImage(ModelMetrics* m, int64_t queue_us, int64_t preprocess_us);
// One forward pass.
void RecordBatch(ModelMetrics* m, int batch_size, int64_t compute_us);
// One forward pass on a replica, and the CUDA graph replays it made since the last call.
void RecordReplicaBatch(ReplicaMetrics* m, int batch_size, uint64_t graph_replays);
// Makes the GPU metrics of a model on a CUDA device: its batches' device time. Call before the
// model serves.
void EnableDeviceMetrics(ModelMetrics* m, const std::string& model, const std::string& version);
// One batch's time on the GPU (CUDA events), after EnableDeviceMetrics.
void RecordDeviceCompute(ModelMetrics* m, int64_t device_us);
// The bytes the caching allocator holds on a CUDA device ("cuda:0"), allocated in tensors and
// reserved from the driver.
void SetDeviceMemory(const std::string& device, int64_t allocated, int64_t reserved);
void SetQueueDepth(ModelMetrics* m, int64_t images);
void AddInFlight(ModelMetrics* m, int64_t delta);
void SetModelReady(ModelMetrics* m, bool ready, double load_seconds);
// A load or reload of one of `model`'s versions after start-up.
void RecordModelLoad(const std::string& model, bool ok);

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_METRICS_H_

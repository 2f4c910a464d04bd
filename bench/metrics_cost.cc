// Benchmark (Google Benchmark): what recording metrics costs the request path, per call and per
// image, single-threaded and with 2 and 4 threads recording at once (contention). Not a test.
//
//   build/bin/metrics_cost_bench
#include <benchmark/benchmark.h>

#include "server/metrics.h"

namespace convnext::server {
namespace {

ModelMetrics* Model() {
  static ModelMetrics* m = [] {
    static std::unique_ptr<Metrics> metrics = *Metrics::Start("127.0.0.1:0", {"bench", "", "cpu"});
    return Metrics::ForModel("bench", "1");
  }();
  return m;
}

// What one single-image Classify call records: the call, its image, its share of a batch, and
// the gauges it moves.
void BM_RecordOneCall(benchmark::State& state) {
  ModelMetrics* m = Model();
  int64_t i = 0;
  for (auto _ : state) {
    AddInFlight(m, 1);
    SetQueueDepth(m, ++i % 64);
    RecordImage(m, 1200 + i % 5000, 900);
    RecordBatch(m, 8, 700000);
    AddInFlight(m, -1);
    SetQueueDepth(m, i % 64);
    RecordRequest(m, Method::kClassify, grpc::StatusCode::OK, 750000 + i % 100000);
  }
}
BENCHMARK(BM_RecordOneCall)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

}  // namespace
}  // namespace convnext::server

BENCHMARK_MAIN();

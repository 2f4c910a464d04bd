#include "client/load_generator.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace convnext::client {
namespace {

// The p-quantile (0 <= p <= 1) of `v`, nearest rank; 0 for no values.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

double PerSecond(int calls, double seconds) { return seconds > 0 ? calls / seconds : 0; }

double Round(double x, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(x * scale) / scale;
}

// What the worker threads share.
struct Shared {
  absl::Mutex mu;
  LoadReport report ABSL_GUARDED_BY(mu);
};

}  // namespace

absl::StatusOr<LoadReport> RunLoad(const ClientOptions& client_options,
                                   const std::vector<v1::ClassifyRequest>& requests,
                                   const LoadOptions& options) {
  if (requests.empty()) return absl::InvalidArgumentError("no requests to send");
  if (options.concurrency < 1) return absl::InvalidArgumentError("concurrency must be >= 1");
  if (options.requests < 0 || (options.requests > 0) == (options.duration > absl::ZeroDuration())) {
    return absl::InvalidArgumentError("set exactly one of requests and duration");
  }
  ClientOptions once = client_options;
  once.max_attempts = 1;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(once);
  if (!client.ok()) return client.status();

  Shared shared;
  std::atomic<int> next{0};
  const absl::Time start = absl::Now();
  const absl::Time end =
      options.duration > absl::ZeroDuration() ? start + options.duration : absl::InfiniteFuture();
  auto work = [&] {
    while (true) {
      const int k = next++;
      if ((options.requests > 0 && k >= options.requests) || absl::Now() >= end) return;
      if (options.rate_per_s > 0) {  // Open loop: call k starts at start + k / rate.
        const absl::Time at = start + absl::Seconds(k / options.rate_per_s);
        if (at >= end) return;
        absl::SleepFor(at - absl::Now());
      }
      const absl::Time t0 = absl::Now();
      absl::StatusOr<v1::ClassifyResponse> r = (*client)->Classify(requests[k % requests.size()]);
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
      absl::MutexLock lock(&shared.mu);
      LoadReport& report = shared.report;
      ++report.calls;
      ++report.codes[absl::StatusCodeToString(r.status().code())];
      if (r.ok()) {
        report.latency_ms.push_back(ms);
        report.queue_us.push_back(r->timings().queue_us());
        report.preprocess_us.push_back(r->timings().preprocess_us());
        report.compute_us.push_back(r->timings().compute_us());
      }
    }
  };
  std::vector<std::thread> threads;
  for (int c = 0; c < options.concurrency; ++c) threads.emplace_back(work);
  absl::Notification finished;
  std::thread progress([&] {
    if (!options.show_progress) return;
    while (!finished.WaitForNotificationWithTimeout(absl::Seconds(1))) {
      const double s = absl::ToDoubleSeconds(absl::Now() - start);
      int calls;
      {
        absl::MutexLock lock(&shared.mu);
        calls = shared.report.calls;
      }
      std::fprintf(stderr, "\r%6.1f s  %d calls  %.1f calls/s   ", s, calls, calls / s);
    }
    std::fprintf(stderr, "\n");
  });
  for (std::thread& t : threads) t.join();
  finished.Notify();
  progress.join();

  absl::MutexLock lock(&shared.mu);
  LoadReport report = std::move(shared.report);
  report.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  report.concurrency = options.concurrency;
  return report;
}

nlohmann::ordered_json ReportJson(const LoadReport& r) {
  const std::vector<double>& l = r.latency_ms;
  return {
      {"calls", r.calls},
      {"ok", l.size()},
      {"codes", r.codes},
      {"seconds", Round(r.seconds, 3)},
      {"calls_per_s", Round(PerSecond(r.calls, r.seconds), 3)},
      {"latency_ms",
       {{"p50", Round(Percentile(l, 0.5), 3)},
        {"p90", Round(Percentile(l, 0.9), 3)},
        {"p99", Round(Percentile(l, 0.99), 3)},
        {"max", Round(Percentile(l, 1.0), 3)}}},
      {"server_us_p50",
       {{"queue", Round(Percentile(r.queue_us, 0.5), 0)},
        {"preprocess", Round(Percentile(r.preprocess_us, 0.5), 0)},
        {"compute", Round(Percentile(r.compute_us, 0.5), 0)}}},
  };
}

std::string ReportText(const LoadReport& r) {
  std::vector<std::string> codes;
  for (const auto& [code, n] : r.codes) codes.push_back(absl::StrCat(code, ": ", n));
  const std::vector<double>& l = r.latency_ms;
  return absl::StrFormat(
      "calls: %d in %.2f s (%.2f calls/s, one image each), concurrency %d\n"
      "status codes: %s\n"
      "latency ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n"
      "server p50 us: queue %.0f  preprocess %.0f  compute %.0f\n",
      r.calls, r.seconds, PerSecond(r.calls, r.seconds), r.concurrency, absl::StrJoin(codes, ", "),
      Percentile(l, 0.5), Percentile(l, 0.9), Percentile(l, 0.99), Percentile(l, 1.0),
      Percentile(r.queue_us, 0.5), Percentile(r.preprocess_us, 0.5), Percentile(r.compute_us, 0.5));
}

}  // namespace convnext::client

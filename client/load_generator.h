// The load generator behind `convnext bench`: sends Classify calls from `concurrency` threads,
// closed loop (each thread sends its next call when the last returns) or open loop (call k starts
// at k / rate_per_s seconds, whatever the replies), until a number of calls or a duration is
// reached, and reports client-side latency and the server's own timings.
//
// Every call is tried once (ClientOptions::max_attempts is forced to 1): a benchmark counts
// errors by status code, it does not hide them behind retries.
#ifndef CONVNEXT_CLIENT_LOAD_GENERATOR_H_
#define CONVNEXT_CLIENT_LOAD_GENERATOR_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "convnext/client.h"
#include "nlohmann/json.hpp"

namespace convnext::client {

struct LoadOptions {
  // Threads, each with at most one call in flight.
  int concurrency = 8;
  // Stop after this many calls in all (0: no limit) ...
  int requests = 0;
  // ... or after this long (zero: no limit). Exactly one of the two must be set.
  absl::Duration duration = absl::ZeroDuration();
  // Target calls per second over all threads; 0 sends the next call as soon as a thread is free.
  double rate_per_s = 0;
  // Prints calls and calls/s on stderr once a second (for a terminal).
  bool show_progress = false;
};

struct LoadReport {
  int calls = 0;                     // Calls that returned, whatever their status.
  std::map<std::string, int> codes;  // Calls per status code name ("OK", "UNAVAILABLE"...).
  double seconds = 0;                // Wall time of the run.
  int concurrency = 0;               // LoadOptions::concurrency.
  // Per successful call: latency seen by the client, and the server's Timings.
  std::vector<double> latency_ms, queue_us, preprocess_us, compute_us;
};

// Sends `requests` (cycled, in order) to the server of `client_options`. INVALID_ARGUMENT for
// bad options or no requests; a failed call is counted in the report, not returned.
absl::StatusOr<LoadReport> RunLoad(const ClientOptions& client_options,
                                   const std::vector<v1::ClassifyRequest>& requests,
                                   const LoadOptions& options);

// The report as JSON: calls, ok, codes, seconds, calls_per_s, latency_ms {p50, p90, p99, max},
// server_us_p50 {queue, preprocess, compute}.
nlohmann::ordered_json ReportJson(const LoadReport& report);
// The report as a few lines of text for a terminal.
std::string ReportText(const LoadReport& report);

}  // namespace convnext::client

#endif  // CONVNEXT_CLIENT_LOAD_GENERATOR_H_

// Structured logs: one line per event on stderr, as space-separated key=value pairs (logfmt),
// which log shippers (Loki, Fluent Bit, ...) parse without configuration:
//   ts=2026-11-22T07:50:00.123456Z level=info event=request model=tiny method=Classify
//   request_id=42 status=OK latency_us=1234
// Values with spaces, quotes or control characters are quoted and escaped. Thread-safe: each
// line is written with one call.
#ifndef CONVNEXT_SERVER_LOG_H_
#define CONVNEXT_SERVER_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace convnext::server {

using LogField = std::pair<absl::string_view, std::string>;

void Log(absl::string_view level, absl::string_view event, std::initializer_list<LogField> fields);

// The same line as Log would write, without the timestamp (for tests).
std::string FormatLogFields(absl::string_view level, absl::string_view event,
                            std::initializer_list<LogField> fields);

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_LOG_H_

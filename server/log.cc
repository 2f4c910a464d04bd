#include "server/log.h"

#include <unistd.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace convnext::server {
namespace {

void Append(std::string* out, absl::string_view key, absl::string_view value) {
  bool plain = !value.empty();
  for (char c : value) {
    plain = plain && c > ' ' && c != '"' && c != '=' && c != '\\' && c < 0x7f;
  }
  absl::StrAppend(out, " ", key, "=");
  if (plain) {
    absl::StrAppend(out, value);
  } else {
    absl::StrAppend(out, "\"", absl::CHexEscape(value), "\"");
  }
}

}  // namespace

std::string FormatLogFields(absl::string_view level, absl::string_view event,
                            std::initializer_list<LogField> fields) {
  std::string line = absl::StrCat("level=", level, " event=", event);
  for (const auto& [key, value] : fields) Append(&line, key, value);
  return line;
}

void Log(absl::string_view level, absl::string_view event, std::initializer_list<LogField> fields) {
  std::string line = absl::StrCat(
      "ts=", absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone()), " ",
      FormatLogFields(level, event, fields), "\n");
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace convnext::server

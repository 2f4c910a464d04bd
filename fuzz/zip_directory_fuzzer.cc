// libFuzzer target: the zip directory reader must never crash or read outside the bytes it is
// given, whatever they are; it either lists entries that lie inside the file or returns an error.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "checkpoint/zip_directory.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string file(reinterpret_cast<const char*>(data), size);
  auto read_at = [&file](uint64_t offset, uint64_t n) -> absl::StatusOr<std::string> {
    if (offset > file.size()) return std::string();
    return file.substr(offset, std::min<uint64_t>(n, file.size() - offset));
  };
  auto dir = convnext::ReadZipDirectory(file.size(), read_at);
  if (dir.ok()) {
    for (const auto& [name, entry] : dir->entries) {
      if (entry.local_header_offset > file.size() ||
          entry.compressed_size > file.size() - entry.local_header_offset) {
        std::abort();  // An entry outside the file was accepted.
      }
    }
  }
  return 0;
}

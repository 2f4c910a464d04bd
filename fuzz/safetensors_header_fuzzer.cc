// libFuzzer target: the safetensors header parser must reject any malformed header with an error,
// never crash or read out of bounds. The input is treated as a whole file.
#include <cstddef>
#include <cstdint>

#include "checkpoint/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  (void)convnext::LooksLikeSafetensors(bytes);
  auto header = convnext::ParseSafetensorsHeader(bytes, size);
  if (header.ok()) {
    for (const auto& e : header->entries) {
      // Every accepted entry lies inside the file.
      if (header->data_offset + e.end > size) __builtin_trap();
    }
  }
  return 0;
}

// libFuzzer target: reading image dimensions from untrusted bytes (the decompression-bomb guard
// that runs before any decoder) must never crash or read out of bounds, and must report sane
// dimensions when it succeeds. That includes the JPEG's EXIF orientation (IFD0 of its APP1
// segment).
#include <cstddef>
#include <cstdint>

#include "image/image_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto header =
      convnext::ReadImageHeader(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (header.ok()) {
    // The contract: both dimensions >= 1 for a known format, both 0 for an unknown one.
    const bool known = header->format != convnext::ImageFormat::kUnknown;
    if (known ? (header->width < 1 || header->height < 1)
              : (header->width != 0 || header->height != 0)) {
      __builtin_trap();
    }
    // The EXIF orientation is read from JPEGs only; every other format reports 1.
    if (header->format != convnext::ImageFormat::kJpeg && header->exif_orientation != 1) {
      __builtin_trap();
    }
  }
  return 0;
}

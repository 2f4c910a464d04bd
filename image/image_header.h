// Reads an encoded image's format and dimensions from its header, without decoding it, so that a
// decompression bomb (a few hundred bytes declaring a 50000 x 50000 image) is refused before any
// pixel memory is allocated. Hand-written because OpenCV has no public API for it: cv::imdecode
// allocates the whole image before it reads a single pixel.
//
// Recognised: JPEG (SOFn frame header), PNG (IHDR), BMP, WebP (VP8, VP8L, VP8X), GIF, TIFF and
// BigTIFF (first directory), binary and ASCII PNM (P1-P6). Anything else is reported as
// ImageFormat::kUnknown and left to the decoder; the caller checks the decoded size instead.
//
// For JPEG the reader also walks the marker structure to the end-of-image marker, because libjpeg
// "decodes" a JPEG cut off in the middle of its scan data by filling the missing part with gray,
// where PIL refuses it; such data is reported as truncated. On the way it reads the EXIF
// orientation (TIFF tag 0x0112 in IFD0 of the APP1 "Exif" segment), so that the decoder knows
// whether the stored pixels must be turned before use (image/jpeg_decoder.h).
//
// Thread-safe (pure functions); never reads outside `encoded`.
#ifndef CONVNEXT_IMAGE_IMAGE_HEADER_H_
#define CONVNEXT_IMAGE_IMAGE_HEADER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace convnext {

enum class ImageFormat { kUnknown, kJpeg, kPng, kBmp, kWebp, kGif, kTiff, kPnm };

// "JPEG", "PNG", ...; "unknown" for kUnknown.
absl::string_view ImageFormatName(ImageFormat format);

struct ImageHeader {
  ImageFormat format = ImageFormat::kUnknown;
  // Dimensions in pixels as the header declares them (before any EXIF rotation); both >= 1 when
  // format is known, 0 when it is kUnknown.
  int64_t width = 0;
  int64_t height = 0;
  // JPEG only: the EXIF orientation as the file states it (1-8 in TIFF's numbering; 1, stored as
  // displayed, where the file has no EXIF orientation), or kUnreadOrientation where an EXIF
  // segment is there but not read with certainty (several of them, one after the scan data, a
  // directory that runs past the segment, the tag twice or not a single SHORT). Every other format:
  // 1 (not read).
  int exif_orientation = 1;
};

inline constexpr int kUnreadOrientation = 0;

// Returns the format and declared dimensions of `encoded`. A signature none of the readers knows
// gives format kUnknown (not an error). INVALID_ARGUMENT when the signature is recognised but the
// header is cut short or malformed, declares a zero dimension, or (JPEG) the data ends before the
// end of the image.
absl::StatusOr<ImageHeader> ReadImageHeader(absl::string_view encoded);

}  // namespace convnext

#endif  // CONVNEXT_IMAGE_IMAGE_HEADER_H_

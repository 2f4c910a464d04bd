// Decoding the common JPEG straight to RGB with libjpeg-turbo, the library OpenCV's cv::imdecode
// itself uses for JPEG, with the same settings (libjpeg's defaults: the accurate integer DCT and
// fancy upsampling), so that the pixels are the same, bit for bit, as OpenCV's decode turned from
// BGR to RGB. It is over twice as fast (a 500x375 photo: 0.58 against 1.53 ms on an AMX Xeon,
// `build/bin/preprocess_bench`), as it skips OpenCV's own work around libjpeg and our BGR-to-RGB
// pass.
//
// "Common" means: three-component YCbCr or RGB, or one-component grayscale (replicated to
// RGB, as OpenCV and PIL do), baseline or progressive, 8-bit, with no EXIF orientation to apply.
// Everything else (CMYK and YCCK, an EXIF orientation other than 1 or one not read with
// certainty, 12-bit or arithmetic-coded data, any error libjpeg reports) is left to the caller's
// general decoder (image/preprocess.cc: OpenCV), which then gives the answer it always gave.
// libjpeg's warnings (recoverable corruption) are not printed; they leave the image as OpenCV's
// decode of the same data would.
//
// Thread-safe (no state); never reads outside `jpeg`.
#ifndef CONVNEXT_IMAGE_JPEG_DECODER_H_
#define CONVNEXT_IMAGE_JPEG_DECODER_H_

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"
#include "image/image_header.h"
#include "image/preprocess.h"

namespace convnext {

// The RGB pixels of `jpeg`, whose header (`header`, from ReadImageHeader) has been read and whose
// size checked; std::nullopt where the general decoder must take it (above), or where the decoded
// image would exceed `max_pixels`.
std::optional<RgbImage> DecodeCommonJpeg(absl::string_view jpeg, const ImageHeader& header,
                                         int64_t max_pixels);

}  // namespace convnext

#endif  // CONVNEXT_IMAGE_JPEG_DECODER_H_

#include "image/jpeg_decoder.h"

// jpeglib.h needs size_t and FILE declared before it.
#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on

#include <csetjmp>
#include <new>

namespace convnext {
namespace {

// libjpeg reports a fatal error by calling error_exit, whose default ends the process: ours jumps
// back to the decode instead. Warnings (recoverable corruption) are neither printed nor fatal.
struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
};

void ErrorExit(j_common_ptr cinfo) {
  std::longjmp(reinterpret_cast<ErrorManager*>(cinfo->err)->jump, 1);
}

void OutputMessage(j_common_ptr) {}

// After the header: the pixels of a common JPEG into `out`; false where it is not one, is over
// `max_pixels`, or its buffer cannot be had. libjpeg's errors jump out of here to Decode's setjmp
// (nothing in this frame has a destructor).
bool ReadPixels(jpeg_decompress_struct& cinfo, int64_t max_pixels, RgbImage* out) {
  if (cinfo.data_precision != 8 ||
      (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_RGB &&
       cinfo.jpeg_color_space != JCS_GRAYSCALE)) {
    return false;
  }
  cinfo.out_color_space = JCS_RGB;
  jpeg_calc_output_dimensions(&cinfo);
  const int64_t width = cinfo.output_width, height = cinfo.output_height;
  if (width < 1 || height < 1 || width > max_pixels / height || cinfo.output_components != 3) {
    return false;
  }
  try {
    out->pixels.resize(static_cast<size_t>(width * height * 3));
  } catch (const std::bad_alloc&) {
    return false;  // The general decoder then reports it.
  }
  jpeg_start_decompress(&cinfo);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out->pixels.data() + static_cast<size_t>(cinfo.output_scanline) * width * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  out->width = static_cast<int>(width);
  out->height = static_cast<int>(height);
  return true;
}

// Decodes into `out`; false where libjpeg failed or the image is not a common one. Only plain
// data lives in this frame across setjmp (the vector is the caller's), as longjmp requires.
bool Decode(const unsigned char* data, size_t size, int64_t max_pixels, RgbImage* out) {
  jpeg_decompress_struct cinfo;
  ErrorManager errors;
  cinfo.err = jpeg_std_error(&errors.pub);
  errors.pub.error_exit = ErrorExit;
  errors.pub.output_message = OutputMessage;
  if (setjmp(errors.jump) != 0) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  const bool ok =
      jpeg_read_header(&cinfo, TRUE) == JPEG_HEADER_OK && ReadPixels(cinfo, max_pixels, out);
  jpeg_destroy_decompress(&cinfo);
  return ok;
}

}  // namespace

std::optional<RgbImage> DecodeCommonJpeg(absl::string_view jpeg, const ImageHeader& header,
                                         int64_t max_pixels) {
  if (header.format != ImageFormat::kJpeg || header.exif_orientation != 1) return std::nullopt;
  RgbImage image;
  if (!Decode(reinterpret_cast<const unsigned char*>(jpeg.data()), jpeg.size(), max_pixels,
              &image)) {
    return std::nullopt;
  }
  return image;
}

}  // namespace convnext

#include "model/preprocess.h"

#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace convnext {

absl::StatusOr<at::Tensor> DecodeAndTransform(absl::string_view encoded,
                                              const EvalTransform& transform) {
  if (transform.crop_size < 1 || transform.resize_shorter < transform.crop_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad transform: resize ", transform.resize_shorter, ", crop ", transform.crop_size));
  }
  cv::Mat bgr;
  try {
    const cv::Mat buf(1, static_cast<int>(encoded.size()), CV_8UC1,
                      const_cast<char*>(encoded.data()));
    bgr = cv::imdecode(buf, cv::IMREAD_COLOR);  // Applies EXIF orientation; always 3 channels.
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot decode image: ", e.what()));
  }
  if (bgr.empty()) {
    return absl::InvalidArgumentError("cannot decode image: not a format OpenCV reads");
  }

  // Resize the shorter side as torchvision's Resize(int) does.
  const int h = bgr.rows, w = bgr.cols;
  const int s = transform.resize_shorter;
  const int new_h = h <= w ? s : static_cast<int>(static_cast<int64_t>(s) * h / w);
  const int new_w = h <= w ? static_cast<int>(static_cast<int64_t>(s) * w / h) : s;
  cv::Mat resized;
  cv::resize(bgr, resized, cv::Size(new_w, new_h), 0, 0, cv::INTER_CUBIC);

  // Center crop as torchvision's CenterCrop: offsets rounded half to even, like Python's round().
  const int c = transform.crop_size;
  const int top = static_cast<int>(std::nearbyint((new_h - c) / 2.0));
  const int left = static_cast<int>(std::nearbyint((new_w - c) / 2.0));
  cv::Mat crop = resized(cv::Rect(left, top, c, c));

  at::Tensor out = at::empty({1, 3, c, c}, at::kFloat);
  float* dst = out.data_ptr<float>();
  const int64_t plane = static_cast<int64_t>(c) * c;
  float scale[3], shift[3];
  for (int ch = 0; ch < 3; ++ch) {
    scale[ch] = 1.0f / (255.0f * transform.std[ch]);
    shift[ch] = -transform.mean[ch] / transform.std[ch];
  }
  for (int y = 0; y < c; ++y) {
    const cv::Vec3b* row = crop.ptr<cv::Vec3b>(y);
    for (int x = 0; x < c; ++x) {
      for (int ch = 0; ch < 3; ++ch) {  // RGB plane ch comes from BGR channel 2 - ch.
        dst[ch * plane + y * c + x] = row[x][2 - ch] * scale[ch] + shift[ch];
      }
    }
  }
  return out;
}

absl::StatusOr<at::Tensor> LoadImageTensor(const std::string& path,
                                           const EvalTransform& transform) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open image '", path, "'"));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<at::Tensor> t = DecodeAndTransform(bytes, transform);
  if (!t.ok()) {
    return absl::Status(t.status().code(), absl::StrCat("'", path, "': ", t.status().message()));
  }
  return t;
}

}  // namespace convnext

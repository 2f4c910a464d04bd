// Benchmark (Google Benchmark): decoding and preprocessing one 500x375 JPEG on one core, as a
// preprocessing worker does it: decode (OpenCV, with EXIF orientation), the evaluation transform
// (shorter side to 256 with PIL-exact antialiased bicubic, center crop 224, normalise), and both.
// Not a test.
//
//   build/bin/preprocess_bench
//
// The JPEG is made at start from samples/chelsea.jpg (451x300), resized to 500x375 and encoded at
// quality 90, so that the figure is for the size the performance targets name.
#include "image/preprocess.h"

#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

namespace convnext {
namespace {

const std::string& Jpeg500x375() {
  static const std::string* jpeg = [] {
    cv::Mat image = cv::imread(CONVNEXT_SOURCE_DIR "/samples/chelsea.jpg", cv::IMREAD_COLOR);
    if (image.empty()) {
      std::fprintf(stderr, "cannot read samples/chelsea.jpg\n");
      std::exit(1);
    }
    cv::Mat resized;
    cv::resize(image, resized, cv::Size(500, 375), 0, 0, cv::INTER_AREA);
    std::vector<uint8_t> bytes;
    cv::imencode(".jpg", resized, bytes, {cv::IMWRITE_JPEG_QUALITY, 90});
    return new std::string(bytes.begin(), bytes.end());
  }();
  return *jpeg;
}

void BM_Decode(benchmark::State& state) {
  const PreprocessConfig config;
  for (auto _ : state) {
    absl::StatusOr<RgbImage> image = DecodeImage(Jpeg500x375(), config);
    if (!image.ok()) state.SkipWithError(image.status().ToString().c_str());
    benchmark::DoNotOptimize(image);
  }
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

void BM_Transform(benchmark::State& state) {
  const PreprocessConfig config;
  const RgbImage image = *DecodeImage(Jpeg500x375(), config);
  for (auto _ : state) {
    absl::StatusOr<at::Tensor> x = TransformImage(image, config);
    if (!x.ok()) state.SkipWithError(x.status().ToString().c_str());
    benchmark::DoNotOptimize(x);
  }
}
BENCHMARK(BM_Transform)->Unit(benchmark::kMillisecond);

void BM_DecodeAndTransform(benchmark::State& state) {
  const PreprocessConfig config;
  for (auto _ : state) {
    absl::StatusOr<at::Tensor> x = DecodeAndTransform(Jpeg500x375(), config);
    if (!x.ok()) state.SkipWithError(x.status().ToString().c_str());
    benchmark::DoNotOptimize(x);
  }
}
BENCHMARK(BM_DecodeAndTransform)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace convnext

int main(int argc, char** argv) {
  // One core: no OpenCV or LibTorch worker threads.
  cv::setNumThreads(1);
  at::set_num_threads(1);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

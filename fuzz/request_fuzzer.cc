// libFuzzer target: request handling on untrusted bytes, as a request arrives off the wire. The
// first byte picks the message (even: ClassifyRequest, odd: EmbedRequest); the rest is parsed as
// that message, and each of its first four images is turned into the model's input exactly as a
// preprocessing worker does (server/image_input.h: encoded bytes decoded by OpenCV, raw pixels,
// or a float32 tensor; the request's resize policy), with the pixel and byte limits lowered so
// that each input stays fast. Must never crash; an accepted image must be a finite
// [3, H, W] tensor within the limits. (The scalar field checks of the service, such as top_k and
// stages, are exercised by tests/server_e2e_test.py.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstddef>
#include <cstdint>

#include "convnext/v1/image_model.pb.h"
#include "server/image_input.h"

namespace {

const convnext::PreprocessConfig& Limits() {
  static const convnext::PreprocessConfig* config = [] {
    auto* c = new convnext::PreprocessConfig();
    c->max_pixels = 1 << 20;
    c->max_encoded_bytes = 1 << 20;
    return c;
  }();
  return *config;
}

void Prepare(const google::protobuf::RepeatedPtrField<convnext::v1::Image>& images,
             convnext::v1::ResizePolicy resize) {
  int n = 0;
  for (const convnext::v1::Image& image : images) {
    if (++n > 4) break;
    absl::StatusOr<convnext::server::PreparedImage> p =
        convnext::server::PrepareImage(image, Limits(), resize);
    if (!p.ok()) continue;
    const at::Tensor& x = p->input;
    if (x.dim() != 4 || x.size(0) != 1 || x.size(1) != 3 || x.size(2) < 1 || x.size(3) < 1 ||
        !x.isfinite().all().item<bool>() || p->width < 1 || p->height < 1 ||
        !(p->transform.scale_x > 0) || !(p->transform.scale_y > 0)) {
      __builtin_trap();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  if (data[0] % 2 == 0) {
    convnext::v1::ClassifyRequest request;
    if (!request.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
    Prepare(request.images(), convnext::v1::CLASSIFICATION);
  } else {
    convnext::v1::EmbedRequest request;
    if (!request.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
    Prepare(request.images(), request.resize());
  }
  return 0;
}

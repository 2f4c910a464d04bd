// libFuzzer target: the restricted unpickler must never crash, leak or run anything, whatever the
// bytes; it either builds a tree or returns an error.
#include <cstddef>
#include <cstdint>

#include "checkpoint/pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  convnext::pickle::Limits limits;
  limits.max_values = 100000;  // Keeps each run fast; the real default is larger.
  auto result = convnext::pickle::Unpickle(
      absl::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (result.ok()) {
    // Walk the top level the way the checkpoint reader does.
    const convnext::pickle::Value* root = (*result)->root();
    if (root != nullptr) (void)root->Find("model");
  }
  return 0;
}

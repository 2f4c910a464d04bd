// Reading and writing NumPy .npy files (format versions 1.0-3.0, C order, little-endian float16,
// float32, float64, int64, int32, uint8), for tools and tests that exchange tensors with NumPy.
// Hand-written: Debian ships no C++ library for the format, and it is a small one
// (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html).
#ifndef CONVNEXT_CHECKPOINT_NPY_H_
#define CONVNEXT_CHECKPOINT_NPY_H_

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace convnext {

// Reads a .npy file into a CPU tensor of the file's dtype.
absl::StatusOr<at::Tensor> ReadNpy(const std::string& path);

// Reads a .npy file of any numeric dtype and shape as float32 values, flattened in C order.
absl::StatusOr<std::vector<float>> ReadNpyAsFloats(const std::string& path);

// Writes a tensor (any device; float32/float64/float16/int64/int32/uint8) as .npy, C order.
absl::Status WriteNpy(const std::string& path, const at::Tensor& tensor);

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_NPY_H_

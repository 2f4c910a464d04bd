// Writes a convnext.v1.Tensor (as the server returns it: FP32 or FP16, little-endian, row-major)
// as a NumPy .npy file that numpy.load reads back with the same shape and dtype.
//
// 'descr' is '<f4' for FP32 (and DATA_TYPE_UNSPECIFIED, which means FP32) and '<f2' for FP16; the
// bytes before the data come from base/npy_format.h, the project's one .npy writer.
#ifndef CONVNEXT_CLIENT_NPY_WRITER_H_
#define CONVNEXT_CLIENT_NPY_WRITER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "convnext/v1/image_model.pb.h"

namespace convnext::client {

// The bytes before the data: magic, version, header length and the padded header dict.
// INVALID_ARGUMENT if the dtype is unknown, a dimension is negative or `tensor.data()` does not
// hold exactly product(shape) elements.
absl::StatusOr<std::string> NpyHeader(const v1::Tensor& tensor);

// Writes NpyHeader(tensor) followed by tensor.data() to `path`, replacing any file there.
// INVALID_ARGUMENT as NpyHeader; PERMISSION_DENIED if the file cannot be written.
absl::Status WriteNpy(const std::string& path, const v1::Tensor& tensor);

}  // namespace convnext::client

#endif  // CONVNEXT_CLIENT_NPY_WRITER_H_

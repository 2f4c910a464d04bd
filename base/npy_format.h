// The .npy file format, version 1.0 (numpy/lib/format.py, NEP 1), for writers: the one place that
// lays out the bytes before a .npy file's data. Used by checkpoint/npy.h (LibTorch tensors) and
// by the `convnext` CLI (API tensors), which share no tensor type.
//
//   bytes 0-5   magic "\x93NUMPY"
//   bytes 6-7   version 1, 0
//   bytes 8-9   HEADER_LEN, uint16 little-endian
//   then        HEADER_LEN bytes of ASCII: a Python dict literal
//                 {'descr': '<f4', 'fortran_order': False, 'shape': (16, 8, 8), }
//               padded with spaces and ended by '\n' so that the data starts at a multiple of
//               64 bytes (a 1-tuple is written "(128,)", a scalar's shape "()")
//   then        the elements, C order, in the dtype named by 'descr'
//
// Hand-written: no Debian package writes .npy from C++ without pulling in a tensor library.
#ifndef CONVNEXT_BASE_NPY_FORMAT_H_
#define CONVNEXT_BASE_NPY_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace convnext {

// The magic string that opens every .npy file.
inline constexpr absl::string_view kNpyMagic("\x93NUMPY", 6);

// The bytes before the data of an array of `descr` ("<f4", "<f2", "|u1", ...) and `shape`.
// INVALID_ARGUMENT for a negative dimension or a header too long for format 1.0.
absl::StatusOr<std::string> NpyHeader(absl::string_view descr, const std::vector<int64_t>& shape);

// Writes `header` then `data` to `path`, replacing any file there. PERMISSION_DENIED if the file
// cannot be written.
absl::Status WriteNpyFile(const std::string& path, absl::string_view header,
                          absl::string_view data);

}  // namespace convnext

#endif  // CONVNEXT_BASE_NPY_FORMAT_H_

// The central directory of a zip file (PKWARE APPNOTE 6.3, with ZIP64), read before anything is
// extracted, so that a checkpoint's records can be sized and refused before LibTorch's reader
// allocates them. PyTorchStreamReader (LibTorch 1.13) can only extract a whole record, and it
// allocates the record's declared uncompressed size first: a few kilobytes of deflated zeros or a
// forged size field would otherwise be gigabytes of memory.
//
// The directory is located as miniz (LibTorch's zip library) locates it: the last end-of-central-
// directory signature in the file's final 64 KiB + 22 bytes, and its ZIP64 locator when the
// 32-bit fields are saturated. Names must be unique, so that this reader and miniz cannot pick
// different entries for one name.
//
// Depends on neither LibTorch nor any file: the bytes come through a callback, so it can be fuzzed.
#ifndef CONVNEXT_CHECKPOINT_ZIP_DIRECTORY_H_
#define CONVNEXT_CHECKPOINT_ZIP_DIRECTORY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace convnext {

struct ZipEntry {
  uint16_t method = 0;  // 0 stored, 8 deflated, ...
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
};

struct ZipDirectory {
  std::map<std::string, ZipEntry> entries;  // By name.
  std::string first_name;                   // The name of the directory's first entry.
};

// Reads `n` bytes at `offset` of the file; fails (or returns fewer bytes) past its end.
using ReadAtFn = std::function<absl::StatusOr<std::string>(uint64_t offset, uint64_t n)>;

// The directory of the zip file of `file_size` bytes. INVALID_ARGUMENT for a missing or
// malformed directory, duplicated names, or entries that claim to lie outside the file.
absl::StatusOr<ZipDirectory> ReadZipDirectory(uint64_t file_size, const ReadAtFn& read_at);

// ReadZipDirectory over a file on disk.
absl::StatusOr<ZipDirectory> ReadZipDirectory(const std::string& path);

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_ZIP_DIRECTORY_H_

#include "checkpoint/zip_directory.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"

namespace convnext {
namespace {

constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kEnd64LocatorSignature = 0x07064b50;
constexpr uint32_t kEnd64Signature = 0x06064b50;
constexpr uint32_t kCentralSignature = 0x02014b50;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kEnd64LocatorSize = 20;
constexpr uint64_t kEnd64Size = 56;
constexpr uint64_t kCentralSize = 46;
constexpr uint64_t kMaxComment = 0xffff;
// A checkpoint's directory holds one entry per tensor storage (about 60 bytes each); this allows
// a million of them and keeps a forged size from making the reader allocate the whole file.
constexpr uint64_t kMaxDirectoryBytes = uint64_t{64} << 20;

uint64_t Le(absl::string_view s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed zip directory: ", what));
}

absl::StatusOr<std::string> ReadExactly(const ReadAtFn& read_at, uint64_t offset, uint64_t n) {
  ASSIGN_OR_RETURN(std::string bytes, read_at(offset, n));
  if (bytes.size() != n) {
    return Malformed(absl::StrCat("needs ", n, " bytes at offset ", offset, ", the file ends"));
  }
  return bytes;
}

struct DirectoryLocation {
  uint64_t entries = 0;
  uint64_t size = 0;
  uint64_t offset = 0;
};

absl::StatusOr<DirectoryLocation> LocateDirectory(uint64_t file_size, const ReadAtFn& read_at) {
  if (file_size < kEndSize) return Malformed("the file is shorter than an end record");
  const uint64_t tail_size = std::min(file_size, kEndSize + kMaxComment);
  const uint64_t tail_offset = file_size - tail_size;
  ASSIGN_OR_RETURN(std::string tail, ReadExactly(read_at, tail_offset, tail_size));
  // The last end-of-directory signature wins, as in miniz.
  size_t end = absl::string_view::npos;
  for (size_t i = tail.size() - kEndSize + 1; i-- > 0;) {
    if (Le(tail, i, 4) == kEndSignature) {
      end = i;
      break;
    }
  }
  if (end == absl::string_view::npos) return Malformed("no end-of-central-directory record");
  DirectoryLocation loc;
  loc.entries = Le(tail, end + 10, 2);
  loc.size = Le(tail, end + 12, 4);
  loc.offset = Le(tail, end + 16, 4);
  const uint64_t end_offset = tail_offset + end;
  if (end_offset >= kEnd64LocatorSize) {
    absl::StatusOr<std::string> locator =
        ReadExactly(read_at, end_offset - kEnd64LocatorSize, kEnd64LocatorSize);
    if (!locator.ok()) return locator.status();
    if (Le(*locator, 0, 4) == kEnd64LocatorSignature) {
      const uint64_t end64_offset = Le(*locator, 8, 8);
      if (end64_offset > file_size || file_size - end64_offset < kEnd64Size) {
        return Malformed("the ZIP64 end record lies outside the file");
      }
      ASSIGN_OR_RETURN(std::string end64, ReadExactly(read_at, end64_offset, kEnd64Size));
      if (Le(end64, 0, 4) != kEnd64Signature) return Malformed("bad ZIP64 end record signature");
      loc.entries = Le(end64, 32, 8);
      loc.size = Le(end64, 40, 8);
      loc.offset = Le(end64, 48, 8);
    }
  }
  if (loc.offset > file_size || loc.size > file_size - loc.offset) {
    return Malformed(absl::StrCat("the directory (", loc.size, " bytes at offset ", loc.offset,
                                  ") lies outside the file of ", file_size, " bytes"));
  }
  if (loc.size > kMaxDirectoryBytes) {
    return Malformed(absl::StrCat("the directory has ", loc.size, " bytes, more than the ",
                                  kMaxDirectoryBytes, " allowed"));
  }
  if (loc.entries > loc.size / kCentralSize) {
    return Malformed(absl::StrCat(loc.entries, " entries cannot fit in ", loc.size, " bytes"));
  }
  return loc;
}

// Applies a ZIP64 extended-information extra field to the saturated 32-bit fields of `entry`.
absl::Status ApplyZip64Extra(absl::string_view extra, bool need_uncompressed, bool need_compressed,
                             bool need_offset, ZipEntry* entry) {
  size_t at = 0;
  while (at + 4 <= extra.size()) {
    const uint64_t id = Le(extra, at, 2);
    const uint64_t size = Le(extra, at + 2, 2);
    if (size > extra.size() - at - 4) return Malformed("an extra field overruns its entry");
    if (id == 0x0001) {
      absl::string_view field = extra.substr(at + 4, size);
      size_t p = 0;
      auto take = [&](uint64_t* out) -> absl::Status {
        if (p + 8 > field.size()) return Malformed("a ZIP64 extra field is too short");
        *out = Le(field, p, 8);
        p += 8;
        return absl::OkStatus();
      };
      if (need_uncompressed) RETURN_IF_ERROR(take(&entry->uncompressed_size));
      if (need_compressed) RETURN_IF_ERROR(take(&entry->compressed_size));
      if (need_offset) RETURN_IF_ERROR(take(&entry->local_header_offset));
      return absl::OkStatus();
    }
    at += 4 + size;
  }
  if (need_uncompressed || need_compressed || need_offset) {
    return Malformed("saturated sizes without a ZIP64 extra field");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ZipDirectory> ReadZipDirectory(uint64_t file_size, const ReadAtFn& read_at) {
  ASSIGN_OR_RETURN(DirectoryLocation loc, LocateDirectory(file_size, read_at));
  ASSIGN_OR_RETURN(std::string dir, ReadExactly(read_at, loc.offset, loc.size));
  ZipDirectory result;
  size_t at = 0;
  for (uint64_t i = 0; i < loc.entries; ++i) {
    if (dir.size() - at < kCentralSize || Le(dir, at, 4) != kCentralSignature) {
      return Malformed(absl::StrCat("entry ", i, " has no central header"));
    }
    const uint64_t name_len = Le(dir, at + 28, 2);
    const uint64_t extra_len = Le(dir, at + 30, 2);
    const uint64_t comment_len = Le(dir, at + 32, 2);
    if (name_len + extra_len + comment_len > dir.size() - at - kCentralSize) {
      return Malformed(absl::StrCat("entry ", i, " overruns the directory"));
    }
    ZipEntry entry;
    entry.method = static_cast<uint16_t>(Le(dir, at + 10, 2));
    entry.compressed_size = Le(dir, at + 20, 4);
    entry.uncompressed_size = Le(dir, at + 24, 4);
    entry.local_header_offset = Le(dir, at + 42, 4);
    std::string name = dir.substr(at + kCentralSize, name_len);
    RETURN_IF_ERROR(
        ApplyZip64Extra(absl::string_view(dir).substr(at + kCentralSize + name_len, extra_len),
                        entry.uncompressed_size == 0xffffffff, entry.compressed_size == 0xffffffff,
                        entry.local_header_offset == 0xffffffff, &entry));
    if (entry.local_header_offset > file_size ||
        entry.compressed_size > file_size - entry.local_header_offset) {
      return Malformed(absl::StrCat("entry '", name, "' lies outside the file"));
    }
    if (i == 0) result.first_name = name;
    if (!result.entries.emplace(name, entry).second) {
      return Malformed(absl::StrCat("the name '", name, "' appears twice"));
    }
    at += kCentralSize + name_len + extra_len + comment_len;
  }
  return result;
}

absl::StatusOr<ZipDirectory> ReadZipDirectory(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open: ", std::strerror(errno)));
  in.seekg(0, std::ios::end);
  const auto size = static_cast<uint64_t>(in.tellg());
  auto read_at = [&in, size](uint64_t offset, uint64_t n) -> absl::StatusOr<std::string> {
    if (offset > size) return std::string();
    std::string bytes(std::min(n, size - offset), '\0');
    in.clear();
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    bytes.resize(static_cast<size_t>(in.gcount()));
    return bytes;
  };
  return ReadZipDirectory(size, read_at);
}

}  // namespace convnext

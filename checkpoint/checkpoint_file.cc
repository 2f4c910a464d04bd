#include "checkpoint/checkpoint_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/torch_zip.h"

namespace convnext {
namespace {

absl::StatusOr<StateDict> ReadAny(const std::string& path, std::string* format,
                                  uint64_t max_tensor_bytes) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return errno == ENOENT ? absl::NotFoundError("no such file")
                           : absl::PermissionDeniedError(std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError("is a directory, expected a checkpoint file");
  }
  if (st.st_size == 0) return absl::InvalidArgumentError("is an empty file (0 bytes)");

  char buf[16] = {};
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError("cannot be opened for reading");
  in.read(buf, sizeof(buf));
  const absl::string_view prefix(buf, static_cast<size_t>(in.gcount()));

  if (absl::StartsWith(prefix, absl::string_view("PK\x03\x04", 4))) {
    if (format != nullptr) *format = "torch.save zip";
    return ReadTorchZip(path, max_tensor_bytes);
  }
  if (LooksLikeSafetensors(prefix)) {
    if (format != nullptr) *format = "safetensors";
    return ReadSafetensors(path, max_tensor_bytes);
  }
  // A legacy torch.save file is a bare pickle: PROTO opcode 0x80 and a protocol number.
  if (prefix.size() >= 2 && static_cast<unsigned char>(prefix[0]) == 0x80 && prefix[1] >= 2 &&
      prefix[1] <= 5) {
    return absl::InvalidArgumentError(
        "is a legacy (pre-1.6, non-zip) torch.save file, which is not supported; re-save it "
        "with torch.save(obj, path) from PyTorch >= 1.6, or as safetensors");
  }
  return absl::InvalidArgumentError(
      "is not a checkpoint: neither a safetensors file nor a PyTorch zip file");
}

}  // namespace

absl::Status AnnotateCheckpointError(const std::string& path, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("checkpoint '", path, "': ", status.message()));
}

absl::Status CheckTensorBytes(uint64_t bytes, uint64_t max_bytes) {
  if (bytes <= max_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("its tensors hold ", bytes, " bytes, more than the limit of ", max_bytes,
                   " bytes for one checkpoint (max_checkpoint_bytes); nothing was read"));
}

absl::StatusOr<StateDict> ReadCheckpointFile(const std::string& path, std::string* format,
                                             uint64_t max_tensor_bytes) {
  absl::StatusOr<StateDict> result = ReadAny(path, format, max_tensor_bytes);
  if (!result.ok()) return AnnotateCheckpointError(path, result.status());
  return result;
}

}  // namespace convnext

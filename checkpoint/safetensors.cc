#include "checkpoint/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/safetensors_header.h"

namespace convnext {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; big-endian hosts are not supported");

// Headers larger than this are rejected before allocation (the reference implementation's limit).
struct DtypeInfo {
  const char* name;
  c10::ScalarType type;
  uint64_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", c10::ScalarType::Double, 8}, {"F32", c10::ScalarType::Float, 4},
    {"F16", c10::ScalarType::Half, 2},   {"BF16", c10::ScalarType::BFloat16, 2},
    {"I64", c10::ScalarType::Long, 8},   {"I32", c10::ScalarType::Int, 4},
    {"I16", c10::ScalarType::Short, 2},  {"I8", c10::ScalarType::Char, 1},
    {"U8", c10::ScalarType::Byte, 1},    {"BOOL", c10::ScalarType::Bool, 1},
};

const DtypeInfo* FindDtype(absl::string_view name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo* FindDtype(c10::ScalarType type) {
  for (const DtypeInfo& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

// An mmap of a whole file, unmapped on destruction.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return absl::NotFoundError(absl::StrCat("cannot open: ", std::strerror(errno)));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot stat: ", std::strerror(errno)));
    }
    auto file = std::unique_ptr<MappedFile>(new MappedFile());
    file->size_ = static_cast<uint64_t>(st.st_size);
    if (file->size_ > 0) {
      void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        return absl::InternalError(absl::StrCat("cannot mmap: ", std::strerror(errno)));
      }
      file->data_ = static_cast<const char*>(p);
    }
    ::close(fd);
    return file;
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<char*>(data_), size_);
  }
  const char* data() const { return data_; }
  uint64_t size() const { return size_; }

  // Tells the kernel the pages of [begin, end) will not be read again (lowers peak RSS).
  void Release(uint64_t begin, uint64_t end) const {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t first = (begin + page - 1) / page * page;
    const uint64_t last = end / page * page;
    if (last > first) {
      ::madvise(const_cast<char*>(data_) + first, last - first, MADV_DONTNEED);
    }
  }

 private:
  MappedFile() = default;
  const char* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace

absl::StatusOr<StateDict> ReadSafetensors(const std::string& path, uint64_t max_tensor_bytes) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  absl::string_view bytes(file->data(), file->size());
  ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensorsHeader(bytes, file->size()));
  uint64_t total = 0;  // Cannot overflow: the ranges lie inside the file and do not overlap.
  for (const SafetensorsEntry& e : header.entries) total += e.end - e.begin;
  RETURN_IF_ERROR(CheckTensorBytes(total, max_tensor_bytes));
  StateDict tensors;
  try {
    for (const SafetensorsEntry& e : header.entries) {
      const DtypeInfo* dinfo = FindDtype(e.dtype);
      const uint64_t begin = header.data_offset + e.begin;
      at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(dinfo->type));
      if (e.end > e.begin) std::memcpy(t.data_ptr(), file->data() + begin, e.end - e.begin);
      file->Release(begin, header.data_offset + e.end);
      tensors.emplace(e.name, std::move(t));
    }
  } catch (const std::exception& ex) {
    return absl::ResourceExhaustedError(absl::StrCat("allocating tensors: ", ex.what()));
  }
  return tensors;
}

absl::Status WriteSafetensors(const std::string& path, const StateDict& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const DtypeInfo* dinfo = FindDtype(tensor.scalar_type());
    if (dinfo == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has unsupported dtype ",
                                                     c10::toString(tensor.scalar_type())));
    }
    at::Tensor t = tensor.cpu().contiguous();
    const uint64_t bytes = t.numel() * dinfo->size;
    header[name] = {{"dtype", dinfo->name},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // Align the data section to 8 bytes.
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), sizeof(len));
  out.write(text.data(), text.size());
  for (const at::Tensor& t : data) {
    out.write(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace convnext

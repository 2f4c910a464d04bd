#include "checkpoint/torch_zip.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/pickle.h"
#include "checkpoint/zip_directory.h"

namespace convnext {
namespace {

using pickle::Value;

absl::StatusOr<c10::ScalarType> StorageDtype(const std::string& type) {
  static const std::pair<const char*, c10::ScalarType> kTypes[] = {
      {"FloatStorage", c10::ScalarType::Float}, {"DoubleStorage", c10::ScalarType::Double},
      {"HalfStorage", c10::ScalarType::Half},   {"BFloat16Storage", c10::ScalarType::BFloat16},
      {"LongStorage", c10::ScalarType::Long},   {"IntStorage", c10::ScalarType::Int},
      {"ShortStorage", c10::ScalarType::Short}, {"CharStorage", c10::ScalarType::Char},
      {"ByteStorage", c10::ScalarType::Byte},   {"BoolStorage", c10::ScalarType::Bool},
  };
  for (const auto& [name, dtype] : kTypes) {
    if (type == name) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported storage type torch.", type));
}

bool HoldsTensors(const Value* v) {
  if (v == nullptr || v->kind != Value::Kind::kDict) return false;
  for (const auto& [key, value] : v->entries) {
    if (value->kind == Value::Kind::kTensor) return true;
  }
  return false;
}

absl::StatusOr<const Value*> FindStateDict(const Value* root) {
  if (HoldsTensors(root)) return root;
  if (root->kind == Value::Kind::kDict) {
    for (const char* key : {"model", "state_dict", "model_state_dict", "module"}) {
      if (HoldsTensors(root->Find(key))) return root->Find(key);
    }
    std::vector<std::string> keys;
    for (const auto& [key, value] : root->entries) {
      if (key->kind == Value::Kind::kString) keys.push_back(absl::StrCat("'", key->text, "'"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("holds no state dict: no tensors at the top level nor under 'model', "
                     "'state_dict', 'model_state_dict' or 'module' (top-level keys: ",
                     absl::StrJoin(keys, ", "), ")"));
  }
  return absl::InvalidArgumentError("holds no state dict: the pickled object is not a dict");
}

// Loads storages on first use; each is read once even if several tensors view it.
class StorageLoader {
 public:
  explicit StorageLoader(caffe2::serialize::PyTorchStreamReader* reader) : reader_(reader) {}

  absl::StatusOr<at::Tensor> Tensor(const std::string& name, const pickle::TensorRef& ref) {
    ASSIGN_OR_RETURN(c10::ScalarType dtype, StorageDtype(ref.storage.type));
    auto it = storages_.find(ref.storage.key);
    if (it == storages_.end()) {
      // Its presence and size were checked from the zip directory (RecordSizes) beforehand.
      const std::string record = "data/" + ref.storage.key;
      auto [data, size] = reader_->getRecord(record);
      const int64_t elem = c10::elementSize(dtype);
      if (size / elem < static_cast<size_t>(ref.storage.numel)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", name, ": storage ", record, " has ", size, " bytes, fewer than the ",
            ref.storage.numel, " elements of ", c10::toString(dtype), " it declares"));
      }
      auto owner = std::make_shared<at::DataPtr>(std::move(data));
      at::Tensor flat = at::from_blob(
          owner->get(), {ref.storage.numel}, [owner](void*) {}, at::TensorOptions().dtype(dtype));
      it = storages_.emplace(ref.storage.key, std::move(flat)).first;
    }
    const at::Tensor& flat = it->second;
    // Bounds: the furthest element the view reaches must lie inside the storage.
    int64_t last = ref.offset;
    bool empty = false;
    for (size_t d = 0; d < ref.size.size(); ++d) {
      if (ref.size[d] == 0) empty = true;
      if (ref.size[d] > 0 && ref.stride[d] > 0) {
        if (ref.size[d] - 1 > (INT64_MAX - last) / ref.stride[d]) {
          return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": absurd shape"));
        }
        last += (ref.size[d] - 1) * ref.stride[d];
      }
    }
    // A view may select from its storage but never multiply it: stride-0 (broadcast) dimensions
    // or more elements than the storage holds would turn a few bytes of file into a huge tensor
    // when it is materialised.
    int64_t elements = 1;
    for (size_t d = 0; d < ref.size.size() && !empty; ++d) {
      if (ref.size[d] > 1 && ref.stride[d] == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", name, ": its view repeats its storage (stride 0 in dimension ", d, ")"));
      }
      if (ref.size[d] > 0 && elements > INT64_MAX / ref.size[d]) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": absurd shape"));
      }
      elements *= ref.size[d];
    }
    if (!empty && elements > flat.numel()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": its view has ", elements,
                                                     " elements, more than the ", flat.numel(),
                                                     " of its storage"));
    }
    if (!empty && last >= flat.numel()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": its view reaches element ",
                                                     last, " of a storage of ", flat.numel()));
    }
    if (empty) return at::empty(ref.size, at::TensorOptions().dtype(dtype));
    return flat.as_strided(ref.size, ref.stride, ref.offset);
  }

 private:
  caffe2::serialize::PyTorchStreamReader* reader_;
  std::map<std::string, at::Tensor> storages_;
};

// The sizes of a torch.save archive's records, from its zip directory. Records live under one
// top-level folder, named by the first entry, as PyTorchStreamReader finds them.
class RecordSizes {
 public:
  static absl::StatusOr<RecordSizes> Create(ZipDirectory dir) {
    const size_t slash = dir.first_name.find('/');
    if (slash == std::string::npos) {
      return absl::InvalidArgumentError(
          "is a zip file but not a torch.save checkpoint (its records are not in a folder)");
    }
    RecordSizes sizes;
    sizes.prefix_ = dir.first_name.substr(0, slash + 1);
    sizes.dir_ = std::move(dir);
    return sizes;
  }

  // The bytes that reading record `name` allocates: its declared uncompressed size, which miniz
  // allocates before inflating (and checks afterwards). For a stored record (torch.save stores
  // every record) it lies inside the file; a deflated one can claim anything, so it is what the
  // caller's caps must be checked against.
  absl::StatusOr<uint64_t> Size(const std::string& name) const {
    auto it = dir_.entries.find(prefix_ + name);
    if (it == dir_.entries.end()) {
      return absl::InvalidArgumentError(absl::StrCat("record ", name, " is missing"));
    }
    return it->second.uncompressed_size;
  }

 private:
  RecordSizes() = default;
  std::string prefix_;
  ZipDirectory dir_;
};

}  // namespace

absl::StatusOr<StateDict> ReadTorchZip(const std::string& path, uint64_t max_tensor_bytes) {
  // Every record is sized from the directory before LibTorch's reader allocates it.
  absl::StatusOr<ZipDirectory> dir = ReadZipDirectory(path);
  if (!dir.ok()) {
    return absl::Status(dir.status().code(), absl::StrCat("is a damaged or truncated zip file: ",
                                                          dir.status().message()));
  }
  ASSIGN_OR_RETURN(RecordSizes sizes, RecordSizes::Create(*std::move(dir)));
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (!reader.hasRecord("data.pkl")) {
      return absl::InvalidArgumentError(
          "is a zip file but not a torch.save checkpoint (no data.pkl)");
    }
    const pickle::Limits limits;
    ASSIGN_OR_RETURN(uint64_t pkl_bytes, sizes.Size("data.pkl"));
    if (pkl_bytes > limits.max_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("data.pkl has ", pkl_bytes,
                                                       " bytes, more than the limit of ",
                                                       limits.max_bytes, " for the pickle"));
    }
    auto [pkl, pkl_size] = reader.getRecord("data.pkl");
    absl::StatusOr<std::unique_ptr<pickle::Unpickled>> unpickled =
        pickle::Unpickle(absl::string_view(static_cast<const char*>(pkl.get()), pkl_size), limits);
    if (!unpickled.ok()) {
      return absl::Status(unpickled.status().code(),
                          absl::StrCat("data.pkl: ", unpickled.status().message()));
    }
    ASSIGN_OR_RETURN(const Value* sd, FindStateDict((*unpickled)->root()));
    // What the state dict's storages hold in all, before any of them is read.
    std::set<std::string> keys;
    uint64_t total = 0;
    for (const auto& [key, value] : sd->entries) {
      if (key->kind != Value::Kind::kString || value->kind != Value::Kind::kTensor) continue;
      const std::string& storage = value->tensor.storage.key;
      if (!keys.insert(storage).second) continue;
      absl::StatusOr<uint64_t> bytes = sizes.Size("data/" + storage);
      if (!bytes.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", key->text, ": ", bytes.status().message()));
      }
      total += *bytes;  // Cannot overflow: each record lies inside the file.
    }
    RETURN_IF_ERROR(CheckTensorBytes(total, max_tensor_bytes));
    StorageLoader storages(&reader);
    StateDict tensors;
    for (const auto& [key, value] : sd->entries) {
      if (key->kind != Value::Kind::kString || value->kind != Value::Kind::kTensor) continue;
      ASSIGN_OR_RETURN(at::Tensor t, storages.Tensor(key->text, value->tensor));
      tensors[key->text] = std::move(t);
    }
    return tensors;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("is a damaged or truncated zip file: ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory while reading its tensors");
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot be read as a zip file: ", e.what()));
  }
}

}  // namespace convnext

#include "checkpoint/torch_zip.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/pickle.h"

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
      const std::string record = "data/" + ref.storage.key;
      if (!reader_->hasRecord(record)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", name, ": storage record ", record, " is missing"));
      }
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

}  // namespace

absl::StatusOr<StateDict> ReadTorchZip(const std::string& path) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (!reader.hasRecord("data.pkl")) {
      return absl::InvalidArgumentError(
          "is a zip file but not a torch.save checkpoint (no data.pkl)");
    }
    auto [pkl, pkl_size] = reader.getRecord("data.pkl");
    absl::StatusOr<std::unique_ptr<pickle::Unpickled>> unpickled =
        pickle::Unpickle(absl::string_view(static_cast<const char*>(pkl.get()), pkl_size));
    if (!unpickled.ok()) {
      return absl::Status(unpickled.status().code(),
                          absl::StrCat("data.pkl: ", unpickled.status().message()));
    }
    ASSIGN_OR_RETURN(const Value* sd, FindStateDict((*unpickled)->root()));
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
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot be read as a zip file: ", e.what()));
  }
}

}  // namespace convnext

// A restricted unpickler for PyTorch checkpoints (the data.pkl inside a torch.save zip file).
// Hand-written because LibTorch 1.13's torch::pickle_load cannot read a Python state_dict
// (it rejects OrderedDict's _metadata and SETITEM), and Debian ships no other C++ unpickler.
//
// It interprets the pickle opcodes of protocols 2-5 that checkpoints use and builds an inert
// tree of values. It NEVER imports or calls anything: a GLOBAL is only a name. The few globals
// checkpoints need are given meaning (collections.OrderedDict, torch._utils._rebuild_tensor_v2
// and friends, the torch.*Storage types behind persistent ids); any other call becomes an inert
// kObject placeholder (an argparse.Namespace under 'args', optimizer state, numpy scalars), and a
// pickle that names a global from a module that can run code (os, posix, subprocess, builtins,
// ...) is refused outright, since no checkpoint needs one.
//
// Depends on neither LibTorch nor the zip container, so it can be fuzzed on its own; tensors
// come out as TensorRef descriptions that torch_zip.h turns into at::Tensors.
#ifndef CONVNEXT_CHECKPOINT_PICKLE_H_
#define CONVNEXT_CHECKPOINT_PICKLE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace convnext::pickle {

// A storage named by a persistent id: ('storage', torch.FloatStorage, '0', 'cpu', numel).
struct StorageRef {
  std::string type;      // "FloatStorage", "HalfStorage", "BFloat16Storage", ...
  std::string key;       // The record holding the bytes: data/<key> in the zip.
  std::string location;  // "cpu", "cuda:0": informational, all storages are read to the CPU.
  int64_t numel = 0;     // Elements of `type` in the storage.
};

// A tensor view of a storage: torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...).
struct TensorRef {
  StorageRef storage;
  int64_t offset = 0;  // In elements.
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
};

struct Value {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kBytes,
    kTuple,
    kList,
    kSet,
    kDict,
    kGlobal,   // A module.name reference (never resolved).
    kObject,   // An inert placeholder for a call or instance of anything unknown.
    kStorage,  // A persistent id naming a storage.
    kTensor,
  };
  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;                 // kString, kBytes; kGlobal/kObject: "module.name".
  std::vector<const Value*> items;  // kTuple, kList, kSet; kObject: the call's arguments.
  std::vector<std::pair<const Value*, const Value*>> entries;  // kDict, in insertion order.
  StorageRef storage;                                          // kStorage.
  TensorRef tensor;                                            // kTensor.

  // The value stored under string key `key` in a kDict, or nullptr.
  const Value* Find(absl::string_view key) const;
};

// The result of unpickling: owns every value (the tree may share nodes or even contain cycles,
// which a malicious pickle can make, so ownership is not expressed through the tree).
class Unpickled {
 public:
  const Value* root() const { return root_; }

 private:
  friend class Unpickler;
  std::vector<std::unique_ptr<Value>> arena_;
  const Value* root_ = nullptr;
};

struct Limits {
  // Values created at most (bounds memory for hostile input).
  size_t max_values = 10'000'000;
  // Memory the unpickled tree may take at most, counting values, strings and copied item lists.
  // A checkpoint's data.pkl takes a few hundred bytes per tensor: megabytes at most.
  size_t max_bytes = size_t{256} << 20;
  // Dimensions of a tensor at most.
  size_t max_dims = 16;
};

// Unpickles `data`. INVALID_ARGUMENT for malformed input, unsupported opcodes, exceeded value or
// dimension limits or a refused global; RESOURCE_EXHAUSTED past max_bytes; the opcode offset is
// in the message.
absl::StatusOr<std::unique_ptr<Unpickled>> Unpickle(absl::string_view data,
                                                    const Limits& limits = Limits());

}  // namespace convnext::pickle

#endif  // CONVNEXT_CHECKPOINT_PICKLE_H_

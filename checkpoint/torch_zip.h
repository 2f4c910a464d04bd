// Reads the tensors of a PyTorch checkpoint saved by torch.save (PyTorch >= 1.6 zip format:
// .pth, .pt, .bin): the zip directory through zip_directory.h (every record is sized before it is
// read), the records through LibTorch's caffe2::serialize::PyTorchStreamReader,
// data.pkl through our restricted unpickler (pickle.h), and the storages from data/<key>.
//
// The state dict is found the way checkpoints are laid out: the top-level dict itself if it
// holds tensors, else its 'model', 'state_dict', 'model_state_dict' or 'module' entry (the official
// FAIR checkpoints are {'model': state_dict, 'optimizer': ..., 'epoch': ..., 'args': Namespace};
// mmdet/mmseg ones {'meta': ..., 'state_dict': ...}). Entries that are not tensors (inert
// placeholders, numbers) are skipped. Nothing in the file is ever executed.
#ifndef CONVNEXT_CHECKPOINT_TORCH_ZIP_H_
#define CONVNEXT_CHECKPOINT_TORCH_ZIP_H_

#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/state_dict.h"

namespace convnext {

// Reads every tensor of the state dict in the torch.save zip file at `path` (CPU tensors in the
// file's dtypes). INVALID_ARGUMENT for a damaged zip, a malformed or refused pickle, or a file
// with no state dict; RESOURCE_EXHAUSTED, before any storage is read, if the storages the state
// dict uses hold more than `max_tensor_bytes` in all (counting each record's declared size, which
// for a deflated record is not bounded by the file's), or data.pkl or its tree more than the
// unpickler's byte limit.
absl::StatusOr<StateDict> ReadTorchZip(const std::string& path,
                                       uint64_t max_tensor_bytes = kDefaultMaxCheckpointBytes);

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_TORCH_ZIP_H_

// Reads the tensors of a PyTorch checkpoint saved by torch.save (PyTorch >= 1.6 zip format:
// .pth, .pt, .bin): the zip container through LibTorch's caffe2::serialize::PyTorchStreamReader,
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
// with no state dict.
absl::StatusOr<StateDict> ReadTorchZip(const std::string& path);

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_TORCH_ZIP_H_

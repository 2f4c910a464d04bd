// The oneDNN fast path's interface in a build without it (CONVNEXT_ONEDNN=OFF: the LibTorch 2.x
// builds, whose own oneDNN is not mixed with Debian's). Nothing here computes: a stage cannot be
// created, so ConvNeXt never selects the fast path (ConvNeXt::Create checks kHaveOneDnnFastPath
// first) and every model runs the ATen path; bfloat16 blocks are refused as on a CPU without
// native bfloat16.
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "model/onednn_stage.h"

namespace convnext {

struct OneDnnStage::Impl {};

std::string OneDnnIsaName() { return "none (built without the oneDNN fast path)"; }

bool CpuHasNativeBf16() { return false; }

bool CpuHasAmx() { return false; }

OneDnnStage::OneDnnStage(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OneDnnStage::~OneDnnStage() = default;

absl::StatusOr<std::unique_ptr<OneDnnStage>> OneDnnStage::Create(std::vector<BlockWeights>, double,
                                                                 BlockPrecision, bool) {
  return absl::FailedPreconditionError(
      "this build has no oneDNN CPU fast path (CONVNEXT_ONEDNN=OFF)");
}

BlockPrecision OneDnnStage::precision() const { return BlockPrecision::kFloat32; }

absl::Status OneDnnStage::Prepare(int64_t, int64_t, int64_t) const {
  return absl::FailedPreconditionError("no oneDNN CPU fast path in this build");
}

absl::Status OneDnnStage::Run(at::Tensor&, const at::Tensor&) const {
  return absl::FailedPreconditionError("no oneDNN CPU fast path in this build");
}

struct OneDnnPatchConv::Impl {};

OneDnnPatchConv::OneDnnPatchConv(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OneDnnPatchConv::~OneDnnPatchConv() = default;

absl::StatusOr<std::unique_ptr<OneDnnPatchConv>> OneDnnPatchConv::Create(const at::Tensor&,
                                                                         const at::Tensor&,
                                                                         BlockPrecision) {
  return absl::FailedPreconditionError(
      "this build has no oneDNN CPU fast path (CONVNEXT_ONEDNN=OFF)");
}

absl::StatusOr<at::Tensor> OneDnnPatchConv::Run(const at::Tensor&, bool) const {
  return absl::FailedPreconditionError("no oneDNN CPU fast path in this build");
}

absl::Status OneDnnPatchConv::Prepare(int64_t, int64_t, int64_t) const {
  return absl::FailedPreconditionError("no oneDNN CPU fast path in this build");
}

}  // namespace convnext

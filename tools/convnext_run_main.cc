// convnext-run: loads a checkpoint and runs the model once, in-process, on one input; writes the
// logits (or, with --features, the embedding and the four stage outputs) as .npy files. For
// checking a checkpoint without a server.
//
//   convnext-run --checkpoint ckpt.safetensors [--variant convnext_tiny]
//                (--input x.npy | IMAGE) [--output out.npy] [--features] [--bf16]
//
// Exit codes: 0 success, 1 the checkpoint, input or model failed (one line on stderr), 2 usage.
#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"
#include "checkpoint/npy.h"
#include "image/preprocess.h"
#include "model/load_model.h"
#include "model/process_tuning.h"

ABSL_FLAG(std::string, checkpoint, "",
          "Checkpoint file: safetensors or torch.save zip (.pth/.pt/.bin), any layout.");
ABSL_FLAG(std::string, variant, "",
          "Named variant the checkpoint must match (convnext_tiny ... convnext_xlarge); empty "
          "infers the architecture from the tensor shapes.");
ABSL_FLAG(std::string, input, "",
          "A preprocessed float NCHW tensor as .npy. Alternatively give an image file as the "
          "positional argument: it gets the ImageNet eval transform (shorter side 256 bicubic, "
          "center crop 224, ImageNet mean/std).");
ABSL_FLAG(std::string, output, "out.npy",
          "Where the logits go. With --features: <output without .npy>.embedding.npy and "
          ".stage1.npy ... .stage4.npy.");
ABSL_FLAG(bool, features, false, "Write the pooled embedding and the four stage outputs.");
ABSL_FLAG(int, threads, 0, "Intra-op threads; 0 = one per core.");
ABSL_FLAG(std::string, device, "cpu", "LibTorch device: cpu, cuda, cuda:1 (only cpu is tested).");
ABSL_FLAG(bool, bf16, false,
          "Compute the blocks in bfloat16 on the CPU fast path (needs a CPU with native "
          "bfloat16: AVX512-BF16 or AMX-BF16); outputs stay float32.");
ABSL_FLAG(uint64_t, max_checkpoint_bytes, convnext::kDefaultMaxCheckpointBytes,
          "The most bytes the checkpoint's tensors may hold, checked before any is read.");

namespace convnext {
namespace {

absl::Status Run(const std::vector<char*>& positional) {
  LoadOptions load;
  load.path = absl::GetFlag(FLAGS_checkpoint);
  load.variant = absl::GetFlag(FLAGS_variant);
  load.max_checkpoint_bytes = absl::GetFlag(FLAGS_max_checkpoint_bytes);
  int threads = absl::GetFlag(FLAGS_threads);
  SetIntraOpThreads(threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
  ASSIGN_OR_RETURN(load.model.device, ParseDevice(absl::GetFlag(FLAGS_device)));
  if (absl::GetFlag(FLAGS_bf16)) load.model.cpu_precision = BlockPrecision::kBFloat16;

  at::Tensor input;
  if (!absl::GetFlag(FLAGS_input).empty()) {
    ASSIGN_OR_RETURN(input, ReadNpy(absl::GetFlag(FLAGS_input)));
  } else {
    ASSIGN_OR_RETURN(input, LoadImageTensor(positional[1], PreprocessConfig()));
  }

  ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(load));
  const ConvNeXtConfig& config = loaded.model->config();
  std::printf("model: %s (%s layout, %s), %lld parameters, %lld classes\n", config.variant.c_str(),
              loaded.layout.c_str(), loaded.format.c_str(),
              static_cast<long long>(loaded.model->parameter_count()),
              static_cast<long long>(config.num_classes));

  if (loaded.dropped_non_backbone > 0) {
    std::printf("note: kept the detector's backbone.* tensors, dropped %d others\n",
                loaded.dropped_non_backbone);
  }
  const bool features = absl::GetFlag(FLAGS_features);
  OutputRequest request;
  request.logits = !features;
  request.embedding = features && !config.stage_norms;  // Detection backbones have no embedding.
  request.stages = features;
  ASSIGN_OR_RETURN(ForwardOutputs out, loaded.model->Forward(input, request));

  const std::string output = absl::GetFlag(FLAGS_output);
  auto write = [](const std::string& path, const at::Tensor& t) -> absl::Status {
    RETURN_IF_ERROR(WriteNpy(path, t.to(at::kFloat)));
    std::printf("wrote %s %s\n", path.c_str(), ShapeToString(t.sizes().vec()).c_str());
    return absl::OkStatus();
  };
  if (!features) {
    RETURN_IF_ERROR(write(output, out.logits));
    const at::Tensor probs = at::softmax(out.logits.to(at::kFloat).cpu(), 1);
    const auto [scores, indices] = at::topk(probs, std::min<int64_t>(5, probs.size(1)), 1);
    for (int64_t i = 0; i < scores.size(0); ++i) {
      std::printf("image %lld top-%lld:", static_cast<long long>(i),
                  static_cast<long long>(scores.size(1)));
      for (int64_t k = 0; k < scores.size(1); ++k) {
        const int64_t index = indices[i][k].item<int64_t>();
        std::printf(" %lld%s (%.4f)", static_cast<long long>(index),
                    index < static_cast<int64_t>(loaded.labels.size())
                        ? absl::StrCat(" ", loaded.labels[index]).c_str()
                        : "",
                    scores[i][k].item<float>());
      }
      std::printf("\n");
    }
    return absl::OkStatus();
  }
  const std::string stem(absl::StripSuffix(output, ".npy"));
  if (request.embedding) RETURN_IF_ERROR(write(stem + ".embedding.npy", out.embedding));
  for (size_t i = 0; i < out.stages.size(); ++i) {
    RETURN_IF_ERROR(write(absl::StrCat(stem, ".stage", i + 1, ".npy"), out.stages[i]));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace convnext

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "convnext-run --checkpoint CKPT [--variant NAME] (--input x.npy | IMAGE) "
      "[--output out.npy] [--features]");
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  convnext::ConfigureProcessForInference();
  const bool has_image = positional.size() == 2;
  const bool has_npy = !absl::GetFlag(FLAGS_input).empty();
  if (absl::GetFlag(FLAGS_checkpoint).empty() || has_image == has_npy || positional.size() > 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const absl::Status status = convnext::Run(positional);
  if (!status.ok()) {
    std::fprintf(stderr, "convnext-run: error: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}

#include "server/image_input.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "image/image_header.h"
#include "server/tensor_proto.h"

namespace convnext::server {

absl::StatusOr<PreprocessConfig> ToPreprocessConfig(const PreprocessingConfig& config,
                                                    uint64_t max_image_pixels) {
  PreprocessConfig out;
  out.size = static_cast<int>(config.size());
  out.crop_pct = config.crop_pct();
  ASSIGN_OR_RETURN(out.interpolation, InterpolationFromName(config.interpolation()));
  for (int c = 0; c < 3 && c < config.mean_size(); ++c) out.mean[c] = config.mean(c);
  for (int c = 0; c < 3 && c < config.std_size(); ++c) out.std[c] = config.std(c);
  out.max_pixels = static_cast<int64_t>(max_image_pixels);
  RETURN_IF_ERROR(ValidatePreprocessConfig(out));
  return out;
}

absl::StatusOr<InputPlan> PlanImage(const v1::Image& image, const PreprocessConfig& config,
                                    v1::ResizePolicy resize) {
  const bool keep_size = resize == v1::KEEP_SIZE;
  switch (image.source_case()) {
    case v1::Image::kEncoded: {
      ASSIGN_OR_RETURN(const ImageHeader header, ReadImageHeader(image.encoded()));
      if (!IsAcceptedFormat(header.format)) {
        // Refused when decoded, with its message; costs nothing until then.
        return InputPlan{kMinSize, kMinSize, 0};
      }
      return PlanInput(header.width, header.height, config, keep_size);
    }
    case v1::Image::kRaw:
      return PlanInput(image.raw().width(), image.raw().height(), config, keep_size);
    case v1::Image::kTensor: {
      // Used at its own size, as KEEP_SIZE would. A malformed shape is left to
      // ImageTensorFromProto, whose message says what a tensor input must be.
      const auto& shape = image.tensor().shape();
      const int64_t h = shape.size() >= 2 ? shape[shape.size() - 2] : 0;
      const int64_t w = shape.size() >= 2 ? shape[shape.size() - 1] : 0;
      if (h < 1 || w < 1 || h > (1 << 20) || w > (1 << 20)) {
        return InputPlan{kMinSize, kMinSize, static_cast<int64_t>(image.tensor().data().size())};
      }
      return PlanInput(w, h, config, /*keep_size=*/true);
    }
    default:
      return absl::InvalidArgumentError("the image has no source (encoded, raw or tensor)");
  }
}

absl::StatusOr<PreparedImage> PrepareImage(const v1::Image& image, const PreprocessConfig& config,
                                           v1::ResizePolicy resize) {
  const bool keep_size = resize == v1::KEEP_SIZE;
  PreparedImage out;
  switch (image.source_case()) {
    case v1::Image::kEncoded: {
      ASSIGN_OR_RETURN(RgbImage rgb, DecodeImage(image.encoded(), config));
      ASSIGN_OR_RETURN(out.input, keep_size ? TransformImageKeepSize(rgb, config)
                                            : TransformImageToUint8(rgb, config));
      out.width = rgb.width;
      out.height = rgb.height;
      break;
    }
    case v1::Image::kRaw: {
      const v1::RawImage& raw = image.raw();
      if (raw.width() > (1u << 20) || raw.height() > (1u << 20)) {
        return absl::InvalidArgumentError(
            absl::StrCat("raw image of ", raw.width(), "x", raw.height(), " pixels is too large"));
      }
      if (!v1::ChannelOrder_IsValid(raw.order())) {
        return absl::InvalidArgumentError(
            absl::StrCat("raw image has unknown channel order ", static_cast<int>(raw.order())));
      }
      const auto* data = reinterpret_cast<const uint8_t*>(raw.pixels().data());
      const bool bgr = raw.order() == v1::BGR;
      ASSIGN_OR_RETURN(
          out.input, keep_size ? TransformPixelsKeepSize(data, raw.pixels().size(), raw.width(),
                                                         raw.height(), raw.channels(), bgr, config)
                               : TransformPixelsToUint8(data, raw.pixels().size(), raw.width(),
                                                        raw.height(), raw.channels(), bgr, config));
      out.width = raw.width();
      out.height = raw.height();
      break;
    }
    case v1::Image::kTensor: {
      ASSIGN_OR_RETURN(out.input, ImageTensorFromProto(image.tensor(),
                                                       static_cast<uint64_t>(config.max_pixels)));
      out.width = out.input.size(-1);
      out.height = out.input.size(-2);
      return out;  // Used as it is: the identity transform.
    }
    default:
      return absl::InvalidArgumentError("the image has no source (encoded, raw or tensor)");
  }
  ASSIGN_OR_RETURN(out.transform, TransformOf(out.width, out.height, config, keep_size));
  return out;
}

}  // namespace convnext::server

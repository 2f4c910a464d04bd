#include "server/oip_convert.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace convnext::server {
namespace {

using inference::InferParameter;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

// Images per request at most, as for our own API.
constexpr int64_t kMaxImages = 1024;

std::string Quote(const std::string& s) {
  return absl::StrCat("'", absl::CHexEscape(s.substr(0, 64)), "'");
}

std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The product of `dims`, or an error if any is < 1 or the product passes `limit`.
absl::StatusOr<int64_t> Elements(const std::vector<int64_t>& dims, int64_t limit,
                                 const std::string& what) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 1) return absl::InvalidArgumentError(absl::StrCat(what, ": dimensions must be >= 1"));
    if (n > limit / d) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": more than ", limit, " elements"));
    }
    n *= d;
  }
  return n;
}

// The raw bytes of the request's only input, or nullptr when it travels in typed contents.
absl::StatusOr<const std::string*> RawInput(const ModelInferRequest& request) {
  if (request.raw_input_contents_size() == 0) return nullptr;
  if (request.raw_input_contents_size() != request.inputs_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw_input_contents has ", request.raw_input_contents_size(), " entries for ",
                     request.inputs_size(), " inputs"));
  }
  return &request.raw_input_contents(0);
}

absl::Status ReadImages(const ModelInferRequest::InferInputTensor& input, const std::string* raw,
                        OipCall* call) {
  if (input.datatype() != "BYTES") {
    return absl::InvalidArgumentError(
        absl::StrCat("input IMAGE has datatype ", Quote(input.datatype()), ", expected BYTES"));
  }
  const auto& shape = input.shape();
  if (!(shape.size() == 1 || (shape.size() == 2 && shape[1] == 1)) || shape[0] < 1 ||
      shape[0] > kMaxImages) {
    return absl::InvalidArgumentError(absl::StrCat("input IMAGE has shape ", ShapeText(shape),
                                                   ", expected [N] with 1 <= N <= ", kMaxImages));
  }
  const int64_t n = shape[0];
  if (raw == nullptr) {
    if (input.contents().bytes_contents_size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("input IMAGE: shape ", ShapeText(shape), " but ",
                       input.contents().bytes_contents_size(), " elements in bytes_contents"));
    }
    for (const std::string& bytes : input.contents().bytes_contents()) {
      call->images.Add()->set_encoded(bytes);
    }
    return absl::OkStatus();
  }
  // Each element: a 4-byte little-endian length, then that many bytes.
  size_t at = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (raw->size() - at < 4) {
      return absl::InvalidArgumentError(
          absl::StrCat("input IMAGE: raw contents end before element ", i, " of ", n));
    }
    uint32_t len = 0;
    for (int b = 3; b >= 0; --b) len = (len << 8) | static_cast<uint8_t>((*raw)[at + b]);
    at += 4;
    if (len > raw->size() - at) {
      return absl::InvalidArgumentError(absl::StrCat("input IMAGE: element ", i, " claims ", len,
                                                     " bytes, only ", raw->size() - at, " left"));
    }
    call->images.Add()->set_encoded(raw->substr(at, len));
    at += len;
  }
  if (at != raw->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("input IMAGE: ", raw->size() - at, " bytes left after its ", n, " elements"));
  }
  return absl::OkStatus();
}

absl::Status ReadPixels(const ModelInferRequest::InferInputTensor& input, const std::string* raw,
                        OipCall* call) {
  if (input.datatype() != "UINT8") {
    return absl::InvalidArgumentError(
        absl::StrCat("input PIXELS has datatype ", Quote(input.datatype()), ", expected UINT8"));
  }
  const auto& shape = input.shape();
  if (shape.size() != 4 || shape[0] < 1 || shape[0] > kMaxImages ||
      (shape[3] != 1 && shape[3] != 3 && shape[3] != 4)) {
    return absl::InvalidArgumentError(
        absl::StrCat("input PIXELS has shape ", ShapeText(shape),
                     ", expected [N, H, W, C] with 1 <= N <= ", kMaxImages, " and C 1, 3 or 4"));
  }
  ASSIGN_OR_RETURN(const int64_t per_image,
                   Elements({shape[1], shape[2], shape[3]}, int64_t{1} << 31, "input PIXELS"));
  if (shape[1] > UINT32_MAX || shape[2] > UINT32_MAX) {
    return absl::InvalidArgumentError("input PIXELS: image too large");
  }
  const int64_t total = per_image * shape[0];
  std::string from_contents;
  if (raw == nullptr) {
    const auto& values = input.contents().uint_contents();
    if (values.size() != total) {
      return absl::InvalidArgumentError(absl::StrCat("input PIXELS: shape ", ShapeText(shape),
                                                     " but ", values.size(),
                                                     " elements in uint_contents"));
    }
    from_contents.resize(static_cast<size_t>(total));
    for (int64_t i = 0; i < total; ++i) {
      if (values[static_cast<int>(i)] > 255) {
        return absl::InvalidArgumentError("input PIXELS: a value is more than 255");
      }
      from_contents[static_cast<size_t>(i)] = static_cast<char>(values[static_cast<int>(i)]);
    }
    raw = &from_contents;
  } else if (static_cast<int64_t>(raw->size()) != total) {
    return absl::InvalidArgumentError(absl::StrCat("input PIXELS: shape ", ShapeText(shape),
                                                   " needs ", total, " bytes, raw contents have ",
                                                   raw->size()));
  }
  for (int64_t i = 0; i < shape[0]; ++i) {
    v1::RawImage* image = call->images.Add()->mutable_raw();
    image->set_height(static_cast<uint32_t>(shape[1]));
    image->set_width(static_cast<uint32_t>(shape[2]));
    image->set_channels(static_cast<uint32_t>(shape[3]));
    image->set_order(v1::RGB);
    image->set_pixels(
        raw->substr(static_cast<size_t>(i * per_image), static_cast<size_t>(per_image)));
  }
  return absl::OkStatus();
}

absl::Status ReadTensor(const ModelInferRequest::InferInputTensor& input, const std::string* raw,
                        OipCall* call) {
  const bool fp16 = input.datatype() == "FP16";
  if (input.datatype() != "FP32" && !fp16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input TENSOR has datatype ", Quote(input.datatype()), ", expected FP32 or FP16"));
  }
  const auto& shape = input.shape();
  if (shape.size() != 4 || shape[0] < 1 || shape[0] > kMaxImages || shape[1] != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("input TENSOR has shape ", ShapeText(shape),
                     ", expected [N, 3, H, W] with 1 <= N <= ", kMaxImages));
  }
  ASSIGN_OR_RETURN(const int64_t per_image,
                   Elements({shape[1], shape[2], shape[3]}, int64_t{1} << 30, "input TENSOR"));
  const int64_t element_bytes = fp16 ? 2 : 4;
  const int64_t image_bytes = per_image * element_bytes;
  std::string from_contents;
  if (raw == nullptr) {
    if (fp16) {
      return absl::InvalidArgumentError(
          "input TENSOR: FP16 data must travel as raw contents (the protocol has no typed "
          "field for it)");
    }
    const auto& values = input.contents().fp32_contents();
    if (values.size() != per_image * shape[0]) {
      return absl::InvalidArgumentError(absl::StrCat("input TENSOR: shape ", ShapeText(shape),
                                                     " but ", values.size(),
                                                     " elements in fp32_contents"));
    }
    from_contents.resize(static_cast<size_t>(values.size()) * 4);
    std::memcpy(from_contents.data(), values.data(), from_contents.size());
    raw = &from_contents;
  } else if (static_cast<int64_t>(raw->size()) != image_bytes * shape[0]) {
    return absl::InvalidArgumentError(
        absl::StrCat("input TENSOR: shape ", ShapeText(shape), " of ", input.datatype(), " needs ",
                     image_bytes * shape[0], " bytes, raw contents have ", raw->size()));
  }
  for (int64_t i = 0; i < shape[0]; ++i) {
    v1::Tensor* t = call->images.Add()->mutable_tensor();
    t->add_shape(3);
    t->add_shape(shape[2]);
    t->add_shape(shape[3]);
    t->set_dtype(fp16 ? v1::FP16 : v1::FP32);
    t->set_data(
        raw->substr(static_cast<size_t>(i * image_bytes), static_cast<size_t>(image_bytes)));
  }
  return absl::OkStatus();
}

std::vector<std::string> OutputNames(const OipModel& model) {
  std::vector<std::string> names;
  if (model.num_classes > 0) names.push_back("probabilities");
  if (model.has_embedding) names.push_back("embedding");
  for (int s = 1; s <= 4; ++s) names.push_back(absl::StrCat("stage", s));
  return names;
}

absl::StatusOr<OipOutput> ParseOutput(const ModelInferRequest::InferRequestedOutputTensor& out,
                                      const OipModel& model) {
  OipOutput o;
  o.name = out.name();
  const std::vector<std::string> names = OutputNames(model);
  if (std::find(names.begin(), names.end(), o.name) == names.end()) {
    return absl::InvalidArgumentError(absl::StrCat("model '", model.name, "' has no output ",
                                                   Quote(o.name),
                                                   "; its outputs: ", absl::StrJoin(names, ", ")));
  }
  if (o.name.rfind("stage", 0) == 0) o.stage = o.name[5] - '0';
  for (const auto& [key, value] : out.parameters()) {
    if (key != "classification" || o.name != "probabilities") {
      return absl::InvalidArgumentError(
          absl::StrCat("output ", o.name, ": unknown parameter ", Quote(key)));
    }
    int64_t k = 0;
    if (value.parameter_choice_case() == InferParameter::kInt64Param) {
      k = value.int64_param();
    } else if (value.parameter_choice_case() == InferParameter::kUint64Param) {
      k = value.uint64_param() > static_cast<uint64_t>(INT64_MAX)
              ? INT64_MAX
              : static_cast<int64_t>(value.uint64_param());
    } else {
      return absl::InvalidArgumentError("output probabilities: classification must be an integer");
    }
    if (k < 1 || k > model.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("output probabilities: classification = ", k,
                                                     ", expected 1..", model.num_classes));
    }
    o.classification = static_cast<int>(k);
  }
  return o;
}

// Appends an FP32 or BYTES output tensor header.
void AddOutput(const std::string& name, const char* datatype, const std::vector<int64_t>& shape,
               ModelInferResponse* response) {
  ModelInferResponse::InferOutputTensor* t = response->add_outputs();
  t->set_name(name);
  t->set_datatype(datatype);
  for (int64_t d : shape) t->add_shape(d);
}

}  // namespace

absl::StatusOr<OipCall> ToOipCall(const ModelInferRequest& request, const OipModel& model) {
  OipCall call;
  if (request.inputs_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected exactly one input (IMAGE, PIXELS or TENSOR), got ", request.inputs_size()));
  }
  const ModelInferRequest::InferInputTensor& input = request.inputs(0);
  ASSIGN_OR_RETURN(const std::string* raw, RawInput(request));
  if (input.name() == "IMAGE") {
    RETURN_IF_ERROR(ReadImages(input, raw, &call));
  } else if (input.name() == "PIXELS") {
    RETURN_IF_ERROR(ReadPixels(input, raw, &call));
  } else if (input.name() == "TENSOR") {
    RETURN_IF_ERROR(ReadTensor(input, raw, &call));
  } else {
    return absl::InvalidArgumentError(absl::StrCat("model '", model.name, "' has no input ",
                                                   Quote(input.name()),
                                                   "; its inputs: IMAGE (BYTES [N]), PIXELS (UINT8 "
                                                   "[N, H, W, C]), TENSOR (FP32 [N, 3, H, W])"));
  }

  bool normalize = false;
  for (const auto& [key, value] : request.parameters()) {
    if (key == "timeout") {
      if (value.parameter_choice_case() != InferParameter::kInt64Param &&
          value.parameter_choice_case() != InferParameter::kUint64Param) {
        return absl::InvalidArgumentError("parameter timeout must be an integer (microseconds)");
      }
      const int64_t us =
          value.parameter_choice_case() == InferParameter::kInt64Param
              ? value.int64_param()
              : static_cast<int64_t>(std::min<uint64_t>(value.uint64_param(), INT64_MAX));
      if (us > 0) call.timeout = absl::Microseconds(us);
    } else if (key == "normalize") {
      if (value.parameter_choice_case() != InferParameter::kBoolParam) {
        return absl::InvalidArgumentError("parameter normalize must be a bool");
      }
      normalize = value.bool_param();
    }
    // Anything else (priority, sequence and tracing parameters, ...) is accepted and ignored, as
    // Triton leaves unknown parameters to its backends.
  }

  std::set<std::string> seen;
  for (const auto& out : request.outputs()) {
    ASSIGN_OR_RETURN(OipOutput o, ParseOutput(out, model));
    if (!seen.insert(o.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("output ", o.name, " is asked for twice"));
    }
    call.outputs.push_back(std::move(o));
  }
  if (call.outputs.empty()) {
    if (model.num_classes > 0) {
      call.outputs.push_back({"probabilities", 0, 0});
    } else if (model.has_embedding) {
      call.outputs.push_back({"embedding", 0, 0});
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "model '", model.name, "' is a detection backbone: ask for stage1..stage4 outputs"));
    }
  }
  // Everything asked for comes from one forward pass.
  InferenceRequest::Params& p = call.params;
  bool classify = false;
  bool embed = false;
  p.normalize = normalize;
  p.dtype = v1::FP32;
  p.resize = v1::CLASSIFICATION;
  for (const OipOutput& o : call.outputs) {
    if (o.name == "probabilities") {
      classify = true;
      p.top_k = o.classification > 0 ? o.classification : static_cast<int>(model.num_classes);
    } else if (o.stage > 0) {
      embed = true;
      p.stages.push_back(o.stage);
    } else {
      embed = true;
      p.include_embedding = true;
    }
  }
  p.kind = classify && embed ? InferenceRequest::Kind::kClassifyAndEmbed
           : classify        ? InferenceRequest::Kind::kClassify
                             : InferenceRequest::Kind::kEmbed;
  return call;
}

absl::Status FillInferResponse(const OipCall& call, const OipModel& model,
                               const v1::ClassifyResponse* classify, const v1::EmbedResponse* embed,
                               ModelInferResponse* response) {
  const int64_t n = call.images.size();
  auto mismatch = [](const std::string& what) {
    return absl::InternalError(absl::StrCat("the answer does not match the request: ", what));
  };
  for (const OipOutput& o : call.outputs) {
    if (o.name == "probabilities") {
      if (classify == nullptr || classify->results_size() != n) {
        return mismatch("classify results");
      }
      std::string* raw = response->add_raw_output_contents();
      if (o.classification > 0) {
        AddOutput(o.name, "BYTES", {n, o.classification}, response);
        for (const v1::Classification& c : classify->results()) {
          if (c.classes_size() != o.classification) return mismatch("top-k size");
          for (const v1::ClassScore& s : c.classes()) {
            std::string text = absl::StrCat(s.score(), ":", s.index());
            if (!s.label().empty()) absl::StrAppend(&text, ":", s.label());
            const uint32_t len = static_cast<uint32_t>(text.size());
            for (int b = 0; b < 4; ++b) raw->push_back(static_cast<char>((len >> (8 * b)) & 0xff));
            raw->append(text);
          }
        }
        continue;
      }
      const int64_t classes = model.num_classes;
      AddOutput(o.name, "FP32", {n, classes}, response);
      std::vector<float> dense(static_cast<size_t>(n * classes), 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        for (const v1::ClassScore& s : classify->results(static_cast<int>(i)).classes()) {
          if (s.index() < 0 || s.index() >= classes) return mismatch("class index");
          dense[static_cast<size_t>(i * classes + s.index())] = s.score();
        }
      }
      raw->assign(reinterpret_cast<const char*>(dense.data()), dense.size() * sizeof(float));
      continue;
    }
    if (embed == nullptr || embed->results_size() != n) return mismatch("embed results");
    // Which tensor of each image's result: the embedding, or the stage's place in params.stages.
    int stage_index = -1;
    if (o.stage > 0) {
      auto it = std::find(call.params.stages.begin(), call.params.stages.end(), o.stage);
      stage_index = static_cast<int>(it - call.params.stages.begin());
    }
    std::string* raw = response->add_raw_output_contents();
    std::vector<int64_t> shape;
    for (int64_t i = 0; i < n; ++i) {
      const v1::Embedding& e = embed->results(static_cast<int>(i));
      if (stage_index >= e.stages_size()) return mismatch("stages");
      const v1::Tensor& t = stage_index < 0 ? e.embedding() : e.stages(stage_index);
      std::vector<int64_t> image_shape(t.shape().begin(), t.shape().end());
      if (i == 0) {
        shape = image_shape;
      } else if (image_shape != shape) {
        return absl::InvalidArgumentError(
            absl::StrCat("output ", o.name,
                         ": the images give maps of different shapes; send them in "
                         "separate requests"));
      }
      raw->append(t.data());
    }
    shape.insert(shape.begin(), n);
    AddOutput(o.name, "FP32", shape, response);
  }
  return absl::OkStatus();
}

inference::ModelMetadataResponse OipMetadata(const OipModel& model) {
  inference::ModelMetadataResponse m;
  m.set_name(model.name);
  m.add_versions(model.version);
  m.set_platform("convnext-serve");
  auto add =
      [](google::protobuf::RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>* list,
         const std::string& name, const char* datatype, std::vector<int64_t> shape) {
        auto* t = list->Add();
        t->set_name(name);
        t->set_datatype(datatype);
        for (int64_t d : shape) t->add_shape(d);
      };
  add(m.mutable_inputs(), "IMAGE", "BYTES", {-1, 1});
  add(m.mutable_inputs(), "PIXELS", "UINT8", {-1, -1, -1, -1});
  add(m.mutable_inputs(), "TENSOR", "FP32", {-1, 3, -1, -1});
  if (model.num_classes > 0)
    add(m.mutable_outputs(), "probabilities", "FP32", {-1, model.num_classes});
  const int64_t last = model.dims.empty() ? -1 : model.dims.back();
  if (model.has_embedding) add(m.mutable_outputs(), "embedding", "FP32", {-1, last});
  for (int s = 1; s <= 4; ++s) {
    const int64_t channels = static_cast<int64_t>(model.dims.size()) >= s ? model.dims[s - 1] : -1;
    // Spatial sizes: input_size / 2^(s+1) for IMAGE and PIXELS; TENSOR inputs of another size
    // give other sizes.
    add(m.mutable_outputs(), absl::StrCat("stage", s), "FP32", {-1, channels, -1, -1});
  }
  return m;
}

inference::ModelConfig OipModelConfig(const OipModel& model) {
  inference::ModelConfig config;
  config.set_name(model.name);
  config.set_platform("convnext-serve");
  config.set_backend("convnext-serve");
  config.set_max_batch_size(
      static_cast<int32_t>(std::min<int64_t>(model.max_queue_size, kMaxImages)));
  auto input = [&config](const char* name, inference::DataType type,
                         inference::ModelInput::Format format, std::vector<int64_t> dims,
                         bool optional) {
    inference::ModelInput* in = config.add_input();
    in->set_name(name);
    in->set_data_type(type);
    in->set_format(format);
    for (int64_t d : dims) in->add_dims(d);
    in->set_optional(optional);
  };
  input("IMAGE", inference::TYPE_STRING, inference::ModelInput::FORMAT_NONE, {1}, false);
  input("PIXELS", inference::TYPE_UINT8, inference::ModelInput::FORMAT_NHWC, {-1, -1, -1}, true);
  input("TENSOR", inference::TYPE_FP32, inference::ModelInput::FORMAT_NCHW, {3, -1, -1}, true);
  auto output = [&config](const std::string& name, std::vector<int64_t> dims) {
    inference::ModelOutput* out = config.add_output();
    out->set_name(name);
    out->set_data_type(inference::TYPE_FP32);
    for (int64_t d : dims) out->add_dims(d);
  };
  if (model.num_classes > 0) output("probabilities", {model.num_classes});
  if (model.has_embedding) output("embedding", {model.dims.empty() ? -1 : model.dims.back()});
  for (int s = 1; s <= 4; ++s) {
    output(absl::StrCat("stage", s),
           {static_cast<int64_t>(model.dims.size()) >= s ? model.dims[s - 1] : -1, -1, -1});
  }
  config.mutable_dynamic_batching()->add_preferred_batch_size(
      static_cast<int32_t>(model.max_batch_size));
  config.mutable_dynamic_batching()->set_max_queue_delay_microseconds(
      static_cast<uint64_t>(model.max_queue_delay_us));
  return config;
}

}  // namespace convnext::server

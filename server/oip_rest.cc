#include "server/oip_rest.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace convnext::server {
namespace {

using Json = nlohmann::json;
using inference::InferParameter;

// Nested data arrays deeper than this are refused (a tensor has at most a few dimensions).
constexpr int kMaxDepth = 8;

absl::Status Bad(absl::string_view what) { return absl::InvalidArgumentError(what); }

absl::StatusOr<InferParameter> ToParameter(const std::string& key, const Json& value) {
  InferParameter p;
  if (value.is_boolean()) {
    p.set_bool_param(value.get<bool>());
  } else if (value.is_number_unsigned()) {
    p.set_uint64_param(value.get<uint64_t>());
  } else if (value.is_number_integer()) {
    p.set_int64_param(value.get<int64_t>());
  } else if (value.is_number_float()) {
    p.set_double_param(value.get<double>());
  } else if (value.is_string()) {
    p.set_string_param(value.get<std::string>());
  } else {
    return Bad(absl::StrCat("parameter '", key, "' must be a bool, number or string"));
  }
  return p;
}

// Copies `params` (a JSON object) into `out`, leaving out the keys in `skip`.
absl::Status ToParameters(const Json& params,
                          google::protobuf::Map<std::string, InferParameter>* out,
                          std::initializer_list<const char*> skip = {}) {
  if (params.is_null()) return absl::OkStatus();
  if (!params.is_object()) return Bad("'parameters' must be an object");
  for (const auto& [key, value] : params.items()) {
    if (std::any_of(skip.begin(), skip.end(), [&key](const char* s) { return key == s; })) {
      continue;
    }
    ASSIGN_OR_RETURN((*out)[key], ToParameter(key, value));
  }
  return absl::OkStatus();
}

// Appends the leaves of a (possibly nested) JSON array to `leaves`.
absl::Status Flatten(const Json& data, int depth, std::vector<const Json*>* leaves) {
  if (depth > kMaxDepth) return Bad("'data' is nested too deeply");
  if (!data.is_array()) {
    leaves->push_back(&data);
    return absl::OkStatus();
  }
  for (const Json& item : data) RETURN_IF_ERROR(Flatten(item, depth + 1, leaves));
  return absl::OkStatus();
}

// Fills `contents` from JSON `data` for `datatype`.
absl::Status ToContents(const std::string& name, const std::string& datatype, const Json& data,
                        inference::InferTensorContents* contents) {
  std::vector<const Json*> leaves;
  RETURN_IF_ERROR(Flatten(data, 0, &leaves));
  auto wrong = [&name, &datatype]() {
    return Bad(absl::StrCat("input ", name, ": 'data' holds a value that is not ", datatype));
  };
  if (datatype == "BYTES") {
    for (const Json* v : leaves) {
      if (!v->is_string()) return wrong();
      contents->add_bytes_contents(v->get<std::string>());
    }
  } else if (datatype == "FP32") {
    for (const Json* v : leaves) {
      if (!v->is_number()) return wrong();
      contents->add_fp32_contents(v->get<float>());
    }
  } else if (datatype == "UINT8") {
    for (const Json* v : leaves) {
      if (!v->is_number_unsigned() || v->get<uint64_t>() > 255) return wrong();
      contents->add_uint_contents(v->get<uint32_t>());
    }
  } else {
    return Bad(absl::StrCat("input ", name, ": ", datatype,
                            " data cannot travel as JSON here; use the binary extension"));
  }
  return absl::OkStatus();
}

// The float elements of raw little-endian FP32 bytes, as JSON numbers.
Json FloatsJson(const std::string& raw) {
  Json out = Json::array();
  const size_t n = raw.size() / sizeof(float);
  for (size_t i = 0; i < n; ++i) {
    float v;
    std::memcpy(&v, raw.data() + i * sizeof(float), sizeof(float));
    out.push_back(v);
  }
  return out;
}

// The elements of raw BYTES contents (4-byte length, bytes), as JSON strings.
Json BytesJson(const std::string& raw) {
  Json out = Json::array();
  size_t at = 0;
  while (raw.size() - at >= 4) {
    uint32_t len = 0;
    for (int b = 3; b >= 0; --b) len = (len << 8) | static_cast<uint8_t>(raw[at + b]);
    at += 4;
    len = static_cast<uint32_t>(std::min<size_t>(len, raw.size() - at));
    out.push_back(raw.substr(at, len));
    at += len;
  }
  return out;
}

Json ShapeJson(const google::protobuf::RepeatedField<int64_t>& shape) {
  return Json(std::vector<int64_t>(shape.begin(), shape.end()));
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

Json TensorsJson(
    const google::protobuf::RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>&
        tensors) {
  Json out = Json::array();
  for (const auto& t : tensors) {
    out.push_back(
        {{"name", t.name()}, {"datatype", t.datatype()}, {"shape", ShapeJson(t.shape())}});
  }
  return out;
}

Json DurationJson(const inference::StatisticDuration& d) {
  return {{"count", d.count()}, {"ns", d.ns()}};
}

}  // namespace

absl::StatusOr<RestInferRequest> ParseRestInfer(absl::string_view body,
                                                std::optional<size_t> header_length,
                                                const std::string& model,
                                                const std::string& version) {
  if (header_length.has_value() && *header_length > body.size()) {
    return Bad(absl::StrCat("Inference-Header-Content-Length is ", *header_length,
                            ", more than the body's ", body.size(), " bytes"));
  }
  const absl::string_view header =
      header_length.has_value() ? body.substr(0, *header_length) : body;
  absl::string_view binary =
      header_length.has_value() ? body.substr(*header_length) : absl::string_view();
  const Json j = Json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Bad("the request is not a JSON object");
  RestInferRequest out;
  inference::ModelInferRequest& r = out.request;
  r.set_model_name(model);
  r.set_model_version(version);
  try {
    if (j.contains("id")) {
      if (!j["id"].is_string()) return Bad("'id' must be a string");
      r.set_id(j["id"].get<std::string>());
    }
    if (j.contains("parameters")) {
      RETURN_IF_ERROR(
          ToParameters(j["parameters"], r.mutable_parameters(), {"binary_data_output"}));
      const Json& all = j["parameters"].value("binary_data_output", Json(false));
      out.all_binary = all.is_boolean() && all.get<bool>();
    }
    if (!j.contains("inputs") || !j["inputs"].is_array()) return Bad("'inputs' must be a list");
    bool any_binary = false;
    for (const Json& in : j["inputs"]) {
      if (!in.is_object() || !in.contains("name") || !in["name"].is_string() ||
          !in.contains("datatype") || !in["datatype"].is_string() || !in.contains("shape") ||
          !in["shape"].is_array()) {
        return Bad("each input needs 'name', 'datatype' and 'shape'");
      }
      auto* t = r.add_inputs();
      t->set_name(in["name"].get<std::string>());
      t->set_datatype(in["datatype"].get<std::string>());
      for (const Json& d : in["shape"]) {
        if (!d.is_number_integer()) return Bad(absl::StrCat("input ", t->name(), ": bad shape"));
        t->add_shape(d.get<int64_t>());
      }
      const Json params = in.value("parameters", Json());
      RETURN_IF_ERROR(ToParameters(params, t->mutable_parameters(), {"binary_data_size"}));
      if (params.is_object() && params.contains("binary_data_size")) {
        const Json& size = params["binary_data_size"];
        if (!size.is_number_unsigned()) {
          return Bad(absl::StrCat("input ", t->name(), ": binary_data_size must be a count"));
        }
        const uint64_t n = size.get<uint64_t>();
        if (n > binary.size()) {
          return Bad(absl::StrCat("input ", t->name(), ": binary_data_size ", n, " but only ",
                                  binary.size(), " binary bytes are left"));
        }
        r.add_raw_input_contents(std::string(binary.substr(0, n)));
        binary.remove_prefix(n);
        any_binary = true;
      } else {
        if (!in.contains("data")) return Bad(absl::StrCat("input ", t->name(), " has no data"));
        RETURN_IF_ERROR(ToContents(t->name(), t->datatype(), in["data"], t->mutable_contents()));
      }
    }
    if (any_binary && r.raw_input_contents_size() != r.inputs_size()) {
      return Bad("either every input or none uses the binary extension");
    }
    if (!binary.empty()) {
      return Bad(absl::StrCat(binary.size(), " bytes of binary data belong to no input"));
    }
    if (j.contains("outputs")) {
      if (!j["outputs"].is_array()) return Bad("'outputs' must be a list");
      for (const Json& o : j["outputs"]) {
        if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) {
          return Bad("each output needs a 'name'");
        }
        auto* t = r.add_outputs();
        t->set_name(o["name"].get<std::string>());
        const Json params = o.value("parameters", Json());
        RETURN_IF_ERROR(ToParameters(params, t->mutable_parameters(), {"binary_data"}));
        if (params.is_object() && params.value("binary_data", Json(false)) == Json(true)) {
          out.binary.push_back(t->name());
        }
      }
    }
  } catch (const Json::exception& e) {
    return Bad(absl::StrCat("malformed request: ", e.what()));
  }
  return out;
}

RestBody FormatRestInfer(const RestInferRequest& request,
                         const inference::ModelInferResponse& response) {
  Json j = {{"model_name", response.model_name()}, {"model_version", response.model_version()}};
  if (!response.id().empty()) j["id"] = response.id();
  Json outputs = Json::array();
  std::string binary;
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& o = response.outputs(i);
    const std::string& raw = response.raw_output_contents(i);
    Json out = {{"name", o.name()}, {"datatype", o.datatype()}, {"shape", ShapeJson(o.shape())}};
    const bool as_binary =
        request.all_binary ||
        std::find(request.binary.begin(), request.binary.end(), o.name()) != request.binary.end();
    if (as_binary) {
      out["parameters"] = {{"binary_data_size", raw.size()}};
      binary += raw;
    } else {
      out["data"] = o.datatype() == "BYTES" ? BytesJson(raw) : FloatsJson(raw);
    }
    outputs.push_back(std::move(out));
  }
  j["outputs"] = std::move(outputs);
  RestBody body;
  body.body = Dump(j);
  if (!binary.empty()) {
    body.header_length = body.body.size();
    body.body += binary;
  }
  return body;
}

std::string ServerMetadataJson(const inference::ServerMetadataResponse& m) {
  return Dump(
      {{"name", m.name()},
       {"version", m.version()},
       {"extensions", std::vector<std::string>(m.extensions().begin(), m.extensions().end())}});
}

std::string ModelMetadataJson(const inference::ModelMetadataResponse& m) {
  return Dump({{"name", m.name()},
               {"versions", std::vector<std::string>(m.versions().begin(), m.versions().end())},
               {"platform", m.platform()},
               {"inputs", TensorsJson(m.inputs())},
               {"outputs", TensorsJson(m.outputs())}});
}

std::string ModelConfigJson(const inference::ModelConfig& c) {
  Json inputs = Json::array();
  for (const auto& in : c.input()) {
    inputs.push_back({{"name", in.name()},
                      {"data_type", inference::DataType_Name(in.data_type())},
                      {"format", inference::ModelInput::Format_Name(in.format())},
                      {"dims", ShapeJson(in.dims())},
                      {"optional", in.optional()}});
  }
  Json outputs = Json::array();
  for (const auto& out : c.output()) {
    outputs.push_back({{"name", out.name()},
                       {"data_type", inference::DataType_Name(out.data_type())},
                       {"dims", ShapeJson(out.dims())}});
  }
  const auto& batching = c.dynamic_batching();
  return Dump(
      {{"name", c.name()},
       {"platform", c.platform()},
       {"backend", c.backend()},
       {"max_batch_size", c.max_batch_size()},
       {"input", std::move(inputs)},
       {"output", std::move(outputs)},
       {"dynamic_batching",
        {{"preferred_batch_size", std::vector<int32_t>(batching.preferred_batch_size().begin(),
                                                       batching.preferred_batch_size().end())},
         {"max_queue_delay_microseconds", batching.max_queue_delay_microseconds()}}}});
}

std::string ModelStatisticsJson(const inference::ModelStatisticsResponse& s) {
  Json models = Json::array();
  for (const auto& m : s.model_stats()) {
    Json batches = Json::array();
    for (const auto& b : m.batch_stats()) {
      batches.push_back({{"batch_size", b.batch_size()},
                         {"compute_input", DurationJson(b.compute_input())},
                         {"compute_infer", DurationJson(b.compute_infer())},
                         {"compute_output", DurationJson(b.compute_output())}});
    }
    const auto& i = m.inference_stats();
    models.push_back({{"name", m.name()},
                      {"version", m.version()},
                      {"last_inference", m.last_inference()},
                      {"inference_count", m.inference_count()},
                      {"execution_count", m.execution_count()},
                      {"inference_stats",
                       {{"success", DurationJson(i.success())},
                        {"fail", DurationJson(i.fail())},
                        {"queue", DurationJson(i.queue())},
                        {"compute_input", DurationJson(i.compute_input())},
                        {"compute_infer", DurationJson(i.compute_infer())},
                        {"compute_output", DurationJson(i.compute_output())}}},
                      {"batch_stats", std::move(batches)}});
  }
  return Dump({{"model_stats", std::move(models)}});
}

std::string ErrorJson(absl::string_view message) { return Dump({{"error", std::string(message)}}); }

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 413;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kCancelled:
      return 499;
    default:
      return 500;
  }
}

}  // namespace convnext::server

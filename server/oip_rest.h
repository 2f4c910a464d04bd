// The Open Inference Protocol's HTTP/REST body formats (KServe v2 `inference_rest.md`, with
// Triton's binary tensor extension) to and from the protos the gRPC side uses, so that both
// protocols run the same conversion (oip_convert.h) and the same ModelInfer (oip_models.h).
// Pure functions of bytes and protos; the HTTP server is oip_http.h.
//
// Binary extension: a request whose `Inference-Header-Content-Length` header is N has N bytes of
// JSON followed by the binary tensors, each input with a `binary_data_size` parameter taking
// that many bytes in order (a BYTES element: 4-byte little-endian length, then the bytes). An
// output asked for with the `binary_data` parameter (or every output, with the request parameter
// `binary_data_output`) comes back the same way, its size in the output's `binary_data_size`.
#ifndef CONVNEXT_SERVER_OIP_REST_H_
#define CONVNEXT_SERVER_OIP_REST_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "inference/open_inference.pb.h"

namespace convnext::server {

// A parsed infer request and how its outputs are to be encoded.
struct RestInferRequest {
  inference::ModelInferRequest request;
  bool all_binary = false;          // binary_data_output.
  std::vector<std::string> binary;  // Outputs asked for with binary_data: true.
};

// Parses an infer body for model `model` (version `version`). `header_length` is the
// Inference-Header-Content-Length header's value, absent without the binary extension.
// INVALID_ARGUMENT with the reason for malformed JSON, missing fields, wrong data types or sizes.
absl::StatusOr<RestInferRequest> ParseRestInfer(absl::string_view body,
                                                std::optional<size_t> header_length,
                                                const std::string& model,
                                                const std::string& version);

// An HTTP answer body; `header_length` is set when binary data follows the JSON.
struct RestBody {
  std::string body;
  std::optional<size_t> header_length;
};

// Encodes `response` (raw output contents, as OipModels::Infer makes them).
RestBody FormatRestInfer(const RestInferRequest& request,
                         const inference::ModelInferResponse& response);

// JSON of the other answers, in the REST shapes (numbers as JSON numbers).
std::string ServerMetadataJson(const inference::ServerMetadataResponse& m);
std::string ModelMetadataJson(const inference::ModelMetadataResponse& m);
std::string ModelConfigJson(const inference::ModelConfig& c);
std::string ModelStatisticsJson(const inference::ModelStatisticsResponse& s);
// {"error": message}.
std::string ErrorJson(absl::string_view message);

// The HTTP status for a status code: 400 for bad requests, 404 not found, 413 a request that can
// never fit (RESOURCE_EXHAUSTED), 503 not now (UNAVAILABLE), 504 deadline, 501 unimplemented, 500
// otherwise.
int HttpStatusOf(absl::StatusCode code);

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_OIP_REST_H_

#include "server/oip_rest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace convnext::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ErrorOf(const std::string& body, std::optional<size_t> header_length = {}) {
  absl::StatusOr<RestInferRequest> r = ParseRestInfer(body, header_length, "m", "");
  EXPECT_FALSE(r.ok());
  return r.ok() ? "" : std::string(r.status().message());
}

TEST(OipRestTest, JsonInputsAndOutputs) {
  absl::StatusOr<RestInferRequest> r = ParseRestInfer(
      R"({"id": "7", "parameters": {"timeout": 5000, "binary_data_output": false},
          "inputs": [{"name": "TENSOR", "datatype": "FP32", "shape": [1, 3, 1, 2],
                      "data": [[1, 2], [3, 4], [5, 6.5]]}],
          "outputs": [{"name": "probabilities",
                       "parameters": {"classification": 2, "binary_data": true}}]})",
      std::nullopt, "m", "1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.model_name(), "m");
  EXPECT_EQ(r->request.model_version(), "1");
  EXPECT_EQ(r->request.id(), "7");
  EXPECT_EQ(r->request.parameters().at("timeout").uint64_param(), 5000u);
  EXPECT_EQ(r->request.parameters().count("binary_data_output"), 0u);
  EXPECT_THAT(r->request.inputs(0).contents().fp32_contents(), ElementsAre(1, 2, 3, 4, 5, 6.5));
  EXPECT_THAT(r->request.inputs(0).shape(), ElementsAre(1, 3, 1, 2));
  // binary_data is ours to act on; classification goes to the model.
  EXPECT_EQ(r->request.outputs(0).parameters().count("binary_data"), 0u);
  EXPECT_EQ(r->request.outputs(0).parameters().at("classification").uint64_param(), 2u);
  EXPECT_THAT(r->binary, ElementsAre("probabilities"));
  EXPECT_FALSE(r->all_binary);
}

TEST(OipRestTest, BinaryExtension) {
  const std::string header =
      R"({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                      "parameters": {"binary_data_size": 7}}],
          "parameters": {"binary_data_output": true}})";
  const std::string element("\x03\x00\x00\x00png", 7);
  absl::StatusOr<RestInferRequest> r = ParseRestInfer(header + element, header.size(), "m", "");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->request.raw_input_contents_size(), 1);
  EXPECT_EQ(r->request.raw_input_contents(0), element);
  EXPECT_TRUE(r->all_binary);
  EXPECT_THAT(ErrorOf(header + element + "x", header.size()),
              HasSubstr("1 bytes of binary data belong to no input"));
  EXPECT_THAT(ErrorOf(header + "abc", header.size()),
              HasSubstr("binary_data_size 7 but only 3 binary bytes are left"));
  EXPECT_THAT(ErrorOf(header, header.size() + 1), HasSubstr("more than the body's"));
}

TEST(OipRestTest, MalformedRequests) {
  EXPECT_THAT(ErrorOf("{"), HasSubstr("not a JSON object"));
  EXPECT_THAT(ErrorOf("[]"), HasSubstr("not a JSON object"));
  EXPECT_THAT(ErrorOf(R"({"inputs": 3})"), HasSubstr("'inputs' must be a list"));
  EXPECT_THAT(ErrorOf(R"({"inputs": [{"name": "IMAGE"}]})"),
              HasSubstr("needs 'name', 'datatype' and 'shape'"));
  EXPECT_THAT(ErrorOf(R"({"inputs": [{"name": "X", "datatype": "FP16", "shape": [1],
                                      "data": [1]}]})"),
              HasSubstr("FP16 data cannot travel as JSON here"));
  EXPECT_THAT(ErrorOf(R"({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1],
                                      "data": [256]}]})"),
              HasSubstr("not UINT8"));
  EXPECT_THAT(ErrorOf(R"({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1],
                                      "data": [[[[[[[[[[1]]]]]]]]]]}]})"),
              HasSubstr("nested too deeply"));
  EXPECT_THAT(ErrorOf(R"({"inputs": [], "parameters": {"p": [1]}})"),
              HasSubstr("parameter 'p' must be a bool, number or string"));
}

TEST(OipRestTest, AnswersAsJsonOrBinary) {
  inference::ModelInferResponse response;
  response.set_model_name("m");
  response.set_model_version("1");
  auto* probs = response.add_outputs();
  probs->set_name("probabilities");
  probs->set_datatype("FP32");
  probs->add_shape(1);
  probs->add_shape(2);
  const float values[2] = {0.25f, 0.75f};
  response.add_raw_output_contents(std::string(reinterpret_cast<const char*>(values), 8));
  auto* top = response.add_outputs();
  top->set_name("top");
  top->set_datatype("BYTES");
  top->add_shape(1);
  response.add_raw_output_contents(
      std::string("\x05\x00\x00\x00"
                  "0.7:1",
                  9));

  RestInferRequest json_request;
  RestBody json = FormatRestInfer(json_request, response);
  EXPECT_FALSE(json.header_length.has_value());
  EXPECT_THAT(json.body, HasSubstr(R"("data":[0.25,0.75])"));
  EXPECT_THAT(json.body, HasSubstr(R"("data":["0.7:1"])"));

  RestInferRequest binary_request;
  binary_request.binary = {"probabilities"};
  RestBody binary = FormatRestInfer(binary_request, response);
  ASSERT_TRUE(binary.header_length.has_value());
  EXPECT_THAT(binary.body.substr(0, *binary.header_length),
              HasSubstr(R"("parameters":{"binary_data_size":8})"));
  EXPECT_EQ(binary.body.substr(*binary.header_length), response.raw_output_contents(0));
}

TEST(OipRestTest, HttpStatuses) {
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kResourceExhausted), 413);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kInternal), 500);
}

}  // namespace
}  // namespace convnext::server

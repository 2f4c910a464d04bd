#include "server/oip_convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace convnext::server {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::vector<std::string> kLabels = {"cat", "dog", "fox"};

OipModel Classifier() {
  OipModel m;
  m.name = "m";
  m.num_classes = 3;
  m.dims = {4, 8, 16, 32};
  m.labels = &kLabels;
  return m;
}

std::string LengthPrefixed(const std::vector<std::string>& elements) {
  std::string out;
  for (const std::string& e : elements) {
    const uint32_t n = static_cast<uint32_t>(e.size());
    for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((n >> (8 * b)) & 0xff));
    out += e;
  }
  return out;
}

ModelInferRequest ImageRequest(const std::vector<std::string>& images) {
  ModelInferRequest r;
  r.set_model_name("m");
  auto* in = r.add_inputs();
  in->set_name("IMAGE");
  in->set_datatype("BYTES");
  in->add_shape(static_cast<int64_t>(images.size()));
  r.add_raw_input_contents(LengthPrefixed(images));
  return r;
}

std::string ErrorOf(const ModelInferRequest& r, const OipModel& model = Classifier()) {
  absl::StatusOr<OipCall> call = ToOipCall(r, model);
  EXPECT_FALSE(call.ok());
  if (call.ok()) return "";
  EXPECT_EQ(call.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(call.status().message());
}

TEST(OipConvertTest, EncodedImagesFromRawAndTypedContents) {
  absl::StatusOr<OipCall> call = ToOipCall(ImageRequest({"jpeg-1", "png-22"}), Classifier());
  ASSERT_TRUE(call.ok()) << call.status();
  ASSERT_EQ(call->images.size(), 2);
  EXPECT_EQ(call->images[0].encoded(), "jpeg-1");
  EXPECT_EQ(call->images[1].encoded(), "png-22");
  // No outputs asked: every class's probability.
  ASSERT_EQ(call->outputs.size(), 1u);
  EXPECT_EQ(call->outputs[0].name, "probabilities");
  EXPECT_EQ(call->params.kind, InferenceRequest::Kind::kClassify);
  EXPECT_EQ(call->params.top_k, 3);

  ModelInferRequest typed = ImageRequest({});
  typed.clear_raw_input_contents();
  typed.mutable_inputs(0)->set_shape(0, 1);
  typed.mutable_inputs(0)->mutable_contents()->add_bytes_contents("bmp");
  call = ToOipCall(typed, Classifier());
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->images[0].encoded(), "bmp");
}

TEST(OipConvertTest, MalformedImageInputsAreInvalidArgument) {
  ModelInferRequest r = ImageRequest({"abc"});
  r.set_raw_input_contents(0, r.raw_input_contents(0) + "x");
  EXPECT_THAT(ErrorOf(r), HasSubstr("1 bytes left after its 1 elements"));
  r = ImageRequest({"abc"});
  r.set_raw_input_contents(0, r.raw_input_contents(0).substr(0, 5));
  EXPECT_THAT(ErrorOf(r), HasSubstr("element 0 claims 3 bytes, only 1 left"));
  r = ImageRequest({"abc"});
  r.mutable_inputs(0)->set_shape(0, 2);
  EXPECT_THAT(ErrorOf(r), HasSubstr("raw contents end before element 1 of 2"));
  r = ImageRequest({"abc"});
  r.mutable_inputs(0)->set_datatype("FP32");
  EXPECT_THAT(ErrorOf(r), HasSubstr("input IMAGE has datatype 'FP32', expected BYTES"));
  r = ImageRequest({"abc"});
  r.mutable_inputs(0)->set_name("INPUT__0");
  EXPECT_THAT(ErrorOf(r), HasSubstr("has no input 'INPUT__0'; its inputs: IMAGE"));
  r = ImageRequest({"abc"});
  *r.add_inputs() = r.inputs(0);
  EXPECT_THAT(ErrorOf(r), HasSubstr("expected exactly one input"));
  r = ImageRequest({"abc"});
  r.mutable_inputs(0)->set_shape(0, 5000);
  EXPECT_THAT(ErrorOf(r), HasSubstr("expected [N] with 1 <= N <= 1024"));
}

TEST(OipConvertTest, PixelsAndTensors) {
  ModelInferRequest r;
  auto* in = r.add_inputs();
  in->set_name("PIXELS");
  in->set_datatype("UINT8");
  for (int64_t d : {2, 2, 3, 3}) in->add_shape(d);
  r.add_raw_input_contents(std::string(36, '\x7f'));
  absl::StatusOr<OipCall> call = ToOipCall(r, Classifier());
  ASSERT_TRUE(call.ok()) << call.status();
  ASSERT_EQ(call->images.size(), 2);
  EXPECT_EQ(call->images[1].raw().height(), 2u);
  EXPECT_EQ(call->images[1].raw().width(), 3u);
  EXPECT_EQ(call->images[1].raw().pixels().size(), 18u);
  r.set_raw_input_contents(0, std::string(35, '\0'));
  EXPECT_THAT(ErrorOf(r), HasSubstr("needs 36 bytes, raw contents have 35"));
  r.clear_raw_input_contents();
  for (int i = 0; i < 36; ++i) in->mutable_contents()->add_uint_contents(i == 7 ? 256 : 1);
  EXPECT_THAT(ErrorOf(r), HasSubstr("more than 255"));

  ModelInferRequest t;
  auto* tin = t.add_inputs();
  tin->set_name("TENSOR");
  tin->set_datatype("FP32");
  for (int64_t d : {1, 3, 2, 2}) tin->add_shape(d);
  for (int i = 0; i < 12; ++i) tin->mutable_contents()->add_fp32_contents(static_cast<float>(i));
  call = ToOipCall(t, Classifier());
  ASSERT_TRUE(call.ok()) << call.status();
  const v1::Tensor& tensor = call->images[0].tensor();
  EXPECT_THAT(tensor.shape(), ElementsAre(3, 2, 2));
  float third = 0;
  std::memcpy(&third, tensor.data().data() + 8, 4);
  EXPECT_EQ(third, 2.0f);
  tin->set_datatype("FP16");
  EXPECT_THAT(ErrorOf(t), HasSubstr("FP16 data must travel as raw contents"));
  t.add_raw_input_contents(std::string(24, '\0'));
  call = ToOipCall(t, Classifier());
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->images[0].tensor().dtype(), v1::FP16);
  tin->set_shape(1, 4);
  EXPECT_THAT(ErrorOf(t), HasSubstr("expected [N, 3, H, W]"));
}

TEST(OipConvertTest, OutputsAndParameters) {
  ModelInferRequest r = ImageRequest({"x"});
  auto* p = r.add_outputs();
  p->set_name("probabilities");
  (*p->mutable_parameters())["classification"].set_int64_param(2);
  absl::StatusOr<OipCall> call = ToOipCall(r, Classifier());
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->params.top_k, 2);
  (*p->mutable_parameters())["classification"].set_int64_param(4);
  EXPECT_THAT(ErrorOf(r), HasSubstr("classification = 4, expected 1..3"));
  // With the embedding: one call computes both.
  r.add_outputs()->set_name("embedding");
  (*p->mutable_parameters())["classification"].set_int64_param(1);
  call = ToOipCall(r, Classifier());
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->params.kind, InferenceRequest::Kind::kClassifyAndEmbed);
  EXPECT_EQ(call->params.top_k, 1);
  EXPECT_TRUE(call->params.include_embedding);

  ModelInferRequest e = ImageRequest({"x"});
  e.add_outputs()->set_name("stage3");
  e.add_outputs()->set_name("embedding");
  e.add_outputs()->set_name("stage1");
  (*e.mutable_parameters())["normalize"].set_bool_param(true);
  (*e.mutable_parameters())["timeout"].set_int64_param(250000);
  (*e.mutable_parameters())["priority"].set_int64_param(1);  // Accepted, ignored.
  call = ToOipCall(e, Classifier());
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->params.kind, InferenceRequest::Kind::kEmbed);
  EXPECT_THAT(call->params.stages, ElementsAre(3, 1));
  EXPECT_TRUE(call->params.include_embedding);
  EXPECT_TRUE(call->params.normalize);
  EXPECT_EQ(call->timeout, absl::Milliseconds(250));
  e.add_outputs()->set_name("stage1");
  EXPECT_THAT(ErrorOf(e), HasSubstr("output stage1 is asked for twice"));
  e.mutable_outputs(3)->set_name("logits");
  EXPECT_THAT(ErrorOf(e), HasSubstr("has no output 'logits'; its outputs: probabilities, "
                                    "embedding, stage1, stage2, stage3, stage4"));

  OipModel backbone = Classifier();
  backbone.num_classes = 0;
  backbone.has_embedding = false;
  EXPECT_THAT(ErrorOf(ImageRequest({"x"}), backbone), HasSubstr("ask for stage1..stage4"));
}

TEST(OipConvertTest, AnswersBecomeRawOutputs) {
  ModelInferRequest r = ImageRequest({"a", "b"});
  absl::StatusOr<OipCall> call = ToOipCall(r, Classifier());
  ASSERT_TRUE(call.ok());
  v1::ClassifyResponse classify;
  for (int i = 0; i < 2; ++i) {
    v1::Classification* c = classify.add_results();
    for (int k : {2, 0, 1}) {
      v1::ClassScore* s = c->add_classes();
      s->set_index(k);
      s->set_score(0.1f * static_cast<float>(k + 1 + i));
      s->set_label(kLabels[k]);
    }
  }
  ModelInferResponse response;
  ASSERT_TRUE(FillInferResponse(*call, Classifier(), &classify, nullptr, &response).ok());
  ASSERT_EQ(response.outputs_size(), 1);
  EXPECT_EQ(response.outputs(0).datatype(), "FP32");
  EXPECT_THAT(response.outputs(0).shape(), ElementsAre(2, 3));
  std::vector<float> dense(6);
  ASSERT_EQ(response.raw_output_contents(0).size(), 24u);
  std::memcpy(dense.data(), response.raw_output_contents(0).data(), 24);
  EXPECT_FLOAT_EQ(dense[0], 0.1f);  // Image 0, class 0.
  EXPECT_FLOAT_EQ(dense[5], 0.4f);  // Image 1, class 2.

  // Top-1 as BYTES "score:index:label".
  auto* out = r.add_outputs();
  out->set_name("probabilities");
  (*out->mutable_parameters())["classification"].set_int64_param(1);
  call = ToOipCall(r, Classifier());
  ASSERT_TRUE(call.ok());
  for (auto& c : *classify.mutable_results()) c.mutable_classes()->DeleteSubrange(1, 2);
  response.Clear();
  ASSERT_TRUE(FillInferResponse(*call, Classifier(), &classify, nullptr, &response).ok());
  EXPECT_EQ(response.outputs(0).datatype(), "BYTES");
  EXPECT_THAT(response.outputs(0).shape(), ElementsAre(2, 1));
  EXPECT_EQ(response.raw_output_contents(0), LengthPrefixed({"0.3:2:fox", "0.4:2:fox"}));

  // Embeddings and stages, concatenated over the images.
  ModelInferRequest e = ImageRequest({"a", "b"});
  e.add_outputs()->set_name("stage2");
  e.add_outputs()->set_name("embedding");
  call = ToOipCall(e, Classifier());
  ASSERT_TRUE(call.ok());
  v1::EmbedResponse embed;
  for (int i = 0; i < 2; ++i) {
    v1::Embedding* x = embed.add_results();
    x->mutable_embedding()->add_shape(2);
    x->mutable_embedding()->set_data(std::string(8, static_cast<char>('a' + i)));
    v1::Tensor* s = x->add_stages();
    for (int64_t d : {1, 1, 2}) s->add_shape(d);
    s->set_data(std::string(8, static_cast<char>('x' + i)));
  }
  response.Clear();
  ASSERT_TRUE(FillInferResponse(*call, Classifier(), nullptr, &embed, &response).ok());
  ASSERT_EQ(response.outputs_size(), 2);
  EXPECT_EQ(response.outputs(0).name(), "stage2");
  EXPECT_THAT(response.outputs(0).shape(), ElementsAre(2, 1, 1, 2));
  EXPECT_EQ(response.raw_output_contents(0), std::string(8, 'x') + std::string(8, 'y'));
  EXPECT_THAT(response.outputs(1).shape(), ElementsAre(2, 2));
  EXPECT_EQ(response.raw_output_contents(1), std::string(8, 'a') + std::string(8, 'b'));
  // Maps of different shapes cannot form one tensor.
  embed.mutable_results(1)->mutable_stages(0)->set_shape(2, 3);
  response.Clear();
  EXPECT_THAT(
      std::string(FillInferResponse(*call, Classifier(), nullptr, &embed, &response).message()),
      HasSubstr("maps of different shapes"));
}

TEST(OipConvertTest, MetadataDescribesWhatIsAccepted) {
  inference::ModelMetadataResponse m = OipMetadata(Classifier());
  EXPECT_EQ(m.name(), "m");
  EXPECT_THAT(m.versions(), ElementsAre("1"));
  ASSERT_EQ(m.inputs_size(), 3);
  EXPECT_EQ(m.inputs(0).name(), "IMAGE");
  EXPECT_EQ(m.inputs(0).datatype(), "BYTES");
  ASSERT_EQ(m.outputs_size(), 6);
  EXPECT_EQ(m.outputs(0).name(), "probabilities");
  EXPECT_THAT(m.outputs(0).shape(), ElementsAre(-1, 3));
  EXPECT_THAT(m.outputs(1).shape(), ElementsAre(-1, 32));
  EXPECT_THAT(m.outputs(3).shape(), ElementsAre(-1, 8, -1, -1));
  OipModel backbone = Classifier();
  backbone.num_classes = 0;
  backbone.has_embedding = false;
  EXPECT_EQ(OipMetadata(backbone).outputs_size(), 4);
}

}  // namespace
}  // namespace convnext::server

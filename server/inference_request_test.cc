// InferenceRequest: every image ends exactly once and the call is answered once, after the last
// image, with the first error; a failed call's other images see Abandoned(); results are written
// only while the call is still OK.
#include "server/inference_request.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace convnext::server {
namespace {

struct Answer {
  int calls = 0;
  absl::Status status;
};

std::shared_ptr<InferenceRequest> Classify(int images, v1::ClassifyResponse* response,
                                           Answer* answer) {
  for (int i = 0; i < images; ++i) response->add_results();
  return std::make_shared<InferenceRequest>(InferenceRequest::Params(), images,
                                            absl::InfiniteFuture(), /*ctx=*/nullptr, response,
                                            /*embed=*/nullptr, [answer](const absl::Status& s) {
                                              ++answer->calls;
                                              answer->status = s;
                                            });
}

TEST(InferenceRequestTest, AnsweredOnceAfterTheLastImageWithTimings) {
  v1::ClassifyResponse response;
  Answer answer;
  auto request = Classify(3, &response, &answer);
  request->RecordTimings(10, 20, 30);
  request->RecordTimings(5, 40, 1);
  request->ImageDone(absl::OkStatus());
  request->ImageDone(absl::OkStatus());
  EXPECT_EQ(answer.calls, 0);
  EXPECT_FALSE(request->Abandoned());
  request->ImageDone(absl::OkStatus());
  EXPECT_EQ(answer.calls, 1);
  EXPECT_TRUE(answer.status.ok());
  // The largest of each timing.
  EXPECT_EQ(response.timings().queue_us(), 10);
  EXPECT_EQ(response.timings().preprocess_us(), 40);
  EXPECT_EQ(response.timings().compute_us(), 30);
  EXPECT_GE(response.timings().server_us(), 0);
}

TEST(InferenceRequestTest, FirstErrorWinsAndTheRestAreAbandoned) {
  v1::ClassifyResponse response;
  Answer answer;
  auto request = Classify(3, &response, &answer);
  request->ImageDone(absl::InvalidArgumentError("image 1: not an image"));
  EXPECT_TRUE(request->Abandoned());
  bool filled = false;
  request->Fill([&](v1::ClassifyResponse*, v1::EmbedResponse*) { filled = true; });
  EXPECT_FALSE(filled) << "results are not written into a failed call";
  request->ImageDone(absl::InternalError("later"));
  request->ImageDone(absl::OkStatus());
  EXPECT_EQ(answer.calls, 1);
  EXPECT_EQ(answer.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(answer.status.message(), "image 1: not an image");
  EXPECT_FALSE(response.has_timings()) << "a failed call reports no timings";
}

TEST(InferenceRequestTest, ImagesEndingOnManyThreadsAnswerExactlyOnce) {
  constexpr int kImages = 64;
  for (int round = 0; round < 20; ++round) {
    v1::ClassifyResponse response;
    std::atomic<int> calls{0};
    for (int i = 0; i < kImages; ++i) response.add_results();
    auto request = std::make_shared<InferenceRequest>(
        InferenceRequest::Params(), kImages, absl::InfiniteFuture(), nullptr, &response, nullptr,
        [&calls](const absl::Status&) { ++calls; });
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = t; i < kImages; i += 4) {
          request->Fill([i](v1::ClassifyResponse* r, v1::EmbedResponse*) {
            r->mutable_results(i)->add_classes()->set_index(i);
          });
          request->ImageDone(absl::OkStatus());
        }
      });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(calls, 1);
    for (int i = 0; i < kImages; ++i) EXPECT_EQ(response.results(i).classes(0).index(), i);
  }
}

}  // namespace
}  // namespace convnext::server

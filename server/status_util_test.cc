// absl::Status -> grpc::Status: codes carried over one to one, long messages truncated to
// kMaxStatusMessageBytes (a status message travels in an HTTP/2 header).
#include "server/status_util.h"

#include <gtest/gtest.h>

#include <string>

namespace convnext::server {
namespace {

TEST(StatusUtilTest, CodesAndMessagesCarryOver) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const struct {
    absl::Status in;
    grpc::StatusCode out;
  } cases[] = {
      {absl::InvalidArgumentError("bad"), grpc::StatusCode::INVALID_ARGUMENT},
      {absl::NotFoundError("bad"), grpc::StatusCode::NOT_FOUND},
      {absl::UnavailableError("bad"), grpc::StatusCode::UNAVAILABLE},
      {absl::ResourceExhaustedError("bad"), grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::DeadlineExceededError("bad"), grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::FailedPreconditionError("bad"), grpc::StatusCode::FAILED_PRECONDITION},
      {absl::CancelledError("bad"), grpc::StatusCode::CANCELLED},
      {absl::InternalError("bad"), grpc::StatusCode::INTERNAL},
  };
  for (const auto& c : cases) {
    const grpc::Status s = ToGrpcStatus(c.in);
    EXPECT_EQ(s.error_code(), c.out) << c.in;
    EXPECT_EQ(s.error_message(), "bad");
  }
}

TEST(StatusUtilTest, LongMessagesAreTruncatedWithAnEllipsis) {
  const std::string exact(kMaxStatusMessageBytes, 'a');
  EXPECT_EQ(ToGrpcStatus(absl::InternalError(exact)).error_message(), exact);
  const grpc::Status s = ToGrpcStatus(absl::InternalError(std::string(100'000, 'b')));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INTERNAL);
  ASSERT_EQ(s.error_message().size(), kMaxStatusMessageBytes);
  EXPECT_EQ(s.error_message().substr(kMaxStatusMessageBytes - 4), "b...");
}

}  // namespace
}  // namespace convnext::server

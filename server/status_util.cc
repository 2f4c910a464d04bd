#include "server/status_util.h"

#include <string>

namespace convnext::server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.size() > kMaxStatusMessageBytes) {
    message.resize(kMaxStatusMessageBytes - 3);
    message += "...";
  }
  // absl::StatusCode and grpc::StatusCode share their numbering (both follow google.rpc.Code).
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), message);
}

absl::Time DeadlineOf(const grpc::CallbackServerContext& ctx) {
  if (ctx.raw_deadline().tv_sec == INT64_MAX) return absl::InfiniteFuture();  // No deadline.
  return absl::FromChrono(ctx.deadline());
}

}  // namespace convnext::server

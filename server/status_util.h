// Conversion of absl::Status to grpc::Status: the one place where our error codes become the
// codes a gRPC client sees; and of a call's gRPC deadline to absl::Time. Messages longer than
// kMaxStatusMessageBytes are truncated (a status message travels in an HTTP/2 header).
#ifndef CONVNEXT_SERVER_STATUS_UTIL_H_
#define CONVNEXT_SERVER_STATUS_UTIL_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace convnext::server {

inline constexpr size_t kMaxStatusMessageBytes = 1024;

grpc::Status ToGrpcStatus(const absl::Status& status);

// The call's deadline; InfiniteFuture when the client set none.
absl::Time DeadlineOf(const grpc::CallbackServerContext& ctx);

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_STATUS_UTIL_H_

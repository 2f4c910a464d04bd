// convnext::client::Client: a thin C++ client for convnext-serve's gRPC API
// (convnext.v1.ImageModelService, grpc.health.v1.Health). It links only the generated proto code
// and gRPC, never the model or the server. Installed as <convnext/client.h> with the CMake
// package convnext_client (target convnext::client). In a function that returns absl::Status:
//
//   convnext::client::ClientOptions options;
//   options.target = "localhost:50051";
//   absl::StatusOr<std::unique_ptr<convnext::client::Client>> client =
//       convnext::client::Client::Create(options);
//   if (!client.ok()) return client.status();
//   convnext::v1::ClassifyRequest request;
//   request.add_images()->set_encoded(jpeg_bytes);
//   absl::StatusOr<convnext::v1::ClassifyResponse> response = (*client)->Classify(request);
//   if (!response.ok()) return response.status();
//
// Every call has a deadline (ClientOptions::deadline). Calls that fail with a retryable status
// (UNAVAILABLE: server draining, queue or memory budget full, connection refused) are retried
// up to max_attempts in all, after exponential backoff with full jitter, as long as the deadline
// allows. Results are absl::StatusOr with the server's status code and message.
//
// Thread-safe: one Client may serve many threads; calls run concurrently on one channel.
#ifndef CONVNEXT_CLIENT_H_
#define CONVNEXT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "convnext/v1/image_model.grpc.pb.h"

namespace convnext::client {

struct ClientOptions {
  // gRPC target: "host:port", "dns:///name:port", "unix:/path".
  std::string target = "localhost:50051";
  // Deadline of each call, retries included.
  absl::Duration deadline = absl::Seconds(60);
  // Largest message sent or received: images and feature maps can be large.
  int max_message_bytes = 64 << 20;
  // Attempts per call for retryable statuses (1 disables retries).
  int max_attempts = 3;
  // Backoff before retry n (1-based) is uniform in [0, min(max_backoff, initial * 2^(n-1))].
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  // gRPC load-balancing policy: "" (pick_first) or "round_robin", which spreads calls over every
  // address a DNS name resolves to (e.g. a Kubernetes headless Service).
  std::string load_balancing_policy;
  // TLS: PEM contents (not paths). Empty tls_root_certs means plaintext. tls_cert_chain and
  // tls_private_key present a client certificate (mutual TLS).
  std::string tls_root_certs;
  std::string tls_cert_chain;
  std::string tls_private_key;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);

  absl::StatusOr<v1::ClassifyResponse> Classify(const v1::ClassifyRequest& request);
  absl::StatusOr<v1::EmbedResponse> Embed(const v1::EmbedRequest& request);
  // Embed through EmbedStream: the answer arrives in pieces of at most `chunk_bytes` of tensor
  // data (0: the server's 1 MiB) and is reassembled into the EmbedResponse that Embed would
  // return, so that no message is larger than a piece however large the answer. INTERNAL if the
  // stream breaks its protocol (a piece out of order, a tensor left incomplete).
  absl::StatusOr<v1::EmbedResponse> EmbedStreamed(const v1::EmbedRequest& request,
                                                  uint32_t chunk_bytes = 0);
  absl::StatusOr<v1::ListModelsResponse> ListModels();
  absl::StatusOr<v1::ModelInfo> GetModel(const std::string& name);
  // ModelControl (the server must run with --enable_model_control): load or reload a version
  // from a ModelConfig in protobuf text format; unload a version (every version when empty);
  // set the version an empty version selects (empty: the latest).
  absl::StatusOr<v1::LoadModelResponse> LoadModel(const std::string& config, bool make_default);
  absl::StatusOr<v1::UnloadModelResponse> UnloadModel(const std::string& name,
                                                      const std::string& version);
  absl::StatusOr<v1::SetDefaultVersionResponse> SetDefaultVersion(const std::string& name,
                                                                  const std::string& version);
  // grpc.health.v1 status of `service` ("" = the whole server): true if SERVING.
  absl::StatusOr<bool> Health(const std::string& service = "");

  // Whether the server cannot be reached: the channel's connectivity state is
  // TRANSIENT_FAILURE (connection refused, name not resolved, TLS handshake failed), waiting up
  // to `wait` for a connection attempt that is still under way. A call that failed with
  // UNAVAILABLE while this is false was refused by a server that was reached (draining,
  // overloaded). Blocks for at most `wait`.
  bool IsUnreachable(absl::Duration wait = absl::Seconds(2));

  // Asynchronous forms: `done` runs once, on a gRPC thread, with the result (retries included).
  // The request is copied. The Client must outlive the call; it may be destroyed once `done` has
  // run, but not from inside `done` (that would destroy the channel on gRPC's callback thread).
  void ClassifyAsync(const v1::ClassifyRequest& request,
                     std::function<void(absl::StatusOr<v1::ClassifyResponse>)> done);
  void EmbedAsync(const v1::EmbedRequest& request,
                  std::function<void(absl::StatusOr<v1::EmbedResponse>)> done);

  const ClientOptions& options() const { return options_; }

 private:
  Client(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel);

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ImageModelService::Stub> stub_;
  std::unique_ptr<v1::ModelControl::Stub> control_;
};

// True for the statuses a call is retried on.
bool IsRetryable(absl::StatusCode code);

// The values of a tensor the server answered with, as float32 in row-major order: FP32 as it is,
// FP16 and BF16 widened (exactly), INT8 multiplied by its scales (Tensor.scales along
// scale_axis). INVALID_ARGUMENT if the data does not hold product(shape) elements of its dtype,
// or an INT8 tensor's scales do not match its scale_axis.
absl::StatusOr<std::vector<float>> TensorValues(const v1::Tensor& tensor);

}  // namespace convnext::client

#endif  // CONVNEXT_CLIENT_H_

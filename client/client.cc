#include "convnext/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "health.grpc.pb.h"

namespace convnext::client {
namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

absl::Duration Backoff(const ClientOptions& o, int retry) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  absl::Duration cap = o.initial_backoff;
  for (int i = 1; i < retry && cap < o.max_backoff; ++i) cap *= 2;
  cap = std::min(cap, o.max_backoff);
  std::uniform_real_distribution<double> jitter(0.0, 1.0);
  return cap * jitter(rng);  // "Full jitter": spreads the retries of many clients.
}

// Runs `attempt(ctx)` until it succeeds, fails with a non-retryable status, runs out of attempts
// or would overrun the deadline.
template <typename Attempt>
absl::Status Call(const ClientOptions& o, Attempt attempt) {
  const absl::Time deadline = absl::Now() + o.deadline;
  absl::Status status;
  for (int n = 1;; ++n) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    status = FromGrpc(attempt(&ctx));
    if (status.ok() || !IsRetryable(status.code()) || n >= o.max_attempts) return status;
    const absl::Duration wait = Backoff(o, n);
    if (absl::Now() + wait >= deadline) return status;
    absl::SleepFor(wait);
  }
}

// The asynchronous form of Call: one attempt per callback, retried from the callback thread
// after a backoff (sleeping there is acceptable: it is a client-side gRPC thread).
template <typename Req, typename Resp, typename Method>
void CallAsync(const ClientOptions& o, Method method, std::shared_ptr<const Req> request,
               std::function<void(absl::StatusOr<Resp>)> done, absl::Time deadline, int n) {
  struct State {
    grpc::ClientContext ctx;
    Resp response;
  };
  auto state = std::make_shared<State>();
  state->ctx.set_deadline(absl::ToChronoTime(deadline));
  method(
      &state->ctx, request.get(), &state->response,
      [o, method, request, done = std::move(done), deadline, n, state](grpc::Status s) mutable {
        // The ClientContext holds a reference to the channel. It is released here, before the
        // caller hears of the result: a caller that then destroys the Client must not leave the
        // last channel reference to this callback, because destroying a channel on one of
        // gRPC's callback threads tears down the queue that thread is serving (a use after
        // free inside gRPC, found by the ThreadSanitizer run).
        Resp response = std::move(state->response);
        state.reset();
        absl::Status status = FromGrpc(s);
        if (status.ok()) return done(std::move(response));
        const absl::Duration wait = Backoff(o, n);
        if (!IsRetryable(status.code()) || n >= o.max_attempts || absl::Now() + wait >= deadline) {
          return done(status);
        }
        absl::SleepFor(wait);
        CallAsync<Req, Resp>(o, method, request, done, deadline, n + 1);
      });
}

// A blocking unary call of `method` with retries (Call).
template <typename Stub, typename Req, typename Resp>
absl::StatusOr<Resp> Unary(const ClientOptions& o, Stub* stub,
                           grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                           const Req& request) {
  Resp response;
  absl::Status s =
      Call(o, [&](grpc::ClientContext* ctx) { return (stub->*method)(ctx, request, &response); });
  if (!s.ok()) return s;
  return response;
}

}  // namespace

bool IsRetryable(absl::StatusCode code) {
  // RESOURCE_EXHAUSTED is not: the server says it for a request that can never fit (over the
  // message size or the memory budget), and a retry would only be refused again.
  return code == absl::StatusCode::kUnavailable;
}

namespace {

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f;
  const uint32_t mantissa = h & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // Zero or subnormal.
  } else if (exponent == 31) {
    magnitude = mantissa == 0 ? std::numeric_limits<float>::infinity()
                              : std::numeric_limits<float>::quiet_NaN();
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
  }
  return sign != 0 ? -magnitude : magnitude;
}

}  // namespace

namespace {

// The elements a tensor's shape holds and the bytes its dtype gives each.
absl::Status Layout(const v1::Tensor& tensor, int64_t* elements, int64_t* element_bytes) {
  int64_t n = 1;
  for (int64_t d : tensor.shape()) {
    if (d < 0 || (d > 0 && n > (int64_t{1} << 40) / d)) {
      return absl::InvalidArgumentError("tensor shape has a negative or huge dimension");
    }
    n *= d;
  }
  switch (tensor.dtype()) {
    case v1::DATA_TYPE_UNSPECIFIED:
    case v1::FP32:
      *element_bytes = 4;
      break;
    case v1::FP16:
    case v1::BF16:
      *element_bytes = 2;
      break;
    case v1::INT8:
      *element_bytes = 1;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown tensor dtype ", static_cast<int>(tensor.dtype())));
  }
  *elements = n;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<float>> TensorValues(const v1::Tensor& tensor) {
  int64_t n = 0, element = 0;
  if (absl::Status s = Layout(tensor, &n, &element); !s.ok()) return s;
  const v1::DataType dtype =
      tensor.dtype() == v1::DATA_TYPE_UNSPECIFIED ? v1::FP32 : tensor.dtype();
  const std::string& data = tensor.data();
  if (static_cast<int64_t>(data.size()) != n * element) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor data has ", data.size(), " bytes; its shape and dtype need ", n * element));
  }
  std::vector<float> out(n);
  const auto* bytes = reinterpret_cast<const unsigned char*>(data.data());
  switch (dtype) {
    case v1::FP32:
      std::memcpy(out.data(), bytes, data.size());
      break;
    case v1::FP16:
      for (int64_t i = 0; i < n; ++i) out[i] = HalfToFloat(bytes[2 * i] | bytes[2 * i + 1] << 8);
      break;
    case v1::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(bytes[2 * i] | bytes[2 * i + 1] << 8) << 16;
        std::memcpy(&out[i], &bits, sizeof(float));
      }
      break;
    default: {  // INT8.
      const int axis = tensor.scale_axis();
      const int64_t channels =
          axis < 0 ? 1 : (axis < tensor.shape_size() ? tensor.shape(axis) : -1);
      if (channels < 0 || tensor.scales_size() != channels) {
        return absl::InvalidArgumentError(absl::StrCat("INT8 tensor has ", tensor.scales_size(),
                                                       " scales for scale_axis ", axis));
      }
      // Elements per index of the scale axis, and how many times the axis repeats.
      int64_t inner = 1;
      for (int d = axis + 1; axis >= 0 && d < tensor.shape_size(); ++d) inner *= tensor.shape(d);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = axis < 0 ? 0 : (i / inner) % channels;
        out[i] = static_cast<float>(static_cast<int8_t>(bytes[i])) * tensor.scales(c);
      }
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("empty target");
  if (options.max_attempts < 1) return absl::InvalidArgumentError("max_attempts must be >= 1");
  if (options.deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("deadline must be positive");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (!options.load_balancing_policy.empty()) {
    args.SetLoadBalancingPolicyName(options.load_balancing_policy);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.tls_root_certs.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    ssl.pem_cert_chain = options.tls_cert_chain;
    ssl.pem_private_key = options.tls_private_key;
    credentials = grpc::SslCredentials(ssl);
  } else if (!options.tls_cert_chain.empty()) {
    return absl::InvalidArgumentError("a client certificate needs tls_root_certs (TLS)");
  }
  auto channel = grpc::CreateCustomChannel(options.target, credentials, args);
  return std::unique_ptr<Client>(new Client(options, std::move(channel)));
}

Client::Client(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::ImageModelService::NewStub(channel_)),
      control_(v1::ModelControl::NewStub(channel_)) {}

absl::StatusOr<v1::LoadModelResponse> Client::LoadModel(const std::string& config,
                                                        bool make_default) {
  v1::LoadModelRequest request;
  request.set_config(config);
  request.set_make_default(make_default);
  return Unary(options_, control_.get(), &v1::ModelControl::Stub::LoadModel, request);
}

absl::StatusOr<v1::UnloadModelResponse> Client::UnloadModel(const std::string& name,
                                                            const std::string& version) {
  v1::UnloadModelRequest request;
  request.set_name(name);
  request.set_version(version);
  return Unary(options_, control_.get(), &v1::ModelControl::Stub::UnloadModel, request);
}

absl::StatusOr<v1::SetDefaultVersionResponse> Client::SetDefaultVersion(
    const std::string& name, const std::string& version) {
  v1::SetDefaultVersionRequest request;
  request.set_name(name);
  request.set_version(version);
  return Unary(options_, control_.get(), &v1::ModelControl::Stub::SetDefaultVersion, request);
}

absl::StatusOr<v1::ClassifyResponse> Client::Classify(const v1::ClassifyRequest& request) {
  return Unary(options_, stub_.get(), &v1::ImageModelService::Stub::Classify, request);
}

absl::StatusOr<v1::EmbedResponse> Client::Embed(const v1::EmbedRequest& request) {
  return Unary(options_, stub_.get(), &v1::ImageModelService::Stub::Embed, request);
}

absl::StatusOr<v1::EmbedResponse> Client::EmbedStreamed(const v1::EmbedRequest& request,
                                                        uint32_t chunk_bytes) {
  v1::EmbedStreamRequest stream_request;
  *stream_request.mutable_request() = request;
  stream_request.set_chunk_bytes(chunk_bytes);
  v1::EmbedResponse response;
  absl::Status protocol;  // A broken stream, which retrying would not mend.
  const absl::Status s = Call(options_, [&](grpc::ClientContext* ctx) {
    response.Clear();
    std::unique_ptr<grpc::ClientReader<v1::EmbedChunk>> reader =
        stub_->EmbedStream(ctx, stream_request);
    std::vector<v1::Tensor*> tensors;  // In answer order.
    bool header = false;
    v1::EmbedChunk chunk;
    while (protocol.ok() && reader->Read(&chunk)) {
      if (!header) {
        if (!chunk.has_header()) {
          protocol = absl::InternalError("EmbedStream: the first message has no header");
          break;
        }
        response = std::move(*chunk.mutable_header());
        header = true;
        for (v1::Embedding& e : *response.mutable_results()) {
          if (e.embedding().shape_size() > 0) tensors.push_back(e.mutable_embedding());
          for (v1::Tensor& t : *e.mutable_stages()) tensors.push_back(&t);
          for (v1::Tensor& t : *e.mutable_regions()) tensors.push_back(&t);
        }
        continue;
      }
      if (chunk.tensor() >= tensors.size() ||
          chunk.offset() != tensors[chunk.tensor()]->data().size()) {
        protocol =
            absl::InternalError(absl::StrCat("EmbedStream: a piece of tensor ", chunk.tensor(),
                                             " at offset ", chunk.offset(), " is out of order"));
        break;
      }
      tensors[chunk.tensor()]->mutable_data()->append(chunk.data());
    }
    if (!protocol.ok()) {
      ctx->TryCancel();
      reader->Finish();
      return grpc::Status::OK;  // `protocol` says what went wrong.
    }
    const grpc::Status finished = reader->Finish();
    if (!finished.ok()) return finished;
    if (!header) protocol = absl::InternalError("EmbedStream: the answer has no header");
    for (size_t i = 0; i < tensors.size() && protocol.ok(); ++i) {
      int64_t n = 0, element = 0;
      protocol = Layout(*tensors[i], &n, &element);
      if (protocol.ok() && static_cast<int64_t>(tensors[i]->data().size()) != n * element) {
        protocol =
            absl::InternalError(absl::StrCat("EmbedStream: tensor ", i, " has ",
                                             tensors[i]->data().size(), " bytes of ", n * element));
      }
    }
    return grpc::Status::OK;
  });
  if (!s.ok()) return s;
  if (!protocol.ok()) return protocol;
  return response;
}

absl::StatusOr<v1::ListModelsResponse> Client::ListModels() {
  return Unary(options_, stub_.get(), &v1::ImageModelService::Stub::ListModels,
               v1::ListModelsRequest());
}

absl::StatusOr<v1::ModelInfo> Client::GetModel(const std::string& name) {
  v1::GetModelRequest request;
  request.set_name(name);
  return Unary(options_, stub_.get(), &v1::ImageModelService::Stub::GetModel, request);
}

absl::StatusOr<bool> Client::Health(const std::string& service) {
  using grpc::health::v1::HealthCheckResponse;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  // A stub is a few pointers over the shared channel: made per call, so that the public header
  // needs none of the health proto's generated headers.
  std::unique_ptr<grpc::health::v1::Health::Stub> stub =
      grpc::health::v1::Health::NewStub(channel_);
  absl::StatusOr<HealthCheckResponse> response =
      Unary(options_, stub.get(), &grpc::health::v1::Health::Stub::Check, request);
  if (!response.ok()) return response.status();
  return response->status() == HealthCheckResponse::SERVING;
}

bool Client::IsUnreachable(absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
  // IDLE becomes CONNECTING on the attempt just requested; wait for that attempt's outcome.
  while ((state == GRPC_CHANNEL_IDLE || state == GRPC_CHANNEL_CONNECTING) &&
         channel_->WaitForStateChange(state, absl::ToChronoTime(deadline))) {
    state = channel_->GetState(/*try_to_connect=*/false);
  }
  return state == GRPC_CHANNEL_TRANSIENT_FAILURE;
}

void Client::ClassifyAsync(const v1::ClassifyRequest& request,
                           std::function<void(absl::StatusOr<v1::ClassifyResponse>)> done) {
  auto method = [stub = stub_.get()](grpc::ClientContext* ctx, const v1::ClassifyRequest* req,
                                     v1::ClassifyResponse* resp,
                                     std::function<void(grpc::Status)> cb) {
    stub->async()->Classify(ctx, req, resp, std::move(cb));
  };
  CallAsync<v1::ClassifyRequest, v1::ClassifyResponse>(
      options_, method, std::make_shared<const v1::ClassifyRequest>(request), std::move(done),
      absl::Now() + options_.deadline, 1);
}

void Client::EmbedAsync(const v1::EmbedRequest& request,
                        std::function<void(absl::StatusOr<v1::EmbedResponse>)> done) {
  auto method = [stub = stub_.get()](grpc::ClientContext* ctx, const v1::EmbedRequest* req,
                                     v1::EmbedResponse* resp,
                                     std::function<void(grpc::Status)> cb) {
    stub->async()->Embed(ctx, req, resp, std::move(cb));
  };
  CallAsync<v1::EmbedRequest, v1::EmbedResponse>(
      options_, method, std::make_shared<const v1::EmbedRequest>(request), std::move(done),
      absl::Now() + options_.deadline, 1);
}

}  // namespace convnext::client

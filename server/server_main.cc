// convnext-server: serves ConvNeXt models over gRPC (convnext.v1.ImageModelService), with
// grpc.health.v1 health checking and server reflection.
//
//   convnext-server --model NAME=CHECKPOINT [--model ...] [--config server.textproto]
//                   [--port 50051] [--default_model NAME] [--grace_period_s 30]
//
// Start-up: every model is loaded and warmed up before the port opens, so health is SERVING from
// the first moment it can be asked. SIGTERM/SIGINT: health turns NOT_SERVING, new calls are
// refused, admitted calls finish (up to the grace period), then the process exits 0.
// Exit codes: 0 clean shutdown, 1 start-up failure (one line on stderr), 2 usage.
#include <grpcpp/grpcpp.h>
#include <semaphore.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "model/process_tuning.h"
#include "server/log.h"
#include "server/machine.h"
#include "server/server.h"
#include "server/server_config.h"

// --model is repeatable, which absl flags are not: main() takes its occurrences out of argv
// before absl parses the rest. Declared here only so that --help lists it.
ABSL_FLAG(std::string, model, "",
          "NAME=CHECKPOINT, repeatable: a model to serve with default settings.");
ABSL_FLAG(std::string, config, "",
          "A ServerConfig file in protobuf text format (config.proto). Without --config and "
          "--model, the default model is served (default_model/server.textproto).");
ABSL_FLAG(std::string, default_model, "", "Model an empty model name selects (default: first).");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int, port, 50051, "gRPC port; 0 picks a free port (printed at start).");
ABSL_FLAG(int, metrics_port, 9090,
          "Port of the Prometheus /metrics endpoint; 0 picks a free port; -1 disables metrics.");
ABSL_FLAG(int, http_port, 8000,
          "Open Inference Protocol (KServe v2) HTTP/REST port; 0 picks a free port (printed at "
          "start); -1 disables it.");
ABSL_FLAG(std::string, http_host, "0.0.0.0", "IPv4 address of the HTTP/REST endpoint.");
ABSL_FLAG(int, http_read_timeout_s, 30,
          "Seconds an HTTP client has to send a whole request (from the connection's start or its "
          "previous answer); slower connections are closed.");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0",
          "Address the metrics endpoint binds to (e.g. 127.0.0.1 to keep it off the network).");
ABSL_FLAG(bool, access_log, false, "Log one line per call (off: the default at high rates).");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the server: serve gRPC over TLS (with --tls_key).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require and verify client certificates (mutual TLS). Needs --tls_cert.");
ABSL_FLAG(bool, enable_model_control, false,
          "Serve the ModelControl API (load, reload, unload models and set default versions at "
          "run time). Off: its calls are PERMISSION_DENIED.");
ABSL_FLAG(std::vector<std::string>, model_control_clients, {},
          "With mutual TLS (--tls_client_ca), the client certificate names (subject alternative "
          "name or common name) allowed to use ModelControl; required then.");
ABSL_FLAG(bool, watch_config, false,
          "Watch --config and apply valid edits of its models (new, changed, removed versions, "
          "default versions) without a restart; a bad edit is logged and ignored.");
ABSL_FLAG(double, watch_config_interval_s, 2,
          "How often --watch_config reads the file; an edit is applied once it has stayed the "
          "same for one more interval.");
ABSL_FLAG(int, grace_period_s, 30,
          "On SIGTERM, how long admitted calls may take to finish before being cancelled.");
ABSL_FLAG(int, max_batch_size, 0, "Override every model's max_batch_size (0: config/default).");
ABSL_FLAG(int64_t, max_batch_pixels, -1,
          "Override every model's batching.max_batch_pixels (variable-size batching; 0: off; "
          "-1: config/default).");
ABSL_FLAG(int, max_queue_delay_us, -1,
          "Override every model's max_queue_delay_us (-1: config/default).");

namespace convnext::server {
namespace {

// SIGTERM/SIGINT: the handler only posts (async-signal-safe); the main thread waits for it.
sem_t shutdown_requested;
volatile sig_atomic_t shutdown_signal = 0;

void OnShutdownSignal(int signal) {
  shutdown_signal = signal;
  sem_post(&shutdown_requested);
}

}  // namespace

// The process's arguments as it was started, for RestartWithOpenCvLimit.
char** g_original_argv = nullptr;

// OpenCV reads its own decoding limit (OPENCV_IO_MAX_IMAGE_PIXELS, default 2^30 pixels) once,
// in a static initializer, when its library is loaded: before main. The only way to give it our
// max_image_pixels is the environment the process starts with, so when that is not already ours
// the server starts itself again, at once, with it set. Every format we accept has its size
// checked from its header before decoding anyway; this makes OpenCV refuse a larger decode
// should its reading of a header ever differ from ours.
void RestartWithOpenCvLimit(uint64_t max_pixels) {
  constexpr char kVariable[] = "OPENCV_IO_MAX_IMAGE_PIXELS";
  const std::string want = absl::StrCat(max_pixels);
  const char* have = std::getenv(kVariable);
  if (have != nullptr && want == have) return;
  if (std::getenv("CONVNEXT_SERVER_RESTARTED") != nullptr || g_original_argv == nullptr) {
    Log("warning", "opencv_limit",
        {{"message", absl::StrCat(kVariable, " is ", have == nullptr ? "unset" : have,
                                  ", not max_image_pixels ", want)}});
    return;
  }
  setenv(kVariable, want.c_str(), 1);
  setenv("CONVNEXT_SERVER_RESTARTED", "1", 1);
  execv("/proc/self/exe", g_original_argv);
  Log("warning", "opencv_limit", {{"message", "cannot restart with OpenCV's limit set"}});
}

// The default model's config: beside the installed binary (../share/convnext-serve/) or
// in the source tree the binary was built in (build/bin/../../).
std::string DefaultConfigPath() {
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  std::string dir = n > 0 ? std::string(exe, n) : std::string();
  dir = dir.substr(0, dir.find_last_of('/') + 1);
  for (const char* relative : {"../share/convnext-serve/default_model/server.textproto",
                               "../../default_model/server.textproto"}) {
    const std::string path = dir + relative;
    if (access(path.c_str(), R_OK) == 0) return path;
  }
  return dir + "../share/convnext-serve/default_model/server.textproto";
}

absl::StatusOr<ServerConfig> BuildConfig(const std::vector<std::string>& model_flags) {
  server::ServerConfig config;
  std::string config_path = absl::GetFlag(FLAGS_config);
  if (config_path.empty() && model_flags.empty()) {
    config_path = DefaultConfigPath();
    Log("info", "default_model", {{"config", config_path}});
  }
  if (!config_path.empty()) {
    absl::StatusOr<server::ServerConfig> file = ReadConfigFile(config_path);
    if (!file.ok()) return file.status();
    config = *std::move(file);
  }
  for (const std::string& flag : model_flags) {
    absl::StatusOr<server::ModelConfig> model = ParseModelFlag(flag);
    if (!model.ok()) return model.status();
    *config.add_model() = *std::move(model);
  }
  if (!absl::GetFlag(FLAGS_default_model).empty()) {
    config.set_default_model(absl::GetFlag(FLAGS_default_model));
  }
  for (server::ModelConfig& m : *config.mutable_model()) {
    if (absl::GetFlag(FLAGS_max_batch_size) > 0) {
      m.mutable_batching()->set_max_batch_size(absl::GetFlag(FLAGS_max_batch_size));
    }
    if (absl::GetFlag(FLAGS_max_batch_pixels) >= 0) {
      m.mutable_batching()->set_max_batch_pixels(
          static_cast<uint64_t>(absl::GetFlag(FLAGS_max_batch_pixels)));
    }
    if (absl::GetFlag(FLAGS_max_queue_delay_us) >= 0) {
      // Zero means "unset" in the config, so an explicit 0 becomes 1 microsecond.
      m.mutable_batching()->set_max_queue_delay_us(
          std::max(1, absl::GetFlag(FLAGS_max_queue_delay_us)));
    }
  }
  const MachineResources machine = ReadMachineResources();
  Log("info", "machine",
      {{"cores", absl::StrCat(machine.cores)},
       {"cores_from", machine.cores_source},
       {"memory_bytes", absl::StrCat(machine.memory_bytes)},
       {"memory_from", machine.memory_source}});
  NormalizeConfig(&config, machine.cores, machine.memory_bytes);
  RestartWithOpenCvLimit(config.max_image_pixels());
  if (absl::Status s = ValidateServerConfig(config); !s.ok()) return s;
  return config;
}

absl::StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, " '", path, "' cannot be read"));
  std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " '", path, "' is not PEM"));
  }
  return pem;
}

// Insecure by default; TLS with --tls_cert/--tls_key; mutual TLS with --tls_client_ca.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key),
                    client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (cert.empty() && key.empty() && client_ca.empty()) return grpc::InsecureServerCredentials();
  if (cert.empty() || key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls_cert and --tls_key");
  }
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPem("tls_cert", cert));
  ASSIGN_OR_RETURN(pair.private_key, ReadPem("tls_key", key));
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!client_ca.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem("tls_client_ca", client_ca));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// Removes every "--model V" / "--model=V" from argv and returns the values.
std::vector<std::string> TakeModelFlags(int* argc, char** argv) {
  std::vector<std::string> values;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--model" || arg == "-model") && i + 1 < *argc) {
      values.push_back(argv[++i]);
    } else if (arg.rfind("--model=", 0) == 0 || arg.rfind("-model=", 0) == 0) {
      values.push_back(arg.substr(arg.find('=') + 1));
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  return values;
}

int Run(const std::vector<std::string>& model_flags) {
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "convnext-server: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  absl::StatusOr<ServerConfig> config = BuildConfig(model_flags);
  if (!config.ok()) return fail(config.status());
  ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.http_host = absl::GetFlag(FLAGS_http_host);
  options.http_port = absl::GetFlag(FLAGS_http_port);
  options.http_read_deadline = absl::Seconds(std::max(1, absl::GetFlag(FLAGS_http_read_timeout_s)));
  options.version = CONVNEXT_VERSION;
  options.libtorch_version = TORCH_VERSION;
  options.access_log = absl::GetFlag(FLAGS_access_log);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ServerCredentials();
  if (!credentials.ok()) return fail(credentials.status());
  // The HTTP endpoint: HTTPS with the same certificate and key when TLS is on, and mutual TLS
  // with the same client CA (ServerCredentials() has checked the flags).
  if (!absl::GetFlag(FLAGS_tls_cert).empty()) {
    absl::StatusOr<std::string> cert = ReadPem("tls_cert", absl::GetFlag(FLAGS_tls_cert));
    absl::StatusOr<std::string> key = ReadPem("tls_key", absl::GetFlag(FLAGS_tls_key));
    if (!cert.ok()) return fail(cert.status());
    if (!key.ok()) return fail(key.status());
    options.http_tls_cert_pem = *cert;
    options.http_tls_key_pem = *key;
    if (!absl::GetFlag(FLAGS_tls_client_ca).empty()) {
      absl::StatusOr<std::string> ca = ReadPem("tls_client_ca", absl::GetFlag(FLAGS_tls_client_ca));
      if (!ca.ok()) return fail(ca.status());
      options.http_tls_client_ca_pem = *ca;
    }
  }
  options.credentials = *std::move(credentials);
  options.memory_limit_bytes = ReadMachineResources().memory_bytes;
  options.enable_model_control = absl::GetFlag(FLAGS_enable_model_control);
  options.control_clients = absl::GetFlag(FLAGS_model_control_clients);
  options.control_require_identity = !absl::GetFlag(FLAGS_tls_client_ca).empty();
  if (options.enable_model_control && options.control_require_identity &&
      options.control_clients.empty()) {
    return fail(absl::InvalidArgumentError(
        "--enable_model_control with mutual TLS needs --model_control_clients (the client "
        "certificate names allowed to change the models)"));
  }
  if (options.enable_model_control && absl::GetFlag(FLAGS_tls_client_ca).empty()) {
    Log("warning", "model_control",
        {{"message",
          "ModelControl is on without mutual TLS: any client that reaches the port may "
          "load and unload models"}});
  }
  if (absl::GetFlag(FLAGS_watch_config)) {
    if (absl::GetFlag(FLAGS_config).empty()) {
      return fail(absl::InvalidArgumentError("--watch_config needs --config"));
    }
    options.watch_config_path = absl::GetFlag(FLAGS_config);
    options.watch_interval =
        absl::Seconds(std::max(0.05, absl::GetFlag(FLAGS_watch_config_interval_s)));
  }

  // The shutdown signals are blocked in every thread the server starts (they inherit this
  // thread's mask) and handled on this thread alone, once it is serving: one that arrives while
  // the models load waits until then. A handler (not sigwait) so that a signal the kernel hands
  // to a thread started before this point (a library's) is handled too, never the default
  // action that kills the process.
  sem_init(&shutdown_requested, 0, 0);
  struct sigaction action = {};
  action.sa_handler = OnShutdownSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<Server>> server = Server::Create(*config, options);
  if (!server.ok()) return fail(server.status());
  Log("info", "serving",
      {{"models", absl::StrCat(config->model_size())},
       {"host", options.host},
       {"port", absl::StrCat((*server)->port())},
       {"metrics_port", absl::StrCat((*server)->metrics_port())},
       {"http_port", absl::StrCat((*server)->http_port())},
       {"default_model", config->default_model()}});

  pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
  while (sem_wait(&shutdown_requested) != 0 && errno == EINTR) {
  }
  const int signal = shutdown_signal;
  Log("info", "draining",
      {{"signal", signal == SIGTERM ? "SIGTERM" : "SIGINT"},
       {"grace_period_s", absl::StrCat(absl::GetFlag(FLAGS_grace_period_s))}});
  const int64_t left =
      (*server)->Drain(absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_grace_period_s)));
  Log("info", "drained", {{"pending_images", absl::StrCat(left)}});
  server->reset();
  Log("info", "stopped", {});
  return 0;
}

}  // namespace convnext::server

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "convnext-server --model NAME=CHECKPOINT [--model ...] [--config FILE] [--port 50051]");
  // Kept whole (TakeModelFlags edits argv in place) for RestartWithOpenCvLimit.
  std::vector<char*> original(argv, argv + argc);
  original.push_back(nullptr);
  convnext::server::g_original_argv = original.data();
  const std::vector<std::string> models = convnext::server::TakeModelFlags(&argc, argv);
  absl::ParseCommandLine(argc, argv);
  convnext::ConfigureProcessForInference();
  return convnext::server::Run(models);
}

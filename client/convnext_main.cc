// convnext: the command-line client of convnext-serve.
//
//   convnext classify IMG... [--model M] [--top_k K] [--json]
//   convnext embed IMG [--model M] [--stages 1,2,3,4] [--normalize] [--keep_size]
//                  [--boxes x1,y1,x2,y2[;...] [--region_stages 4] [--region_size K]] --out DIR
//   convnext models [--json]
//   convnext health
//   convnext load CONFIG [--make_default]      (CONFIG: ModelConfig text, or a file holding it)
//   convnext unload NAME [--model_version V]
//   convnext default NAME [--model_version V]  (no version: the latest)
//   convnext bench [IMG...] [--images DIR] --concurrency N (--duration S | --requests N)
//                  [--rate R] [--model M] [--json]
//
// Global: --target host:port (default localhost:50051), --timeout_s, --retries.
// Exit codes: 0 success (health: SERVING); 1 the server answered with an error or is not serving;
// 2 usage error; 3 an input file cannot be read; 4 the server cannot be reached.
// Errors are one line on stderr.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/load_generator.h"
#include "client/npy_writer.h"
#include "convnext/client.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, target, "localhost:50051", "Server address.");
ABSL_FLAG(double, timeout_s, 60, "Deadline of each call, seconds.");
ABSL_FLAG(int, retries, 2, "Retries of UNAVAILABLE (bench: none).");
ABSL_FLAG(std::string, model, "", "Model name; empty: the server's default.");
ABSL_FLAG(std::string, model_version, "",
          "Model version or version label; empty: the model's default version.");
ABSL_FLAG(bool, make_default, false, "load: make the version its model's default once ready.");
ABSL_FLAG(std::string, tls_ca, "", "PEM file of the CA that signed the server: use TLS.");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS; with --tls_key).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(int, top_k, 5, "classify: classes per image.");
ABSL_FLAG(bool, json, false, "Print JSON instead of a table.");
ABSL_FLAG(std::string, stages, "", "embed: stages to return, e.g. 1,2,3,4.");
ABSL_FLAG(bool, normalize, false, "embed: L2-normalise the embedding.");
ABSL_FLAG(std::string, out, "", "embed: output directory for .npy files.");
ABSL_FLAG(bool, keep_size, false, "embed: KEEP_SIZE resize (no resize or crop; pad to 32).");
ABSL_FLAG(std::string, boxes, "",
          "embed: regions to pool, in the image's pixels: x1,y1,x2,y2;x1,y1,x2,y2;...");
ABSL_FLAG(std::string, region_stages, "4", "embed: stages to pool --boxes from, e.g. 3,4.");
ABSL_FLAG(int, region_size, 1, "embed: RoIAlign bins per side (1: a vector per box).");
ABSL_FLAG(std::string, images, "", "bench: directory of images to send (cycled).");
ABSL_FLAG(int, concurrency, 8, "bench: concurrent calls.");
ABSL_FLAG(double, duration, 0, "bench: seconds to run.");
ABSL_FLAG(int, requests, 0, "bench: calls to send in all.");
ABSL_FLAG(double, rate, 0, "bench: target calls per second over all clients (0: closed loop).");

namespace convnext::client {
namespace {

constexpr int kExitServer = 1, kExitUsage = 2, kExitInput = 3, kExitUnreachable = 4;

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "convnext: %s\n", message.c_str());
  return code;
}

// Exit code and message for a failed call. UNAVAILABLE is "cannot reach" (exit 4) only when the
// channel could not connect, not when a server that was reached refused the call (draining).
int FailCall(Client& client, const absl::Status& s) {
  const bool unreachable = s.code() == absl::StatusCode::kUnavailable && client.IsUnreachable();
  return Fail(unreachable ? kExitUnreachable : kExitServer,
              absl::StrCat(unreachable ? "cannot reach " + client.options().target + ": " : "",
                           absl::StatusCodeToString(s.code()), ": ", s.message()));
}

// Prints `j` as one line of JSON. Strings that are not UTF-8 (a file name) get U+FFFD for their
// bad bytes instead of an exception.
void PrintJson(const nlohmann::ordered_json& j) {
  const std::string text = j.dump(/*indent=*/-1, /*indent_char=*/' ', /*ensure_ascii=*/false,
                                  nlohmann::ordered_json::error_handler_t::replace);
  std::printf("%s\n", text.c_str());
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  if (S_ISDIR(st.st_mode))
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot be read"));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int Classify(Client& client, const std::vector<std::string>& files) {
  if (files.empty()) return Fail(kExitUsage, "classify needs at least one image file");
  v1::ClassifyRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_model_version(absl::GetFlag(FLAGS_model_version));
  request.set_top_k(std::max(absl::GetFlag(FLAGS_top_k), 1));
  for (const std::string& f : files) {
    absl::StatusOr<std::string> bytes = ReadFile(f);
    if (!bytes.ok()) return Fail(kExitInput, std::string(bytes.status().message()));
    request.add_images()->set_encoded(*std::move(bytes));
  }
  absl::StatusOr<v1::ClassifyResponse> r = client.Classify(request);
  if (!r.ok()) return FailCall(client, r.status());
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::ordered_json results = nlohmann::ordered_json::array();
    for (int i = 0; i < r->results_size(); ++i) {
      nlohmann::ordered_json classes = nlohmann::ordered_json::array();
      for (const v1::ClassScore& c : r->results(i).classes()) {
        classes.push_back({{"index", c.index()}, {"label", c.label()}, {"score", c.score()}});
      }
      results.push_back({{"file", files[i]}, {"classes", std::move(classes)}});
    }
    PrintJson({{"model", r->model()}, {"results", std::move(results)}});
    return 0;
  }
  size_t width = 4;
  for (const std::string& f : files) width = std::max(width, f.size());
  std::printf("%-*s  %4s  %6s  %-24s  %s\n", static_cast<int>(width), "file", "rank", "index",
              "label", "score");
  for (int i = 0; i < r->results_size(); ++i) {
    int rank = 1;
    for (const v1::ClassScore& c : r->results(i).classes()) {
      std::printf("%-*s  %4d  %6d  %-24s  %.4f\n", static_cast<int>(width), files[i].c_str(),
                  rank++, c.index(), c.label().empty() ? "-" : c.label().c_str(), c.score());
    }
  }
  return 0;
}

int Embed(Client& client, const std::vector<std::string>& files) {
  if (files.size() != 1) return Fail(kExitUsage, "embed takes exactly one image file");
  const std::string dir = absl::GetFlag(FLAGS_out);
  if (dir.empty()) return Fail(kExitUsage, "embed needs --out DIR");
  v1::EmbedRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_model_version(absl::GetFlag(FLAGS_model_version));
  request.set_include_embedding(true);
  request.set_normalize(absl::GetFlag(FLAGS_normalize));
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_stages), ',', absl::SkipEmpty())) {
    int stage = 0;
    if (!absl::SimpleAtoi(s, &stage)) return Fail(kExitUsage, absl::StrCat("bad stage '", s, "'"));
    request.add_stages(stage);
  }
  if (absl::GetFlag(FLAGS_keep_size)) request.set_resize(v1::KEEP_SIZE);
  if (!absl::GetFlag(FLAGS_boxes).empty()) {
    v1::ImageRegions* regions = request.add_regions();
    for (absl::string_view box :
         absl::StrSplit(absl::GetFlag(FLAGS_boxes), ';', absl::SkipEmpty())) {
      const std::vector<absl::string_view> v = absl::StrSplit(box, ',');
      float c[4];
      if (v.size() != 4 || !absl::SimpleAtof(v[0], &c[0]) || !absl::SimpleAtof(v[1], &c[1]) ||
          !absl::SimpleAtof(v[2], &c[2]) || !absl::SimpleAtof(v[3], &c[3])) {
        return Fail(kExitUsage, absl::StrCat("bad box '", box, "': want x1,y1,x2,y2"));
      }
      v1::Box* b = regions->add_boxes();
      b->set_x1(c[0]);
      b->set_y1(c[1]);
      b->set_x2(c[2]);
      b->set_y2(c[3]);
    }
    for (absl::string_view s :
         absl::StrSplit(absl::GetFlag(FLAGS_region_stages), ',', absl::SkipEmpty())) {
      int stage = 0;
      if (!absl::SimpleAtoi(s, &stage)) {
        return Fail(kExitUsage, absl::StrCat("bad region stage '", s, "'"));
      }
      request.mutable_region_pooling()->add_stages(stage);
    }
    request.mutable_region_pooling()->set_output_size(
        static_cast<uint32_t>(std::max(0, absl::GetFlag(FLAGS_region_size))));
  }
  absl::StatusOr<std::string> bytes = ReadFile(files[0]);
  if (!bytes.ok()) return Fail(kExitInput, std::string(bytes.status().message()));
  request.add_images()->set_encoded(*std::move(bytes));
  absl::StatusOr<v1::EmbedResponse> r = client.Embed(request);
  if (!r.ok()) return FailCall(client, r.status());
  ::mkdir(dir.c_str(), 0755);
  std::string stem = files[0].substr(files[0].find_last_of('/') + 1);
  stem = stem.substr(0, stem.find_last_of('.'));
  const v1::Embedding& e = r->results(0);
  std::vector<std::pair<std::string, const v1::Tensor*>> outputs = {{"embedding", &e.embedding()}};
  for (int i = 0; i < e.stages_size(); ++i) {
    outputs.emplace_back(absl::StrCat("stage", request.stages(i)), &e.stages(i));
  }
  for (int i = 0; i < e.regions_size(); ++i) {
    outputs.emplace_back(absl::StrCat("regions.stage", request.region_pooling().stages(i)),
                         &e.regions(i));
  }
  for (const auto& [name, tensor] : outputs) {
    const std::string path = absl::StrCat(dir, "/", stem, ".", name, ".npy");
    if (absl::Status s = WriteNpy(path, *tensor); !s.ok()) {
      return Fail(s.code() == absl::StatusCode::kPermissionDenied ? kExitInput : kExitServer,
                  std::string(s.message()));
    }
    std::printf("%s [%s]\n", path.c_str(), absl::StrJoin(tensor->shape(), ", ").c_str());
  }
  return 0;
}

const char* StateName(v1::ModelState state) {
  switch (state) {
    case v1::LOADING:
      return "loading";
    case v1::READY:
      return "ready";
    case v1::DRAINING:
      return "draining";
    case v1::FAILED:
      return "failed";
    default:
      return "?";
  }
}

int Models(Client& client) {
  absl::StatusOr<v1::ListModelsResponse> r = client.ListModels();
  if (!r.ok()) return FailCall(client, r.status());
  // "default": the model and version an empty model name selects.
  auto is_default = [&r](const v1::ModelInfo& m) {
    return m.name() == r->default_model() && m.default_version();
  };
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::ordered_json models = nlohmann::ordered_json::array();
    for (const v1::ModelInfo& m : r->models()) {
      models.push_back(
          {{"name", m.name()},
           {"version", m.version()},
           {"state", StateName(m.state())},
           {"variant", m.variant()},
           {"num_classes", m.num_classes()},
           {"parameters", m.parameter_count()},
           {"input_size", m.preprocessing().size()},
           {"device", m.device()},
           {"devices", std::vector<std::string>(m.devices().begin(), m.devices().end())},
           {"ready", m.ready()},
           {"embedding_space", m.embedding_space()},
           {"default_version", m.default_version()},
           {"default", is_default(m)}});
    }
    PrintJson(models);
    return 0;
  }
  std::printf("%-16s %-8s %-8s %-16s %8s %12s %6s %s\n", "name", "version", "state", "variant",
              "classes", "parameters", "input", "checkpoint");
  for (const v1::ModelInfo& m : r->models()) {
    std::printf("%-16s %-8s %-8s %-16s %8lld %12lld %6u %s%s%s\n", m.name().c_str(),
                m.version().c_str(), StateName(m.state()), m.variant().c_str(),
                static_cast<long long>(m.num_classes()),
                static_cast<long long>(m.parameter_count()), m.preprocessing().size(),
                m.checkpoint_path().c_str(), is_default(m) ? "  (default)" : "",
                m.state_reason().empty() ? "" : ("  " + m.state_reason()).c_str());
  }
  return 0;
}

// load CONFIG: the text of a ModelConfig, or the path of a file holding one.
int Load(Client& client, const std::vector<std::string>& args) {
  if (args.size() != 1) return Fail(kExitUsage, "load takes one model config (text or file)");
  std::string config = args[0];
  if (struct stat st; ::stat(config.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    absl::StatusOr<std::string> text = ReadFile(config);
    if (!text.ok()) return Fail(kExitInput, std::string(text.status().message()));
    config = *std::move(text);
  }
  absl::StatusOr<v1::LoadModelResponse> r =
      client.LoadModel(config, absl::GetFlag(FLAGS_make_default));
  if (!r.ok()) return FailCall(client, r.status());
  std::printf("%s version %s %s in %.2f s (embedding_space %s)%s\n", r->model().name().c_str(),
              r->model().version().c_str(), r->replaced() ? "reloaded" : "loaded",
              r->load_seconds(), r->model().embedding_space().c_str(),
              r->model().default_version() ? ", default version" : "");
  return 0;
}

int Unload(Client& client, const std::vector<std::string>& args) {
  if (args.size() != 1) return Fail(kExitUsage, "unload takes one model name");
  absl::StatusOr<v1::UnloadModelResponse> r =
      client.UnloadModel(args[0], absl::GetFlag(FLAGS_model_version));
  if (!r.ok()) return FailCall(client, r.status());
  std::printf("%s: unloaded version(s) %s\n", args[0].c_str(),
              absl::StrJoin(r->versions(), ", ").c_str());
  return 0;
}

int Default(Client& client, const std::vector<std::string>& args) {
  if (args.size() != 1) return Fail(kExitUsage, "default takes one model name");
  absl::StatusOr<v1::SetDefaultVersionResponse> r =
      client.SetDefaultVersion(args[0], absl::GetFlag(FLAGS_model_version));
  if (!r.ok()) return FailCall(client, r.status());
  std::printf("%s: default version %s\n", args[0].c_str(), r->version().c_str());
  return 0;
}

int Health(Client& client) {
  absl::StatusOr<bool> serving = client.Health();
  if (!serving.ok()) return FailCall(client, serving.status());
  std::printf("%s\n", *serving ? "SERVING" : "NOT_SERVING");
  return *serving ? 0 : kExitServer;
}

int Bench(const ClientOptions& client_options, const std::vector<std::string>& files) {
  std::vector<std::string> paths = files;
  if (!absl::GetFlag(FLAGS_images).empty()) {
    const std::string dir = absl::GetFlag(FLAGS_images);
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return Fail(kExitInput, dir + ": cannot open directory");
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') paths.push_back(dir + "/" + e->d_name);
    }
    ::closedir(d);
    std::sort(paths.begin(), paths.end());
  }
  if (paths.empty()) return Fail(kExitUsage, "bench needs image files or --images DIR");
  LoadOptions options;
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  options.requests = absl::GetFlag(FLAGS_requests);
  options.duration = absl::Seconds(std::max(absl::GetFlag(FLAGS_duration), 0.0));
  options.rate_per_s = absl::GetFlag(FLAGS_rate);
  options.show_progress = ::isatty(STDERR_FILENO);
  if (options.concurrency < 1 || options.requests < 0 ||
      (options.requests > 0) == (options.duration > absl::ZeroDuration())) {
    return Fail(kExitUsage, "bench needs --concurrency >= 1 and one of --duration or --requests");
  }
  std::vector<v1::ClassifyRequest> requests;
  for (const std::string& p : paths) {
    absl::StatusOr<std::string> bytes = ReadFile(p);
    if (!bytes.ok()) return Fail(kExitInput, std::string(bytes.status().message()));
    v1::ClassifyRequest r;
    r.set_model(absl::GetFlag(FLAGS_model));
    r.add_images()->set_encoded(*std::move(bytes));
    requests.push_back(std::move(r));
  }
  absl::StatusOr<LoadReport> report = RunLoad(client_options, requests, options);
  if (!report.ok()) return Fail(kExitUsage, std::string(report.status().message()));
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(ReportJson(*report));
  } else {
    std::printf("%s", ReportText(*report).c_str());
  }
  return 0;
}

}  // namespace
}  // namespace convnext::client

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "convnext (classify IMG... | embed IMG --out DIR | models | health | bench ... | "
      "load CONFIG | unload NAME | default NAME) "
      "[--target host:port]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return convnext::client::kExitUsage;
  }
  const std::string command = args[1];
  const std::vector<std::string> files(args.begin() + 2, args.end());
  convnext::client::ClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.deadline = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  options.max_attempts = 1 + std::max(absl::GetFlag(FLAGS_retries), 0);
  for (auto [flag, field] : {std::pair{absl::GetFlag(FLAGS_tls_ca), &options.tls_root_certs},
                             std::pair{absl::GetFlag(FLAGS_tls_cert), &options.tls_cert_chain},
                             std::pair{absl::GetFlag(FLAGS_tls_key), &options.tls_private_key}}) {
    if (flag.empty()) continue;
    absl::StatusOr<std::string> pem = convnext::client::ReadFile(flag);
    if (!pem.ok())
      return convnext::client::Fail(convnext::client::kExitInput,
                                    std::string(pem.status().message()));
    *field = *std::move(pem);
  }
  if (command == "bench") return convnext::client::Bench(options, files);
  absl::StatusOr<std::unique_ptr<convnext::client::Client>> client =
      convnext::client::Client::Create(options);
  if (!client.ok()) {
    return convnext::client::Fail(convnext::client::kExitUsage,
                                  std::string(client.status().message()));
  }
  if (command == "classify") return convnext::client::Classify(**client, files);
  if (command == "embed") return convnext::client::Embed(**client, files);
  if (command == "models") return convnext::client::Models(**client);
  if (command == "health") return convnext::client::Health(**client);
  if (command == "load") return convnext::client::Load(**client, files);
  if (command == "unload") return convnext::client::Unload(**client, files);
  if (command == "default") return convnext::client::Default(**client, files);
  std::fprintf(stderr, "convnext: unknown command '%s' (usage: %s)\n", command.c_str(),
               absl::ProgramUsageMessage().data());
  return convnext::client::kExitUsage;
}

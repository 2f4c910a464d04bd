// convnext: the command-line client of convnext-serve.
//
//   convnext classify IMG... [--model M] [--top_k K] [--json]
//   convnext embed IMG [--model M] [--stages 1,2,3,4] [--normalize] --out DIR
//   convnext models [--json]
//   convnext health
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
#include <atomic>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/client.h"

ABSL_FLAG(std::string, target, "localhost:50051", "Server address.");
ABSL_FLAG(double, timeout_s, 60, "Deadline of each call, seconds.");
ABSL_FLAG(int, retries, 2, "Retries of UNAVAILABLE/RESOURCE_EXHAUSTED (bench: none).");
ABSL_FLAG(std::string, model, "", "Model name; empty: the server's default.");
ABSL_FLAG(std::string, tls_ca, "", "PEM file of the CA that signed the server: use TLS.");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS; with --tls_key).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(int, top_k, 5, "classify: classes per image.");
ABSL_FLAG(bool, json, false, "Print JSON instead of a table.");
ABSL_FLAG(std::string, stages, "", "embed: stages to return, e.g. 1,2,3,4.");
ABSL_FLAG(bool, normalize, false, "embed: L2-normalise the embedding.");
ABSL_FLAG(std::string, out, "", "embed: output directory for .npy files.");
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

int FailStatus(const absl::Status& s) {
  const bool unreachable = s.code() == absl::StatusCode::kUnavailable &&
                           (s.message().find("failed to connect") != absl::string_view::npos ||
                            s.message().find("Connection refused") != absl::string_view::npos ||
                            s.message().find("DNS resolution failed") != absl::string_view::npos);
  return Fail(unreachable ? kExitUnreachable : kExitServer,
              absl::StrCat(unreachable ? "cannot reach " + absl::GetFlag(FLAGS_target) + ": " : "",
                           absl::StatusCodeToString(s.code()), ": ", s.message()));
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

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      out += absl::StrCat("\\u00", absl::Hex(c, absl::kZeroPad2));
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// Writes float32 little-endian data of `shape` as a .npy file (format 1.0).
bool WriteNpy(const std::string& path, const std::vector<int64_t>& shape, const std::string& data) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.put(static_cast<char>(len & 0xff));
  out.put(static_cast<char>(len >> 8));
  out << header << data;
  return static_cast<bool>(out);
}

int Classify(Client& client, const std::vector<std::string>& files) {
  if (files.empty()) return Fail(kExitUsage, "classify needs at least one image file");
  v1::ClassifyRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_top_k(std::max(absl::GetFlag(FLAGS_top_k), 1));
  for (const std::string& f : files) {
    absl::StatusOr<std::string> bytes = ReadFile(f);
    if (!bytes.ok()) return Fail(kExitInput, std::string(bytes.status().message()));
    request.add_images()->set_encoded(*std::move(bytes));
  }
  absl::StatusOr<v1::ClassifyResponse> r = client.Classify(request);
  if (!r.ok()) return FailStatus(r.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::vector<std::string> items;
    for (int i = 0; i < r->results_size(); ++i) {
      std::vector<std::string> classes;
      for (const v1::ClassScore& c : r->results(i).classes()) {
        classes.push_back(absl::StrCat("{\"index\": ", c.index(), ", \"label\": ",
                                       JsonString(c.label()), ", \"score\": ", c.score(), "}"));
      }
      items.push_back(absl::StrCat("{\"file\": ", JsonString(files[i]), ", \"classes\": [",
                                   absl::StrJoin(classes, ", "), "]}"));
    }
    std::printf("{\"model\": %s, \"results\": [%s]}\n", JsonString(r->model()).c_str(),
                absl::StrJoin(items, ", ").c_str());
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
  request.set_include_embedding(true);
  request.set_normalize(absl::GetFlag(FLAGS_normalize));
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_stages), ',', absl::SkipEmpty())) {
    int stage = 0;
    if (!absl::SimpleAtoi(s, &stage)) return Fail(kExitUsage, absl::StrCat("bad stage '", s, "'"));
    request.add_stages(stage);
  }
  absl::StatusOr<std::string> bytes = ReadFile(files[0]);
  if (!bytes.ok()) return Fail(kExitInput, std::string(bytes.status().message()));
  request.add_images()->set_encoded(*std::move(bytes));
  absl::StatusOr<v1::EmbedResponse> r = client.Embed(request);
  if (!r.ok()) return FailStatus(r.status());
  ::mkdir(dir.c_str(), 0755);
  std::string stem = files[0].substr(files[0].find_last_of('/') + 1);
  stem = stem.substr(0, stem.find_last_of('.'));
  auto write = [&](const std::string& name, const v1::Tensor& t) {
    const std::string path = absl::StrCat(dir, "/", stem, ".", name, ".npy");
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    if (!WriteNpy(path, shape, t.data())) return false;
    std::printf("%s [%s]\n", path.c_str(), absl::StrJoin(shape, ", ").c_str());
    return true;
  };
  const v1::Embedding& e = r->results(0);
  if (!write("embedding", e.embedding())) return Fail(kExitInput, "cannot write to " + dir);
  for (int i = 0; i < e.stages_size(); ++i) {
    if (!write(absl::StrCat("stage", request.stages(i)), e.stages(i))) {
      return Fail(kExitInput, "cannot write to " + dir);
    }
  }
  return 0;
}

int Models(Client& client) {
  absl::StatusOr<v1::ListModelsResponse> r = client.ListModels();
  if (!r.ok()) return FailStatus(r.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::vector<std::string> items;
    for (const v1::ModelInfo& m : r->models()) {
      items.push_back(absl::StrCat(
          "{\"name\": ", JsonString(m.name()), ", \"variant\": ", JsonString(m.variant()),
          ", \"num_classes\": ", m.num_classes(), ", \"parameters\": ", m.parameter_count(),
          ", \"input_size\": ", m.preprocessing().size(), ", \"device\": ", JsonString(m.device()),
          ", \"ready\": ", m.ready() ? "true" : "false",
          ", \"default\": ", m.name() == r->default_model() ? "true" : "false", "}"));
    }
    std::printf("[%s]\n", absl::StrJoin(items, ", ").c_str());
    return 0;
  }
  std::printf("%-16s %-16s %8s %12s %6s %-6s %s\n", "name", "variant", "classes", "parameters",
              "input", "ready", "checkpoint");
  for (const v1::ModelInfo& m : r->models()) {
    std::printf("%-16s %-16s %8lld %12lld %6u %-6s %s%s\n", m.name().c_str(), m.variant().c_str(),
                static_cast<long long>(m.num_classes()),
                static_cast<long long>(m.parameter_count()), m.preprocessing().size(),
                m.ready() ? "yes" : "no", m.checkpoint_path().c_str(),
                m.name() == r->default_model() ? "  (default)" : "");
  }
  return 0;
}

int Health(Client& client) {
  absl::StatusOr<bool> serving = client.Health();
  if (!serving.ok()) return FailStatus(serving.status());
  std::printf("%s\n", *serving ? "SERVING" : "NOT_SERVING");
  return *serving ? 0 : kExitServer;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

int Bench(const ClientOptions& base, const std::vector<std::string>& files) {
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
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  const double duration = absl::GetFlag(FLAGS_duration);
  const int total = absl::GetFlag(FLAGS_requests);
  if (concurrency < 1 || (duration > 0) == (total > 0)) {
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
  ClientOptions options = base;
  options.max_attempts = 1;  // A benchmark counts errors; it does not hide them.
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  if (!client.ok()) return FailStatus(client.status());

  std::mutex mu;
  std::vector<double> latency_ms, queue_us, preprocess_us, compute_us;
  std::map<std::string, int> codes;
  std::atomic<int> next{0}, done{0};
  const absl::Time start = absl::Now();
  const absl::Time end = duration > 0 ? start + absl::Seconds(duration) : absl::InfiniteFuture();
  const double rate = absl::GetFlag(FLAGS_rate);
  std::vector<std::thread> threads;
  for (int c = 0; c < concurrency; ++c) {
    threads.emplace_back([&] {
      while (true) {
        const int k = next++;
        if ((total > 0 && k >= total) || absl::Now() >= end) return;
        if (rate > 0) {  // Open loop: call k starts at start + k / rate.
          const absl::Time at = start + absl::Seconds(k / rate);
          if (at >= end) return;
          absl::SleepFor(at - absl::Now());
        }
        const absl::Time t0 = absl::Now();
        absl::StatusOr<v1::ClassifyResponse> r = (*client)->Classify(requests[k % requests.size()]);
        const double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        std::lock_guard<std::mutex> lock(mu);
        ++codes[absl::StatusCodeToString(r.status().code())];
        if (r.ok()) {
          latency_ms.push_back(ms);
          queue_us.push_back(r->timings().queue_us());
          preprocess_us.push_back(r->timings().preprocess_us());
          compute_us.push_back(r->timings().compute_us());
        }
        ++done;
      }
    });
  }
  const bool tty = ::isatty(STDERR_FILENO);
  std::thread progress([&] {
    while (tty && done < (total > 0 ? total : INT32_MAX) && absl::Now() < end) {
      absl::SleepFor(absl::Seconds(1));
      const double s = absl::ToDoubleSeconds(absl::Now() - start);
      std::fprintf(stderr, "\r%6.1f s  %d calls  %.1f calls/s   ", s, done.load(), done / s);
      if (next >= total && total > 0) break;
    }
  });
  for (auto& t : threads) t.join();
  progress.join();
  if (tty) std::fprintf(stderr, "\n");
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  const int ok = static_cast<int>(latency_ms.size());
  std::vector<std::string> code_items;
  for (const auto& [code, n] : codes) code_items.push_back(absl::StrCat("\"", code, "\": ", n));
  if (absl::GetFlag(FLAGS_json)) {
    std::printf(
        "{\"calls\": %d, \"ok\": %d, \"codes\": {%s}, \"seconds\": %.3f, \"calls_per_s\": %.3f, "
        "\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"max\": %.3f}, "
        "\"server_us_p50\": {\"queue\": %.0f, \"preprocess\": %.0f, \"compute\": %.0f}}\n",
        done.load(), ok, absl::StrJoin(code_items, ", ").c_str(), elapsed, done / elapsed,
        Percentile(latency_ms, 0.5), Percentile(latency_ms, 0.9), Percentile(latency_ms, 0.99),
        Percentile(latency_ms, 1.0), Percentile(queue_us, 0.5), Percentile(preprocess_us, 0.5),
        Percentile(compute_us, 0.5));
    return 0;
  }
  std::printf("calls: %d in %.2f s (%.2f calls/s, one image each), concurrency %d\n", done.load(),
              elapsed, done / elapsed, concurrency);
  std::printf("status codes: %s\n", absl::StrJoin(code_items, ", ").c_str());
  std::printf("latency ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", Percentile(latency_ms, 0.5),
              Percentile(latency_ms, 0.9), Percentile(latency_ms, 0.99),
              Percentile(latency_ms, 1.0));
  std::printf("server p50 us: queue %.0f  preprocess %.0f  compute %.0f\n",
              Percentile(queue_us, 0.5), Percentile(preprocess_us, 0.5),
              Percentile(compute_us, 0.5));
  return 0;
}

}  // namespace
}  // namespace convnext::client

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "convnext (classify IMG... | embed IMG --out DIR | models | health | bench ...) "
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
    if (!pem.ok()) return convnext::client::Fail(3, std::string(pem.status().message()));
    *field = *std::move(pem);
  }
  if (command == "bench") return convnext::client::Bench(options, files);
  absl::StatusOr<std::unique_ptr<convnext::client::Client>> client =
      convnext::client::Client::Create(options);
  if (!client.ok()) return convnext::client::FailStatus(client.status());
  if (command == "classify") return convnext::client::Classify(**client, files);
  if (command == "embed") return convnext::client::Embed(**client, files);
  if (command == "models") return convnext::client::Models(**client);
  if (command == "health") return convnext::client::Health(**client);
  std::fprintf(stderr, "convnext: unknown command '%s' (usage: %s)\n", command.c_str(),
               absl::ProgramUsageMessage().data());
  return convnext::client::kExitUsage;
}

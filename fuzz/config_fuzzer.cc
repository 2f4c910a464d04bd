// libFuzzer target: the server's configuration path on untrusted text, as convnext-server runs it
// at start-up (text-format parse, normalisation, validation). Must never crash, and a config that
// validates must keep the invariants the server relies on.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/server_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<convnext::server::ServerConfig> config =
      convnext::server::ParseConfigText(text, "/fuzz/config.textproto");
  if (!config.ok()) return 0;
  convnext::server::NormalizeConfig(&*config, 2, int64_t{8} << 30);
  if (!convnext::server::ValidateServerConfig(*config).ok()) return 0;
  for (const convnext::server::ModelConfig& m : config->model()) {
    const auto& b = m.batching();
    if (m.name().empty() || b.max_batch_size() < 1 || b.max_queue_size() < b.max_batch_size() ||
        b.instances() < 1) {
      __builtin_trap();  // Validation let through a config the server cannot run.
    }
  }
  return 0;
}

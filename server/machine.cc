#include "server/machine.h"

#include <unistd.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace convnext::server {
namespace {

// The first line of a file, without surrounding white space; empty if it cannot be read.
std::string FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return "";
  return std::string(absl::StripAsciiWhitespace(line));
}

// CPUs granted by a quota and period in microseconds, rounded up; 0 when unlimited or unknown.
int CoresFromQuota(const std::string& quota, const std::string& period) {
  int64_t q = 0, p = 0;
  if (!absl::SimpleAtoi(quota, &q) || !absl::SimpleAtoi(period, &p) || q <= 0 || p <= 0) return 0;
  return static_cast<int>(std::ceil(static_cast<double>(q) / static_cast<double>(p)));
}

// A memory limit in bytes; 0 when unlimited ("max", or v1's huge sentinel) or unknown.
int64_t MemoryLimit(const std::string& text, int64_t host_bytes) {
  int64_t bytes = 0;
  if (!absl::SimpleAtoi(text, &bytes) || bytes <= 0 || bytes >= host_bytes) return 0;
  return bytes;
}

}  // namespace

MachineResources ReadMachineResources(const std::string& cgroup_root) {
  MachineResources r;
  const int host_cores = std::max(1u, std::thread::hardware_concurrency());
  const int64_t host_bytes =
      static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGESIZE));

  // cgroup v2: "cpu.max" is "QUOTA PERIOD" or "max PERIOD"; v1: two files.
  int cores = 0;
  const std::vector<std::string> cpu_max =
      absl::StrSplit(FirstLine(cgroup_root + "/cpu.max"), ' ', absl::SkipEmpty());
  if (cpu_max.size() == 2) {
    cores = CoresFromQuota(cpu_max[0], cpu_max[1]);
  } else {
    cores = CoresFromQuota(FirstLine(cgroup_root + "/cpu/cpu.cfs_quota_us"),
                           FirstLine(cgroup_root + "/cpu/cpu.cfs_period_us"));
  }
  r.cores = cores > 0 ? std::min(cores, host_cores) : host_cores;
  r.cores_source = cores > 0 && cores < host_cores ? "cgroup" : "host";

  int64_t memory = MemoryLimit(FirstLine(cgroup_root + "/memory.max"), host_bytes);
  if (memory == 0) {
    memory = MemoryLimit(FirstLine(cgroup_root + "/memory/memory.limit_in_bytes"), host_bytes);
  }
  r.memory_bytes = memory > 0 ? memory : host_bytes;
  r.memory_source = memory > 0 ? "cgroup" : "host";
  return r;
}

}  // namespace convnext::server

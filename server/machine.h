// What the machine (or the container) gives this process: CPU cores and memory, read from the
// cgroup limits when there are any (cgroup v2 cpu.max / memory.max, or v1 cpu.cfs_quota_us /
// memory.limit_in_bytes), else from the host. Thread counts and memory budgets default from
// these, so that a container limited to 2 CPUs and 4 GiB on a 64-core host is sized for 2 CPUs and
// 4 GiB, not for the host.
#ifndef CONVNEXT_SERVER_MACHINE_H_
#define CONVNEXT_SERVER_MACHINE_H_

#include <cstdint>
#include <string>

namespace convnext::server {

struct MachineResources {
  int cores = 1;              // >= 1: the CPU quota rounded up, or the host's cores.
  int64_t memory_bytes = 0;   // > 0: the memory limit, or the host's physical memory.
  std::string cores_source;   // "cgroup" or "host", for the start-up log.
  std::string memory_source;  // "cgroup" or "host".
};

// Reads the limits of this process's cgroup under `cgroup_root` (normally /sys/fs/cgroup; tests
// point it at a fake tree). Never fails: whatever cannot be read falls back to the host's value.
MachineResources ReadMachineResources(const std::string& cgroup_root = "/sys/fs/cgroup");

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_MACHINE_H_

// Container awareness: limits read from a fake cgroup tree (v2 and v1), host values otherwise.
#include "server/machine.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <string>
#include <thread>

namespace convnext::server {
namespace {

std::string FakeCgroup(const std::string& name) {
  const std::string root = ::testing::TempDir() + "/cgroup_" + name;
  mkdir(root.c_str(), 0755);
  mkdir((root + "/cpu").c_str(), 0755);
  mkdir((root + "/memory").c_str(), 0755);
  return root;
}

void Write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(MachineTest, CgroupV2LimitsWin) {
  const std::string root = FakeCgroup("v2");
  Write(root + "/cpu.max", "150000 100000\n");  // 1.5 CPUs: rounded up to 2.
  Write(root + "/memory.max", "4294967296\n");
  const MachineResources r = ReadMachineResources(root);
  EXPECT_EQ(r.cores, std::min<int>(2, std::thread::hardware_concurrency()));
  EXPECT_EQ(r.memory_bytes, int64_t{4} << 30);
  EXPECT_EQ(r.memory_source, "cgroup");
}

TEST(MachineTest, CgroupV1LimitsAreReadToo) {
  const std::string root = FakeCgroup("v1");
  Write(root + "/cpu/cpu.cfs_quota_us", "100000\n");
  Write(root + "/cpu/cpu.cfs_period_us", "100000\n");
  Write(root + "/memory/memory.limit_in_bytes", "1073741824\n");
  const MachineResources r = ReadMachineResources(root);
  EXPECT_EQ(r.cores, 1);
  EXPECT_EQ(r.memory_bytes, int64_t{1} << 30);
}

TEST(MachineTest, UnlimitedOrMissingMeansTheHost) {
  const std::string root = FakeCgroup("unlimited");
  Write(root + "/cpu.max", "max 100000\n");
  Write(root + "/memory.max", "max\n");
  const MachineResources unlimited = ReadMachineResources(root);
  const MachineResources missing = ReadMachineResources(root + "/does-not-exist");
  EXPECT_EQ(unlimited.cores, static_cast<int>(std::thread::hardware_concurrency()));
  EXPECT_EQ(unlimited.cores_source, "host");
  EXPECT_EQ(unlimited.memory_source, "host");
  EXPECT_GT(unlimited.memory_bytes, 0);
  EXPECT_EQ(missing.cores, unlimited.cores);
  EXPECT_EQ(missing.memory_bytes, unlimited.memory_bytes);
  // v1's "no limit" is a huge number, larger than the host: the host's memory then.
  Write(root + "/memory.max", "9223372036854771712\n");
  EXPECT_EQ(ReadMachineResources(root).memory_source, "host");
}

}  // namespace
}  // namespace convnext::server

#include "checkpoint/zip_directory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "checkpoint/torch_zip.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;

void Put(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

struct FakeEntry {
  std::string name;
  std::string data;
  uint16_t method = 0;
  // What the directory claims; -1 = the data's size.
  int64_t uncompressed = -1;
  // Sizes written as 0xffffffff with the real ones in a ZIP64 extra field.
  bool zip64_sizes = false;
};

// A zip file as a writer would lay it out: local headers with data, central directory, end
// record (and a ZIP64 end record and locator when `zip64_end`).
std::string MakeZip(const std::vector<FakeEntry>& entries, bool zip64_end = false) {
  std::string zip;
  std::vector<uint64_t> offsets;
  for (const FakeEntry& e : entries) {
    offsets.push_back(zip.size());
    Put(&zip, 0x04034b50, 4);
    Put(&zip, 20, 2);
    Put(&zip, 0, 2);
    Put(&zip, e.method, 2);
    Put(&zip, 0, 8);  // Time, date, CRC.
    Put(&zip, e.data.size(), 4);
    Put(&zip, e.uncompressed < 0 ? e.data.size() : e.uncompressed, 4);
    Put(&zip, e.name.size(), 2);
    Put(&zip, 0, 2);
    zip += e.name + e.data;
  }
  const uint64_t dir_offset = zip.size();
  for (size_t i = 0; i < entries.size(); ++i) {
    const FakeEntry& e = entries[i];
    const uint64_t uncompressed = e.uncompressed < 0 ? e.data.size() : e.uncompressed;
    std::string extra;
    if (e.zip64_sizes) {
      Put(&extra, 0x0001, 2);
      Put(&extra, 16, 2);
      Put(&extra, uncompressed, 8);
      Put(&extra, e.data.size(), 8);
    }
    Put(&zip, 0x02014b50, 4);
    Put(&zip, 20, 2);
    Put(&zip, 20, 2);
    Put(&zip, 0, 2);
    Put(&zip, e.method, 2);
    Put(&zip, 0, 8);
    Put(&zip, e.zip64_sizes ? 0xffffffff : e.data.size(), 4);
    Put(&zip, e.zip64_sizes ? 0xffffffff : uncompressed, 4);
    Put(&zip, e.name.size(), 2);
    Put(&zip, extra.size(), 2);
    Put(&zip, 0, 2);  // Comment.
    Put(&zip, 0, 8);  // Disk, attributes.
    Put(&zip, offsets[i], 4);
    zip += e.name + extra;
  }
  const uint64_t dir_size = zip.size() - dir_offset;
  if (zip64_end) {
    const uint64_t end64 = zip.size();
    Put(&zip, 0x06064b50, 4);
    Put(&zip, 44, 8);
    Put(&zip, 45, 2);
    Put(&zip, 45, 2);
    Put(&zip, 0, 8);
    Put(&zip, entries.size(), 8);
    Put(&zip, entries.size(), 8);
    Put(&zip, dir_size, 8);
    Put(&zip, dir_offset, 8);
    Put(&zip, 0x07064b50, 4);
    Put(&zip, 0, 4);
    Put(&zip, end64, 8);
    Put(&zip, 1, 4);
  }
  Put(&zip, 0x06054b50, 4);
  Put(&zip, 0, 4);
  Put(&zip, zip64_end ? 0xffff : entries.size(), 2);
  Put(&zip, zip64_end ? 0xffff : entries.size(), 2);
  Put(&zip, zip64_end ? 0xffffffff : dir_size, 4);
  Put(&zip, zip64_end ? 0xffffffff : dir_offset, 4);
  Put(&zip, 0, 2);
  return zip;
}

absl::StatusOr<ZipDirectory> Read(const std::string& zip) {
  return ReadZipDirectory(zip.size(), [&zip](uint64_t offset, uint64_t n) {
    return offset > zip.size() ? std::string()
                               : zip.substr(offset, std::min<uint64_t>(n, zip.size() - offset));
  });
}

std::string ErrorOf(const std::string& zip) {
  absl::StatusOr<ZipDirectory> dir = Read(zip);
  EXPECT_FALSE(dir.ok());
  return dir.ok() ? "" : std::string(dir.status().message());
}

TEST(ZipDirectoryTest, ListsEntriesWithTheirSizes) {
  absl::StatusOr<ZipDirectory> dir =
      Read(MakeZip({{"archive/data.pkl", "pickle"}, {"archive/data/0", std::string(100, 'x')}}));
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_EQ(dir->first_name, "archive/data.pkl");
  ASSERT_EQ(dir->entries.size(), 2u);
  const ZipEntry& data = dir->entries.at("archive/data/0");
  EXPECT_EQ(data.method, 0);
  EXPECT_EQ(data.compressed_size, 100u);
  EXPECT_EQ(data.uncompressed_size, 100u);
}

TEST(ZipDirectoryTest, ReadsZip64SizesAndEndRecord) {
  FakeEntry big{"a/data/0", "tiny", 8, int64_t{5} << 30, true};
  absl::StatusOr<ZipDirectory> dir = Read(MakeZip({{"a/data.pkl", "p"}, big}, true));
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_EQ(dir->entries.at("a/data/0").uncompressed_size, uint64_t{5} << 30);
  EXPECT_EQ(dir->entries.at("a/data/0").compressed_size, 4u);
  EXPECT_EQ(dir->entries.at("a/data/0").method, 8);
}

TEST(ZipDirectoryTest, RefusesWhatMiniZCouldReadDifferently) {
  EXPECT_THAT(ErrorOf(MakeZip({{"a/x", "1"}, {"a/x", "2"}})), HasSubstr("'a/x' appears twice"));
  EXPECT_THAT(ErrorOf("PK\x03\x04 not a zip at all, no end record"),
              HasSubstr("end-of-central-directory"));
  std::string zip = MakeZip({{"a/x", "1234"}});
  // The directory's compressed size claims more bytes than the file holds.
  const size_t dir = zip.find("PK\x01\x02");
  zip[dir + 20] = '\x7f';
  EXPECT_THAT(ErrorOf(zip), HasSubstr("'a/x' lies outside the file"));
  // A truncated directory.
  std::string cut = MakeZip({{"a/x", "1234"}});
  cut.erase(cut.find("PK\x01\x02") + 10, 4);
  EXPECT_THAT(ErrorOf(cut), HasSubstr("malformed zip directory"));
  // Saturated sizes with no ZIP64 field.
  std::string saturated = MakeZip({{"a/x", "1234"}});
  std::fill_n(saturated.begin() + saturated.find("PK\x01\x02") + 24, 4, '\xff');
  EXPECT_THAT(ErrorOf(saturated), HasSubstr("without a ZIP64 extra field"));
}

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// data.pkl of {'w': _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', 4), 0, (4,),
// (1,), False, OrderedDict())}, protocol 2.
const char kOneTensorPickle[] =
    "\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
    "ctorch\nFloatStorage\nX\x01\x00\x00\x00"
    "0X\x03\x00\x00\x00"
    "cpuK\x04tQK\x00K\x04\x85K\x01"
    "\x85\x89"
    "ccollections\nOrderedDict\n)RtRs.";

TEST(TorchZipTest, CapsTensorBytesBeforeAnyRecordIsRead) {
  const std::string pkl(kOneTensorPickle, sizeof(kOneTensorPickle) - 1);
  const std::string floats(16, '\0');
  // As torch.save writes it: every record stored.
  const std::string good = WriteTemp(
      "good.pth", MakeZip({{"a/data.pkl", pkl}, {"a/data/0", floats}, {"a/version", "3\n"}}));
  absl::StatusOr<StateDict> read = ReadTorchZip(good);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->at("w").numel(), 4);
  // The same storage under a limit of 15 bytes: refused before it is read.
  read = ReadTorchZip(good, 15);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(
      std::string(read.status().message()),
      HasSubstr("its tensors hold 16 bytes, more than the limit of 15 bytes for one checkpoint"));
  // A deflated storage claiming 5 GiB once inflated: its declared size counts, not the file's.
  FakeEntry bomb{"a/data/0", floats, 8, int64_t{5} << 30, true};
  read = ReadTorchZip(
      WriteTemp("bomb.pth", MakeZip({{"a/data.pkl", pkl}, bomb, {"a/version", "3\n"}})),
      uint64_t{1} << 30);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(read.status().message()),
              HasSubstr("its tensors hold 5368709120 bytes, more than the limit of 1073741824"));
  // Stored, but claiming more bytes than it has (miniz refuses this one itself).
  FakeEntry liar{"a/data/0", floats, 0, int64_t{1} << 31, false};
  read = ReadTorchZip(
      WriteTemp("liar.pth", MakeZip({{"a/data.pkl", pkl}, liar, {"a/version", "3\n"}})));
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("damaged or truncated zip file"));
}

}  // namespace
}  // namespace convnext

#include "checkpoint/pickle.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace convnext::pickle {
namespace {

using ::testing::HasSubstr;
using Kind = Value::Kind;

// The bytes of a string literal, embedded NULs included.
template <size_t N>
std::string Bytes(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

std::unique_ptr<Unpickled> MustUnpickle(const std::string& bytes) {
  absl::StatusOr<std::unique_ptr<Unpickled>> result = Unpickle(bytes);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *std::move(result) : nullptr;
}

std::string ErrorOf(const std::string& bytes) {
  absl::StatusOr<std::unique_ptr<Unpickled>> result = Unpickle(bytes);
  EXPECT_FALSE(result.ok());
  return result.ok() ? "" : std::string(result.status().message());
}

// Protocol-2 pickle of {'a': 1, 'b': [-2, 3.5, 'x'], 'c': None}, as Python writes it.
const char kDict[] =
    "\x80\x02}q\x00(X\x01\x00\x00\x00"
    "aq\x01K\x01X\x01\x00\x00\x00"
    "bq\x02]q\x03(J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x04"
    "eX\x01\x00\x00\x00"
    "cq\x05Nu.";

TEST(PickleTest, ReadsDictsListsNumbersAndStrings) {
  auto u = MustUnpickle(Bytes(kDict));
  ASSERT_NE(u, nullptr);
  const Value* root = u->root();
  ASSERT_EQ(root->kind, Kind::kDict);
  ASSERT_EQ(root->entries.size(), 3u);
  EXPECT_EQ(root->Find("a")->integer, 1);
  const Value* b = root->Find("b");
  ASSERT_EQ(b->kind, Kind::kList);
  ASSERT_EQ(b->items.size(), 3u);
  EXPECT_EQ(b->items[0]->integer, -2);
  EXPECT_DOUBLE_EQ(b->items[1]->real, 3.5);
  EXPECT_EQ(b->items[2]->text, "x");
  EXPECT_EQ(root->Find("c")->kind, Kind::kNone);
  EXPECT_EQ(root->Find("missing"), nullptr);
}

TEST(PickleTest, OrderedDictWithMetadataAndTensors) {
  // OrderedDict() with one tensor entry and BUILD state {'_metadata': {}}:
  //   collections.OrderedDict() ; SETITEMS 'w' -> _rebuild_tensor_v2(
  //     persid ('storage', torch.HalfStorage, '0', 'cpu', 6), 0, (2, 3), (3, 1), False, {})
  const std::string bytes = Bytes(
      "\x80\x02"
      "ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w"
      "ctorch._utils\n_rebuild_tensor_v2\n"
      "((X\x07\x00\x00\x00storagectorch\nHalfStorage\n"
      "X\x01\x00\x00\x00"
      "0X\x03\x00\x00\x00"
      "cpuK\x06tQ"
      "K\x00K\x02K\x03\x86K\x03K\x01\x86\x89}tRu"
      "}X\x09\x00\x00\x00_metadata}sb.");
  auto u = MustUnpickle(bytes);
  ASSERT_NE(u, nullptr);
  const Value* w = u->root()->Find("w");
  ASSERT_NE(w, nullptr);
  ASSERT_EQ(w->kind, Kind::kTensor);
  EXPECT_EQ(w->tensor.storage.type, "HalfStorage");
  EXPECT_EQ(w->tensor.storage.key, "0");
  EXPECT_EQ(w->tensor.storage.numel, 6);
  EXPECT_EQ(w->tensor.size, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w->tensor.stride, (std::vector<int64_t>{3, 1}));
}

TEST(PickleTest, UnknownCallsBecomeInertPlaceholders) {
  // argparse.Namespace(lr=0.004) pickles as NEWOBJ + BUILD.
  const std::string bytes = Bytes(
      "\x80\x02"
      "cargparse\nNamespace\n)\x81}X\x02\x00\x00\x00lrK\x04sb.");
  auto u = MustUnpickle(bytes);
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->root()->kind, Kind::kObject);
  EXPECT_EQ(u->root()->text, "argparse.Namespace");
}

TEST(PickleTest, RefusesGlobalsThatCanRunCode) {
  for (const char* global : {"os\nsystem\n", "posix\nsystem\n", "builtins\neval\n",
                             "__builtin__\nexec\n", "subprocess\nPopen\n", "builtins\ngetattr\n"}) {
    const std::string bytes = Bytes(
                                  "\x80\x02"
                                  "c") +
                              global + Bytes("X\x02\x00\x00\x00ls\x85R.");
    EXPECT_THAT(ErrorOf(bytes), HasSubstr("refusing to load")) << global;
  }
  // Harmless builtins are fine: builtins.set([1]).
  auto u =
      MustUnpickle(Bytes("\x80\x02"
                         "cbuiltins\nset\n]K\x01"
                         "a\x85R."));
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->root()->kind, Kind::kSet);
}

TEST(PickleTest, NegativeAndWideIntegers) {
  // LONG1 with 5 bytes of -2**32 (0x00 0x00 0x00 0x00 0xff), and BININT2 65535.
  auto u =
      MustUnpickle(Bytes("\x80\x02\x8a\x05\x00\x00\x00\x00\xff"
                         "M\xff\xff\x86."));
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->root()->items[0]->integer, -(int64_t{1} << 32));
  EXPECT_EQ(u->root()->items[1]->integer, 65535);
  EXPECT_THAT(ErrorOf(Bytes("\x80\x02\x8a\x09"
                            "123456789.")),
              HasSubstr("too large"));
}

TEST(PickleTest, SelfReferenceIsSafe) {
  // l = []; l.append(l): a cycle through the memo. Ownership is in the arena, so nothing leaks.
  auto u =
      MustUnpickle(Bytes("\x80\x02]q\x00h\x00"
                         "a."));
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->root()->items[0], u->root());
}

TEST(PickleTest, MalformedInputIsAnError) {
  EXPECT_THAT(ErrorOf(""), HasSubstr("without a STOP"));
  EXPECT_THAT(ErrorOf("\x80\x02}"), HasSubstr("without a STOP"));
  EXPECT_THAT(ErrorOf("\x80\x02s."), HasSubstr("stack underflow"));
  EXPECT_THAT(ErrorOf(Bytes("\x80\x02h\x05.")), HasSubstr("never stored"));
  EXPECT_THAT(ErrorOf(Bytes("\x80\x02X\xff\xff\x00\x00"
                            "ab.")),
              HasSubstr("more bytes"));
  EXPECT_THAT(ErrorOf("\x80\x02\xff."), HasSubstr("unsupported opcode"));
  EXPECT_THAT(ErrorOf("\x80\x02K\x01K\x02."), HasSubstr("2 values on the stack"));
  EXPECT_THAT(ErrorOf("\x80\x02"
                      "ctorch\nFloatStorage\n)Q."),
              HasSubstr("persistent id"));
  Limits small;
  small.max_values = 3;
  EXPECT_THAT(std::string(Unpickle("\x80\x02]K\x01"
                                   "aK\x02"
                                   "aK\x03"
                                   "a.",
                                   small)
                              .status()
                              .message()),
              HasSubstr("more than 3 values"));
}

TEST(PickleTest, MemoryIsBoundedByBytesNotJustValues) {
  // A tuple of 100,000 references to one memoized int, then set(tuple) 1,000 times: 0.2 MB of
  // pickle that would copy 800 MB of item lists. Few values are created, so only the byte budget
  // stops it.
  std::string p = Bytes(
      "\x80\x02K\x07q\x00"
      "0(");  // 7, memo[0], POP; MARK
  for (int i = 0; i < 100000; ++i) p += std::string("h\x00", 2);
  p += "tq\x01"
       "0";  // TUPLE, memo[1], POP
  p += "c__builtin__\nset\nq\x02"
       "0";                                                // memo[2], POP
  for (int i = 0; i < 1000; ++i) p += "h\x02h\x01\x85R0";  // set(memo[1]); POP
  p += "N.";
  Limits limits;
  limits.max_bytes = 64 << 20;
  absl::StatusOr<std::unique_ptr<Unpickled>> result = Unpickle(p, limits);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("would need more than 67108864 bytes of memory"));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  // The same pickle with a few copies fits.
  std::string few = p.substr(0, p.find("h\x02h\x01", 0, 4)) + "h\x02h\x01\x85R0N.";
  EXPECT_TRUE(Unpickle(few, limits).ok());
}

}  // namespace
}  // namespace convnext::pickle

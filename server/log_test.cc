// Structured log lines: plain values as they are, anything a logfmt parser could misread quoted
// and escaped, so that a hostile value (a model name, an error message) cannot forge fields or
// lines.
#include "server/log.h"

#include <gtest/gtest.h>

namespace convnext::server {
namespace {

TEST(LogTest, PlainValuesStayPlain) {
  EXPECT_EQ(FormatLogFields("info", "request", {{"model", "tiny"}, {"latency_us", "1234"}}),
            "level=info event=request model=tiny latency_us=1234");
}

TEST(LogTest, ValuesThatCouldBreakTheLineAreQuotedAndEscaped) {
  EXPECT_EQ(FormatLogFields("warning", "request", {{"message", "no model named 'x'"}}),
            "level=warning event=request message=\"no model named \\'x\\'\"");
  EXPECT_EQ(FormatLogFields("info", "e", {{"v", "a=b"}}), "level=info event=e v=\"a=b\"");
  EXPECT_EQ(FormatLogFields("info", "e", {{"v", "say \"hi\""}}),
            "level=info event=e v=\"say \\\"hi\\\"\"");
  EXPECT_EQ(FormatLogFields("info", "e", {{"v", ""}}), "level=info event=e v=\"\"");
  // A newline cannot start a forged line; backslashes and control bytes are escaped too.
  const std::string forged =
      FormatLogFields("info", "e", {{"v", "x\nlevel=error event=forged"}, {"w", "a\\b\x01"}});
  EXPECT_EQ(forged.find('\n'), std::string::npos) << forged;
  EXPECT_EQ(forged, "level=info event=e v=\"x\\nlevel=error event=forged\" w=\"a\\\\b\\x01\"");
  // Bytes above 0x7e (UTF-8, or garbage) are escaped rather than written raw.
  EXPECT_EQ(FormatLogFields("info", "e", {{"v", "caf\xc3\xa9"}}),
            "level=info event=e v=\"caf\\xc3\\xa9\"");
}

}  // namespace
}  // namespace convnext::server

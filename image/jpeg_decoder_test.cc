#include "image/jpeg_decoder.h"

// jpeglib.h needs size_t and FILE declared before it.
#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

#include "image/image_header.h"
#include "image/preprocess.h"
#include "testing/testdata.h"

namespace convnext {
namespace {

using testing::TestdataPath;

std::string Photo(const std::string& name) {
  return testing::ReadTestFile(TestdataPath("preprocess/" + name));
}

// OpenCV's decode (EXIF orientation applied), BGR.
cv::Mat OpenCvBgr(const std::string& bytes) {
  const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
  return cv::imdecode(buf, cv::IMREAD_COLOR);
}

// What the general decoder sees: OpenCV's decode turned to RGB.
cv::Mat OpenCvRgb(const std::string& bytes) {
  const cv::Mat bgr = OpenCvBgr(bytes);
  cv::Mat rgb;
  if (!bgr.empty()) cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

ImageHeader Header(const std::string& bytes) {
  absl::StatusOr<ImageHeader> header = ReadImageHeader(bytes);
  EXPECT_TRUE(header.ok()) << header.status();
  return header.ok() ? *header : ImageHeader();
}

// The fast path's pixels equal OpenCV's, byte for byte.
void ExpectSameAsOpenCv(const std::string& jpeg, const std::string& what) {
  SCOPED_TRACE(what);
  const std::optional<RgbImage> fast = DecodeCommonJpeg(jpeg, Header(jpeg), int64_t{1} << 30);
  ASSERT_TRUE(fast.has_value());
  const cv::Mat reference = OpenCvRgb(jpeg);
  ASSERT_FALSE(reference.empty());
  ASSERT_EQ(fast->width, reference.cols);
  ASSERT_EQ(fast->height, reference.rows);
  ASSERT_TRUE(reference.isContinuous());
  const std::vector<uint8_t> expected(reference.data, reference.data + reference.total() * 3);
  EXPECT_EQ(fast->pixels, expected);
}

std::string Encode(const cv::Mat& image, const std::vector<int>& params) {
  std::vector<uint8_t> bytes;
  EXPECT_TRUE(cv::imencode(".jpg", image, bytes, params));
  return std::string(bytes.begin(), bytes.end());
}

cv::Mat ChinaBgr() { return OpenCvBgr(Photo("china.jpg")); }

// A CMYK JPEG (what Photoshop writes for print), which libjpeg cannot turn into RGB itself.
std::string CmykJpeg(int width, int height) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr errors;
  cinfo.err = jpeg_std_error(&errors);
  jpeg_create_compress(&cinfo);
  unsigned char* out = nullptr;
  unsigned long size = 0;  // NOLINT(runtime/int): libjpeg's type.
  jpeg_mem_dest(&cinfo, &out, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = 4;
  cinfo.in_color_space = JCS_CMYK;
  jpeg_set_defaults(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  std::vector<unsigned char> row(static_cast<size_t>(width) * 4);
  while (cinfo.next_scanline < cinfo.image_height) {
    for (int x = 0; x < width * 4; ++x)
      row[x] = static_cast<unsigned char>(x * 7 + cinfo.next_scanline);
    JSAMPROW rows[1] = {row.data()};
    jpeg_write_scanlines(&cinfo, rows, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string bytes(reinterpret_cast<const char*>(out), size);
  std::free(out);
  return bytes;
}

// `jpeg` with an APP1 segment holding "Exif\0\0" and `tiff` inserted after its SOI marker.
std::string WithExif(const std::string& jpeg, const std::string& tiff) {
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const size_t length = payload.size() + 2;
  std::string segment = "\xFF\xE1";
  segment += static_cast<char>(length >> 8);
  segment += static_cast<char>(length & 0xFF);
  return jpeg.substr(0, 2) + segment + payload + jpeg.substr(2);
}

// A TIFF header and an IFD0 of `entries` 12-byte entries (tag, type, count, value), in either byte
// order; `count_override` >= 0 states another entry count than the entries given.
struct Entry {
  uint16_t tag, type;
  uint32_t count;
  uint16_t value;
};
std::string Tiff(bool little, const std::vector<Entry>& entries, int count_override = -1) {
  std::string out;
  auto put = [&](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) {
      const int shift = 8 * (little ? i : n - 1 - i);
      out += static_cast<char>((v >> shift) & 0xFF);
    }
  };
  out += little ? "II" : "MM";
  put(42, 2);
  put(8, 4);  // IFD0 right after the header.
  put(count_override >= 0 ? count_override : entries.size(), 2);
  for (const Entry& e : entries) {
    put(e.tag, 2);
    put(e.type, 2);
    put(e.count, 4);
    put(e.value, 2);  // A SHORT's value sits in the first two of the four value bytes.
    put(0, 2);
  }
  put(0, 4);  // No next IFD.
  return out;
}

constexpr Entry Orientation(uint16_t value) { return Entry{0x0112, 3, 1, value}; }
constexpr Entry Software() { return Entry{0x0131, 2, 2, 0x4100}; }  // ASCII "A\0".

TEST(JpegDecoderTest, SamePixelsAsOpenCv) {
  ExpectSameAsOpenCv(Photo("china.jpg"), "china.jpg");
  ExpectSameAsOpenCv(Photo("flower.jpg"), "flower.jpg");
  const cv::Mat china = ChinaBgr();
  ASSERT_FALSE(china.empty());
  ExpectSameAsOpenCv(Encode(china, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}), "progressive");
  ExpectSameAsOpenCv(
      Encode(china, {cv::IMWRITE_JPEG_QUALITY, 40, cv::IMWRITE_JPEG_RST_INTERVAL, 3}),
      "quality 40, restart markers");
  cv::Mat gray;
  cv::cvtColor(china, gray, cv::COLOR_BGR2GRAY);
  ExpectSameAsOpenCv(Encode(gray, {}), "grayscale");
  // Sides that are no multiple of the 16-pixel chroma blocks.
  ExpectSameAsOpenCv(Encode(china(cv::Rect(3, 5, 37, 23)).clone(), {}), "37x23");
  ExpectSameAsOpenCv(Encode(china(cv::Rect(0, 0, 1, 1)).clone(), {}), "1x1");
}

TEST(JpegDecoderTest, CorruptScanDataDecodesAsOpenCvDecodesIt) {
  // Bytes changed inside the entropy-coded data (no marker made or broken): libjpeg warns and
  // decodes something; the fast path must give the same something, not an error or other pixels.
  std::string jpeg = Photo("china.jpg");
  int changed = 0;
  for (size_t i = jpeg.size() / 2; i < jpeg.size() - 2 && changed < 8; i += 997) {
    const char flipped = static_cast<char>(jpeg[i] ^ 0x5A);
    if (jpeg[i - 1] == '\xFF' || jpeg[i] == '\xFF' || flipped == '\xFF') continue;
    jpeg[i] = flipped;
    ++changed;
  }
  ASSERT_EQ(changed, 8);
  const cv::Mat reference = OpenCvRgb(jpeg);
  const std::optional<RgbImage> fast = DecodeCommonJpeg(jpeg, Header(jpeg), int64_t{1} << 30);
  if (reference.empty()) {
    EXPECT_FALSE(fast.has_value());
  } else {
    ExpectSameAsOpenCv(jpeg, "corrupt scan data");
  }
}

TEST(JpegDecoderTest, LeavesTheRestToTheGeneralDecoder) {
  const int64_t lots = int64_t{1} << 30;
  // CMYK: not for libjpeg to turn into RGB; OpenCV still decodes it, through DecodeImage.
  const std::string cmyk = CmykJpeg(24, 16);
  EXPECT_FALSE(DecodeCommonJpeg(cmyk, Header(cmyk), lots).has_value());
  absl::StatusOr<RgbImage> decoded = DecodeImage(cmyk, PreprocessConfig());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->width, 24);
  EXPECT_EQ(decoded->height, 16);
  // An EXIF orientation to apply: DecodeImage turns it (PreprocessDecodeTest).
  const std::string rotated = Photo("exif_rotated.jpg");
  EXPECT_EQ(Header(rotated).exif_orientation, 6);
  EXPECT_FALSE(DecodeCommonJpeg(rotated, Header(rotated), lots).has_value());
  // Over the pixel limit.
  const std::string china = Photo("china.jpg");
  EXPECT_FALSE(DecodeCommonJpeg(china, Header(china), 640 * 427 - 1).has_value());
  EXPECT_TRUE(DecodeCommonJpeg(china, Header(china), 640 * 427).has_value());
  // Not a JPEG, or bytes libjpeg refuses.
  EXPECT_FALSE(DecodeCommonJpeg("\x89PNG", ImageHeader(), lots).has_value());
  ImageHeader claims_jpeg;
  claims_jpeg.format = ImageFormat::kJpeg;
  EXPECT_FALSE(DecodeCommonJpeg("\xFF\xD8\xFF\xD9", claims_jpeg, lots).has_value());
  EXPECT_FALSE(DecodeCommonJpeg("", claims_jpeg, lots).has_value());
}

TEST(JpegDecoderTest, DecodeImageGivesOpenCvsPixels) {
  const std::string jpeg = WithExif(Photo("flower.jpg"), Tiff(true, {Software(), Orientation(1)}));
  EXPECT_EQ(Header(jpeg).exif_orientation, 1);
  absl::StatusOr<RgbImage> image = DecodeImage(jpeg, PreprocessConfig());
  ASSERT_TRUE(image.ok()) << image.status();
  const cv::Mat reference = OpenCvRgb(jpeg);
  ASSERT_EQ(image->width, reference.cols);
  ASSERT_EQ(image->height, reference.rows);
  EXPECT_EQ(image->pixels,
            std::vector<uint8_t>(reference.data, reference.data + reference.total() * 3));
}

TEST(JpegOrientationTest, ReadFromTheExifSegment) {
  const std::string jpeg = Encode(ChinaBgr()(cv::Rect(0, 0, 16, 8)).clone(), {});
  EXPECT_EQ(Header(jpeg).exif_orientation, 1) << "no EXIF";
  EXPECT_EQ(Header(WithExif(jpeg, Tiff(true, {Orientation(6)}))).exif_orientation, 6);
  EXPECT_EQ(Header(WithExif(jpeg, Tiff(false, {Software(), Orientation(3)}))).exif_orientation, 3);
  EXPECT_EQ(Header(WithExif(jpeg, Tiff(false, {Orientation(1)}))).exif_orientation, 1);
  EXPECT_EQ(Header(WithExif(jpeg, Tiff(true, {Software()}))).exif_orientation, 1)
      << "no orientation tag";
  // Values outside 1-8 are reported as stated (the general decoder then ignores them).
  EXPECT_EQ(Header(WithExif(jpeg, Tiff(true, {Orientation(9)}))).exif_orientation, 9);
}

TEST(JpegOrientationTest, UnreadWhereNotCertain) {
  const std::string jpeg = Encode(ChinaBgr()(cv::Rect(0, 0, 16, 8)).clone(), {});
  auto orientation = [](const std::string& bytes) { return Header(bytes).exif_orientation; };
  const std::string one = Tiff(true, {Orientation(1)});
  EXPECT_EQ(orientation(WithExif(WithExif(jpeg, one), one)), kUnreadOrientation) << "two segments";
  EXPECT_EQ(orientation(WithExif(jpeg, Tiff(true, {Orientation(1)}, 40))), kUnreadOrientation)
      << "the directory runs past the segment";
  EXPECT_EQ(orientation(WithExif(jpeg, Tiff(true, {Entry{0x0112, 4, 1, 1}}))), kUnreadOrientation)
      << "a LONG";
  EXPECT_EQ(orientation(WithExif(jpeg, Tiff(true, {Entry{0x0112, 3, 2, 1}}))), kUnreadOrientation)
      << "two values";
  EXPECT_EQ(orientation(WithExif(jpeg, Tiff(true, {Orientation(1), Orientation(1)}))),
            kUnreadOrientation)
      << "the tag twice";
  EXPECT_EQ(orientation(WithExif(jpeg, Tiff(true, {Orientation(0)}))), kUnreadOrientation);
  std::string bad_order = Tiff(true, {Orientation(1)});
  bad_order[0] = 'X';
  EXPECT_EQ(orientation(WithExif(jpeg, bad_order)), kUnreadOrientation) << "byte order";
  EXPECT_EQ(orientation(WithExif(jpeg, "II*")), kUnreadOrientation) << "a cut-off TIFF header";
  std::string far_ifd = Tiff(true, {Orientation(1)});
  far_ifd[4] = '\x7F';  // IFD0 offset 127, past the segment.
  EXPECT_EQ(orientation(WithExif(jpeg, far_ifd)), kUnreadOrientation) << "IFD0 offset";
}

}  // namespace
}  // namespace convnext

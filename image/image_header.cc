#include "image/image_header.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace convnext {
namespace {

// A bounds-checked view of the encoded bytes. Every read is preceded by Has().
class Bytes {
 public:
  explicit Bytes(absl::string_view data)
      : data_(reinterpret_cast<const uint8_t*>(data.data())), size_(data.size()) {}

  size_t size() const { return size_; }
  const uint8_t* data() const { return data_; }
  bool Has(size_t offset, size_t n) const { return offset <= size_ && n <= size_ - offset; }
  uint8_t U8(size_t i) const { return data_[i]; }
  // The n-byte (n <= 8) unsigned integer at `offset`.
  uint64_t Uint(size_t offset, int n, bool little_endian) const {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) {
      v = (v << 8) | data_[offset + (little_endian ? n - 1 - i : i)];
    }
    return v;
  }
  uint64_t Le(size_t offset, int n) const { return Uint(offset, n, true); }
  uint64_t Be(size_t offset, int n) const { return Uint(offset, n, false); }
  bool StartsWith(size_t offset, absl::string_view s) const {
    return Has(offset, s.size()) && std::memcmp(data_ + offset, s.data(), s.size()) == 0;
  }

 private:
  const uint8_t* data_;
  size_t size_;
};

absl::Status Truncated(ImageFormat format, absl::string_view where) {
  return absl::InvalidArgumentError(
      absl::StrCat("truncated ", ImageFormatName(format), " image: the data ends ", where));
}

absl::Status Malformed(ImageFormat format, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed ", ImageFormatName(format), " image: ", what));
}

absl::StatusOr<ImageHeader> Make(ImageFormat format, int64_t width, int64_t height) {
  constexpr int64_t kMaxSide = std::numeric_limits<int32_t>::max();
  if (width < 1 || height < 1 || width > kMaxSide || height > kMaxSide) {
    return Malformed(format, absl::StrCat("the header declares a ", width, "x", height, " image"));
  }
  ImageHeader header;
  header.format = format;
  header.width = width;
  header.height = height;
  return header;
}

bool IsJpegFrameMarker(uint8_t m) {  // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
  return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
}

// The orientation stated by an APP1 "Exif" segment's payload of `length` bytes at `pos` (after the
// segment's length field): 1 where its IFD0 has no orientation tag, kUnreadOrientation where the
// TIFF structure cannot be read with certainty (see ImageHeader::exif_orientation).
int ExifOrientation(const Bytes& b, size_t pos, size_t length) {
  const size_t tiff = pos + 6, end = pos + length;  // After "Exif\0\0".
  if (length < 6 + 8 || b.U8(pos + 4) != 0 || b.U8(pos + 5) != 0) return kUnreadOrientation;
  bool little;
  if (b.StartsWith(tiff, "II")) {
    little = true;
  } else if (b.StartsWith(tiff, "MM")) {
    little = false;
  } else {
    return kUnreadOrientation;
  }
  if (b.Uint(tiff + 2, 2, little) != 42) return kUnreadOrientation;
  const uint64_t ifd = b.Uint(tiff + 4, 4, little);
  if (ifd > end - tiff || end - tiff - ifd < 2) return kUnreadOrientation;
  const size_t entries = tiff + ifd + 2;
  const uint64_t count = b.Uint(tiff + ifd, 2, little);
  if (count * 12 > end - entries) return kUnreadOrientation;
  int orientation = 1;
  bool seen = false;
  for (uint64_t i = 0; i < count; ++i) {
    const size_t e = entries + 12 * i;
    if (b.Uint(e, 2, little) != 0x0112) continue;
    // Type SHORT (3), count 1, the value in the entry's first two value bytes.
    if (seen || b.Uint(e + 2, 2, little) != 3 || b.Uint(e + 4, 4, little) != 1) {
      return kUnreadOrientation;
    }
    seen = true;
    orientation = static_cast<int>(b.Uint(e + 8, 2, little));
    if (orientation == kUnreadOrientation) return kUnreadOrientation;
  }
  return orientation;
}

// Walks the markers from SOI to EOI as libjpeg reads them: stray bytes before a marker and 0xFF
// fill bytes are skipped, segments are skipped by their length, and entropy-coded data after SOS
// runs to the next marker that is neither a stuffed zero (FF 00) nor a restart marker (FF D0-D7).
absl::StatusOr<ImageHeader> ReadJpeg(const Bytes& b) {
  constexpr ImageFormat kJpeg = ImageFormat::kJpeg;
  int64_t width = 0, height = 0;
  int orientation = 1, exif_segments = 0;
  bool scanned = false;  // A scan (SOS) has been passed.
  size_t pos = 2;        // After SOI.
  while (true) {
    while (pos < b.size() && b.U8(pos) != 0xFF) ++pos;
    while (pos < b.size() && b.U8(pos) == 0xFF) ++pos;
    if (pos >= b.size()) {
      return Truncated(
          kJpeg, width > 0 ? "before the end-of-image marker" : "before the frame (SOF) header");
    }
    const uint8_t marker = b.U8(pos++);
    if (marker == 0xD9) break;  // EOI.
    if (marker == 0x00 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;
    if (!b.Has(pos, 2)) return Truncated(kJpeg, "inside a segment header");
    const size_t length = b.Be(pos, 2);  // Includes the two length bytes.
    if (length < 2) {
      return Malformed(kJpeg, absl::StrCat("segment length ", length, " at byte ", pos));
    }
    if (!b.Has(pos, length)) return Truncated(kJpeg, "inside a segment");
    if (IsJpegFrameMarker(marker) && width == 0) {
      if (length < 7) return Malformed(kJpeg, "frame header too short");
      height = static_cast<int64_t>(b.Be(pos + 3, 2));
      width = static_cast<int64_t>(b.Be(pos + 5, 2));
      if (width == 0 || height == 0) {  // A height given later by a DNL marker: libjpeg refuses.
        return Malformed(kJpeg, absl::StrCat("the frame header declares ", width, "x", height));
      }
    }
    if (marker == 0xE1 && length >= 6 && b.StartsWith(pos + 2, "Exif")) {
      orientation = ++exif_segments == 1 && !scanned ? ExifOrientation(b, pos + 2, length - 2)
                                                     : kUnreadOrientation;
    }
    pos += length;
    if (marker != 0xDA) continue;  // Not SOS.
    scanned = true;
    if (width == 0) return Malformed(kJpeg, "scan data before the frame (SOF) header");
    while (true) {
      const void* ff = std::memchr(b.data() + pos, 0xFF, b.size() - pos);
      if (ff == nullptr) return Truncated(kJpeg, "inside the scan data");
      size_t next = static_cast<const uint8_t*>(ff) - b.data() + 1;
      while (next < b.size() && b.U8(next) == 0xFF) ++next;
      if (next >= b.size()) return Truncated(kJpeg, "inside the scan data");
      const uint8_t m = b.U8(next);
      if (m == 0x00 || (m >= 0xD0 && m <= 0xD7)) {
        pos = next + 1;
        continue;
      }
      pos = next - 1;  // The 0xFF before the marker that ends the scan.
      break;
    }
  }
  if (width == 0) return Malformed(kJpeg, "no frame (SOF) header before the end-of-image marker");
  absl::StatusOr<ImageHeader> header = Make(kJpeg, width, height);
  if (header.ok()) header->exif_orientation = orientation;
  return header;
}

absl::StatusOr<ImageHeader> ReadPng(const Bytes& b) {
  // Signature (8), then the IHDR chunk: length (4), "IHDR", width (4), height (4), ...
  if (!b.Has(0, 24)) return Truncated(ImageFormat::kPng, "inside the IHDR header");
  if (!b.StartsWith(12, "IHDR")) return Malformed(ImageFormat::kPng, "first chunk is not IHDR");
  return Make(ImageFormat::kPng, b.Be(16, 4), b.Be(20, 4));
}

absl::StatusOr<ImageHeader> ReadBmp(const Bytes& b) {
  // File header (14), then the DIB header whose size (4) tells its layout.
  if (!b.Has(0, 18)) return Truncated(ImageFormat::kBmp, "inside the header");
  const uint64_t dib_size = b.Le(14, 4);
  if (dib_size == 12) {  // BITMAPCOREHEADER: 16-bit unsigned width and height.
    if (!b.Has(0, 22)) return Truncated(ImageFormat::kBmp, "inside the header");
    return Make(ImageFormat::kBmp, b.Le(18, 2), b.Le(20, 2));
  }
  if (dib_size < 16) return Malformed(ImageFormat::kBmp, "unknown DIB header");
  if (!b.Has(0, 26)) return Truncated(ImageFormat::kBmp, "inside the header");
  // 32-bit signed; a negative height means rows are stored top-down.
  const int64_t width = static_cast<int32_t>(b.Le(18, 4));
  const int64_t height = static_cast<int32_t>(b.Le(22, 4));
  return Make(ImageFormat::kBmp, width, height < 0 ? -height : height);
}

absl::StatusOr<ImageHeader> ReadGif(const Bytes& b) {
  if (!b.Has(0, 10)) return Truncated(ImageFormat::kGif, "inside the header");
  return Make(ImageFormat::kGif, b.Le(6, 2), b.Le(8, 2));
}

absl::StatusOr<ImageHeader> ReadWebp(const Bytes& b) {
  // "RIFF" size "WEBP", then the first chunk: FourCC (4), size (4), payload from byte 20.
  constexpr ImageFormat kWebp = ImageFormat::kWebp;
  if (b.StartsWith(12, "VP8 ")) {  // Lossy: frame tag (3), start code 9D 01 2A, 14-bit sizes.
    if (!b.Has(0, 30)) return Truncated(kWebp, "inside the VP8 header");
    if (b.Be(23, 3) != 0x9D012A) return Malformed(kWebp, "bad VP8 start code");
    return Make(kWebp, b.Le(26, 2) & 0x3FFF, b.Le(28, 2) & 0x3FFF);
  }
  if (b.StartsWith(12, "VP8L")) {  // Lossless: signature 2F, then 14-bit width-1, height-1.
    if (!b.Has(0, 25)) return Truncated(kWebp, "inside the VP8L header");
    if (b.U8(20) != 0x2F) return Malformed(kWebp, "bad VP8L signature");
    const uint64_t bits = b.Le(21, 4);
    return Make(kWebp, (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1);
  }
  if (b.StartsWith(12, "VP8X")) {  // Extended: flags (4), 24-bit canvas width-1, height-1.
    if (!b.Has(0, 30)) return Truncated(kWebp, "inside the VP8X header");
    return Make(kWebp, b.Le(24, 3) + 1, b.Le(27, 3) + 1);
  }
  if (!b.Has(0, 16)) return Truncated(kWebp, "before the first chunk");
  return Malformed(kWebp, "the first chunk is not VP8, VP8L or VP8X");
}

// Classic TIFF ("II*\0" / "MM\0*") or BigTIFF ("II+\0" / "MM\0+"): ImageWidth (256) and
// ImageLength (257) of the first image file directory, which is the image OpenCV decodes.
absl::StatusOr<ImageHeader> ReadTiff(const Bytes& b) {
  constexpr ImageFormat kTiff = ImageFormat::kTiff;
  if (!b.Has(0, 16)) return Truncated(kTiff, "inside the header");
  const bool le = b.U8(0) == 'I';
  const bool big = b.Uint(2, 2, le) == 43;
  const int offset_bytes = big ? 8 : 4;  // Size of offsets, entry counts and entry values.
  const uint64_t ifd = big ? b.Uint(8, 8, le) : b.Uint(4, 4, le);
  const int count_bytes = big ? 8 : 2;
  if (!b.Has(ifd, count_bytes)) return Truncated(kTiff, "before the directory");
  const uint64_t entries = b.Uint(ifd, count_bytes, le);
  const size_t entry_bytes = 4 + 2 * offset_bytes;  // Tag (2), type (2), count, value.
  int64_t dims[2] = {0, 0};                         // ImageWidth, ImageLength.
  bool seen[2] = {false, false};
  for (uint64_t i = 0; i < entries; ++i) {
    const size_t at = ifd + count_bytes + i * entry_bytes;
    if (!b.Has(at, entry_bytes)) return Truncated(kTiff, "inside the directory");
    const uint64_t tag = b.Uint(at, 2, le);
    if (tag != 256 && tag != 257) continue;
    // libtiff keeps the first of duplicated tags, a reader that keeps the last would check another
    // size than the one decoded: refused.
    if (seen[tag - 256]) return Malformed(kTiff, absl::StrCat("tag ", tag, " appears twice"));
    seen[tag - 256] = true;
    const uint64_t type = b.Uint(at + 2, 2, le);
    const size_t value_at = at + 4 + offset_bytes;
    uint64_t value;
    if (type == 3) {  // SHORT
      value = b.Uint(value_at, 2, le);
    } else if (type == 4) {  // LONG
      value = b.Uint(value_at, 4, le);
    } else if (type == 16 && big) {  // LONG8
      value = b.Uint(value_at, 8, le);
    } else {
      return Malformed(kTiff, absl::StrCat("tag ", tag, " has type ", type));
    }
    dims[tag - 256] = static_cast<int64_t>(std::min<uint64_t>(value, uint64_t{1} << 40));
  }
  if (dims[0] == 0 || dims[1] == 0) return Malformed(kTiff, "no ImageWidth or ImageLength tag");
  return Make(kTiff, dims[0], dims[1]);
}

bool IsSpace(uint8_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Netpbm P1-P6: "P<n>", then width and height as decimal numbers separated by whitespace, where
// '#' starts a comment running to the end of the line.
absl::StatusOr<ImageHeader> ReadPnm(const Bytes& b) {
  size_t pos = 2;
  int64_t dims[2];
  for (int64_t& dim : dims) {
    while (pos < b.size()) {
      const uint8_t c = b.U8(pos);
      if (c == '#') {
        while (pos < b.size() && b.U8(pos) != '\n' && b.U8(pos) != '\r') ++pos;
      } else if (IsSpace(c)) {
        ++pos;
      } else {
        break;
      }
    }
    if (pos >= b.size()) return Truncated(ImageFormat::kPnm, "inside the header");
    if (b.U8(pos) < '0' || b.U8(pos) > '9') return Malformed(ImageFormat::kPnm, "bad header");
    dim = 0;
    while (pos < b.size() && b.U8(pos) >= '0' && b.U8(pos) <= '9') {
      dim = std::min<int64_t>(dim * 10 + (b.U8(pos++) - '0'), int64_t{1} << 40);
    }
  }
  return Make(ImageFormat::kPnm, dims[0], dims[1]);
}

}  // namespace

absl::string_view ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg:
      return "JPEG";
    case ImageFormat::kPng:
      return "PNG";
    case ImageFormat::kBmp:
      return "BMP";
    case ImageFormat::kWebp:
      return "WebP";
    case ImageFormat::kGif:
      return "GIF";
    case ImageFormat::kTiff:
      return "TIFF";
    case ImageFormat::kPnm:
      return "PNM";
    case ImageFormat::kUnknown:
      break;
  }
  return "unknown";
}

absl::StatusOr<ImageHeader> ReadImageHeader(absl::string_view encoded) {
  const Bytes b(encoded);
  if (b.StartsWith(0, "\xFF\xD8\xFF")) return ReadJpeg(b);
  if (b.StartsWith(0, "\x89PNG\r\n\x1A\n")) return ReadPng(b);
  if (b.StartsWith(0, "GIF87a") || b.StartsWith(0, "GIF89a")) return ReadGif(b);
  if (b.StartsWith(0, "RIFF") && b.StartsWith(8, "WEBP")) return ReadWebp(b);
  if (b.StartsWith(0, absl::string_view("II*\0", 4)) ||
      b.StartsWith(0, absl::string_view("MM\0*", 4)) ||
      b.StartsWith(0, absl::string_view("II+\0", 4)) ||
      b.StartsWith(0, absl::string_view("MM\0+", 4))) {
    return ReadTiff(b);
  }
  if (b.StartsWith(0, "BM")) return ReadBmp(b);
  if (b.Has(0, 3) && b.U8(0) == 'P' && b.U8(1) >= '1' && b.U8(1) <= '6' && IsSpace(b.U8(2))) {
    return ReadPnm(b);
  }
  return ImageHeader();
}

}  // namespace convnext

#pragma once
// The safetensors format (Hugging Face's weight files), read and written:
//
//   u64 N (little-endian) · N bytes of JSON header · the data buffer
//   header = {"__metadata__": {string: string}?, name: {"dtype": "F32", "shape": [d0, …],
//             "data_offsets": [begin, end]}, …}   offsets relative to the start of the data buffer
//
// Reading checks the whole header before a byte of tensor data is read or a buffer sized by it is
// allocated: N against the file's size (and a 100 MB cap, the reference implementation's), the JSON,
// every dtype (any of the format's; F32, BF16, F16 and F64 are read as weights), every shape's element count (overflow-checked) against
// end − begin, every range inside the data buffer, aligned to its element size, and no two ranges
// overlapping. An error names the file, the tensor and the field, with what was expected.
// Conversion to float or double happens while reading (bf16 and f16 widen exactly).
// Writing streams through io::AtomicFile: the target is replaced whole or left as it was.
// Needs nlohmann-json: link dftune::hf.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/io/format.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

// The floating-point dtypes dftune reads as weights; `other` is any further dtype of the format
// (BOOL, U8/I8/F8_*, I16/U16, I32/U32, I64/U64: masks, quantisation tables), whose ranges are
// checked like the rest but which are never read as weights.
enum class Dtype { f32, bf16, f16, f64, other };

// Bytes per element of d (0 for other).
inline std::size_t dtype_size(Dtype d) {
  switch (d) {
    case Dtype::f32: return 4;
    case Dtype::bf16:
    case Dtype::f16: return 2;
    case Dtype::f64: return 8;
    case Dtype::other: return 0;
  }
  return 0;
}

// d as safetensors spells it ("F32", "BF16", …).
inline const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::f32: return "F32";
    case Dtype::bf16: return "BF16";
    case Dtype::f16: return "F16";
    case Dtype::f64: return "F64";
    case Dtype::other: return "another dtype";
  }
  return "?";
}

// Bit conversions of the 16-bit formats (little-endian storage, like every safetensors file).
inline float bf16_to_float(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }

// Round to nearest even; NaN stays NaN.
inline std::uint16_t float_to_bf16(float f) {
  const auto u = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f)) return static_cast<std::uint16_t>((u >> 16) | 0x40);
  return static_cast<std::uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

// IEEE half to float, exactly (subnormals, infinities and NaN included).
inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {  // subnormal (or zero): man · 2^-24
    const float v = static_cast<float>(man) * 0x1p-24f;
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
}

// One tensor of a safetensors header, its byte range checked against the file.
struct TensorInfo {
  std::string name;                // the header's key, e.g. "model.layers.0.mlp.up_proj.weight"
  Dtype dtype = Dtype::f32;        // other for a dtype never read as weights
  std::string dtype_text = "F32";  // as the header spells it
  std::size_t element_size = 4;    // bytes per element
  std::vector<std::size_t> shape;  // row-major
  std::size_t numel = 0;           // the product of shape
  std::uint64_t begin = 0;         // first byte in the data buffer
  std::uint64_t end = 0;           // one past the last byte (end − begin = numel · element_size)
};

// "[r, c]", for error messages.
inline std::string shape_string(std::span<const std::size_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The header cap of the reference implementation: a larger N is refused before it is read.
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

namespace detail {

// The dtype of a header entry and its element size in bytes.
inline std::pair<Dtype, std::size_t> parse_dtype(const std::string& field, const nlohmann::json& j) {
  if (!j.is_string()) dftune::detail::fail(field, j.dump(), "a dtype string");
  const std::string s = j.get<std::string>();
  if (s == "F32") return {Dtype::f32, 4};
  if (s == "BF16") return {Dtype::bf16, 2};
  if (s == "F16") return {Dtype::f16, 2};
  if (s == "F64") return {Dtype::f64, 8};
  if (s == "BOOL" || s == "U8" || s == "I8" || s == "F8_E5M2" || s == "F8_E4M3") return {Dtype::other, 1};
  if (s == "I16" || s == "U16") return {Dtype::other, 2};
  if (s == "I32" || s == "U32") return {Dtype::other, 4};
  if (s == "I64" || s == "U64") return {Dtype::other, 8};
  dftune::detail::fail(field, "\"" + s + "\"", "a safetensors dtype (F32, BF16, F16, F64, BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, I32, U32, I64, U64)");
}

inline std::uint64_t parse_u64(const std::string& field, const nlohmann::json& j) {
  if (!j.is_number_unsigned()) dftune::detail::fail(field, j.dump(), "a non-negative integer");
  return j.get<std::uint64_t>();
}

// Every entry of a parsed header, checked against a data buffer of `buffer` bytes.
inline std::map<std::string, TensorInfo> parse_header(const nlohmann::json& h, std::uint64_t buffer,
                                                      std::map<std::string, std::string>& metadata) {
  if (!h.is_object()) dftune::detail::fail("header", h.type_name(), "a JSON object");
  std::map<std::string, TensorInfo> out;
  for (const auto& [name, e] : h.items()) {
    if (name == "__metadata__") {
      if (!e.is_object()) dftune::detail::fail("header.__metadata__", e.type_name(), "an object of strings");
      for (const auto& [k, v] : e.items()) {
        if (!v.is_string()) dftune::detail::fail("header.__metadata__." + k, v.dump(), "a string");
        metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string f = "header[\"" + name + "\"]";
    if (!e.is_object()) dftune::detail::fail(f, e.type_name(), "an object with dtype, shape and data_offsets");
    for (const char* k : {"dtype", "shape", "data_offsets"})
      if (!e.contains(k)) dftune::detail::fail(f + "." + k, "nothing", "the field");
    TensorInfo t;
    t.name = name;
    std::tie(t.dtype, t.element_size) = parse_dtype(f + ".dtype", e["dtype"]);
    t.dtype_text = e["dtype"].get<std::string>();
    const auto& sh = e["shape"];
    if (!sh.is_array() || sh.size() > 8) dftune::detail::fail(f + ".shape", sh.dump(), "an array of at most 8 sizes");
    t.numel = 1;
    for (std::size_t i = 0; i < sh.size(); ++i) {
      const std::uint64_t v = parse_u64(f + ".shape[" + std::to_string(i) + "]", sh[i]);
      if (v > std::numeric_limits<std::size_t>::max()) dftune::detail::fail(f + ".shape", sh.dump(), "sizes that fit in size_t");
      t.shape.push_back(static_cast<std::size_t>(v));
      t.numel = dftune::detail::checked_mul(f + ".shape (element count)", t.numel, t.shape.back());
    }
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2) dftune::detail::fail(f + ".data_offsets", off.dump(), "[begin, end]");
    t.begin = parse_u64(f + ".data_offsets[0]", off[0]);
    t.end = parse_u64(f + ".data_offsets[1]", off[1]);
    const std::size_t bytes = dftune::detail::checked_mul(f + ".shape (bytes)", t.numel, t.element_size);
    if (t.end < t.begin || t.end - t.begin != bytes)
      dftune::detail::fail(f + ".data_offsets", off.dump(),
                           "a range of " + std::to_string(bytes) + " bytes (" + shape_string(t.shape) + " " + t.dtype_text + ")");
    if (t.end > buffer)
      dftune::detail::fail(f + ".data_offsets", off.dump(), "a range inside the data buffer of " + std::to_string(buffer) + " bytes");
    if (t.begin % t.element_size != 0)
      dftune::detail::fail(f + ".data_offsets", off.dump(), "a begin aligned to the element size " + std::to_string(t.element_size));
    out.emplace(name, std::move(t));
  }
  std::vector<const TensorInfo*> by_begin;
  for (const auto& [n, t] : out)
    if (t.end > t.begin) by_begin.push_back(&t);
  std::sort(by_begin.begin(), by_begin.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_begin.size(); ++i)
    if (by_begin[i]->begin < by_begin[i - 1]->end)
      dftune::detail::fail("header[\"" + by_begin[i]->name + "\"].data_offsets", by_begin[i]->begin,
                           "a range that does not overlap tensor \"" + by_begin[i - 1]->name + "\" (ending at " +
                               std::to_string(by_begin[i - 1]->end) + ")");
  return out;
}

inline std::uint64_t read_u64_le(const unsigned char* b) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

}  // namespace detail

// One safetensors file, its header parsed and checked; tensors are read on demand.
class SafetensorsFile {
 public:
  // Opens and checks `path`'s header: its size (at most max_header_bytes and within the file), JSON,
  // every tensor's dtype, shape and byte range inside the data buffer, without overlaps. Errors
  // (dftune::argument_error, an unreadable file included) name the file and the field.
  explicit SafetensorsFile(const std::filesystem::path& path) : path_(path) {
    io::detail::named("safetensors " + path.string(), [&] { open(); });
  }

  // The file's path.
  const std::filesystem::path& path() const { return path_; }
  // Every tensor of the header, by name.
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  // The header's "__metadata__" strings.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor called `name`, or nullptr.
  const TensorInfo* find(std::string_view name) const {
    const auto it = tensors_.find(std::string(name));
    return it == tensors_.end() ? nullptr : &it->second;
  }

  // Reads tensor `name` into out (its element count), widened or narrowed to T. `transpose`: the
  // 2-D tensor [r, c] lands as [c, r] (GPT-2's Conv1D weights into the [out, in] layout).
  template <class T>
  void read(const TensorInfo& t, std::span<T> out, bool transpose = false) const {
    io::detail::named("safetensors " + path_.string() + ": tensor \"" + t.name + "\"", [&] {
      if (t.dtype == Dtype::other) dftune::detail::fail("dtype", t.dtype_text, "F32, BF16, F16 or F64 (a floating-point weight)");
      dftune::detail::check_size("destination", out.size(), t.numel);
      if (transpose && t.shape.size() != 2) dftune::detail::fail("shape", shape_string(t.shape), "a matrix (2 dimensions) to transpose");
      std::ifstream in(path_, std::ios::binary);
      if (!in) dftune::detail::fail("path", path_, "a readable file");
      in.seekg(static_cast<std::streamoff>(data_start_ + t.begin));
      // Chunks of whole rows (of the file's [rows, cols] when transposing), converted with one
      // loop per dtype, then copied, or scattered column by column so that the writes into the
      // [cols, rows] destination are runs of consecutive rows.
      const std::size_t es = t.element_size, rows = transpose ? t.shape[0] : t.numel, cols = transpose ? t.shape[1] : 1;
      const std::size_t per = cols == 0 ? 1 : std::max<std::size_t>(1, (std::size_t{1} << 16) / cols) * cols;
      std::vector<unsigned char> buf(std::min(t.numel, per) * es);
      std::vector<T> conv(std::min(t.numel, per));
      for (std::size_t done = 0; done < t.numel;) {
        const std::size_t n = std::min(per, t.numel - done);
        in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n * es));
        if (static_cast<std::size_t>(in.gcount()) != n * es)
          dftune::detail::fail("data", "a file that ends early", std::to_string(t.end - t.begin) + " bytes of data");
        convert(buf.data(), t.dtype, conv.data(), n);
        if (!transpose) {
          std::copy(conv.begin(), conv.begin() + static_cast<std::ptrdiff_t>(n), out.begin() + static_cast<std::ptrdiff_t>(done));
        } else {
          const std::size_t r0 = done / cols, nr = n / cols;
          for (std::size_t j = 0; j < cols; ++j)
            for (std::size_t i = 0; i < nr; ++i) out[j * rows + r0 + i] = conv[i * cols + j];
        }
        done += n;
      }
    });
  }

 private:
  // n elements of dtype d (little-endian) to T.
  template <class T>
  static void convert(const unsigned char* p, Dtype d, T* out, std::size_t n) {
    auto u16 = [&](std::size_t i) { return static_cast<std::uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)); };
    switch (d) {
      case Dtype::f32:
        for (std::size_t i = 0; i < n; ++i) {
          std::uint32_t u = 0;
          if constexpr (std::endian::native == std::endian::little) std::memcpy(&u, p + 4 * i, 4);
          else
            for (int b = 3; b >= 0; --b) u = (u << 8) | p[4 * i + static_cast<std::size_t>(b)];
          out[i] = static_cast<T>(std::bit_cast<float>(u));
        }
        break;
      case Dtype::f64:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(std::bit_cast<double>(detail::read_u64_le(p + 8 * i)));
        break;
      case Dtype::bf16:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(bf16_to_float(u16(i)));
        break;
      case Dtype::f16:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(f16_to_float(u16(i)));
        break;
      case Dtype::other: break;
    }
  }

  void open() {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path_, ec)) dftune::detail::fail("path", path_, "a regular, readable file");
    const std::uint64_t size = std::filesystem::file_size(path_, ec);
    if (ec) dftune::detail::fail("path", path_, "a readable file (" + ec.message() + ")");
    if (size < 8) dftune::detail::fail("file size", size, "at least 8 bytes (the header length)");
    std::ifstream in(path_, std::ios::binary);
    unsigned char len[8];
    if (!in.read(reinterpret_cast<char*>(len), 8)) dftune::detail::fail("path", path_, "a readable file");
    const std::uint64_t n = detail::read_u64_le(len);
    if (n > size - 8)
      dftune::detail::fail("header length", n, "at most the " + std::to_string(size - 8) + " bytes that follow it in the file");
    if (n > max_header_bytes) dftune::detail::fail("header length", n, "at most " + std::to_string(max_header_bytes) + " bytes");
    std::string text(static_cast<std::size_t>(n), '\0');
    if (!in.read(text.data(), static_cast<std::streamsize>(n))) dftune::detail::fail("header", "a file that ends early", std::to_string(n) + " bytes");
    nlohmann::json h = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (h.is_discarded()) dftune::detail::fail("header", "text that is not JSON", "a JSON object");
    data_start_ = 8 + n;
    tensors_ = detail::parse_header(h, size - data_start_, metadata_);
  }

  std::filesystem::path path_;
  std::uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: its elements (row-major, `shape`'s count) and the dtype to store them as.
// `transpose` writes the [r, c] matrix held in data as the file's [c, r] = shape.
template <class T>
struct TensorOut {
  std::string name;                // the header's key
  std::vector<std::size_t> shape;  // as stored in the file
  std::span<const T> data;         // shape's element count
  bool transpose = false;          // data holds the transposed 2-D matrix
};

// Writes a safetensors file atomically: tensors in the given order, contiguous, header padded with
// spaces to a multiple of 8 bytes (as the reference writer does). dtype: f32, bf16, f16 or f64.
template <class T>
void write_safetensors(const std::filesystem::path& path, std::span<const TensorOut<T>> tensors, Dtype dtype,
                       const std::map<std::string, std::string>& metadata = {}) {
  io::detail::named("safetensors " + path.string(), [&] {
    if (dtype != Dtype::f32 && dtype != Dtype::bf16 && dtype != Dtype::f64)
      dftune::detail::fail("dtype", dtype_name(dtype), "F32, BF16 or F64 (dftune writes no F16)");
    nlohmann::ordered_json h;
    if (!metadata.empty()) h["__metadata__"] = metadata;
    const std::size_t es = dtype_size(dtype);
    std::uint64_t at = 0;
    for (const auto& t : tensors) {
      std::size_t numel = 1;
      for (std::size_t s : t.shape) numel = dftune::detail::checked_mul("tensor \"" + t.name + "\" shape", numel, s);
      dftune::detail::check_size("tensor \"" + t.name + "\" data", t.data.size(), numel);
      if (t.transpose && t.shape.size() != 2) dftune::detail::fail("tensor \"" + t.name + "\" shape", shape_string(t.shape), "2 dimensions to transpose");
      if (h.contains(t.name)) dftune::detail::fail("tensor name", t.name, "names that appear once");
      const std::uint64_t bytes = dftune::detail::checked_mul("tensor \"" + t.name + "\" bytes", numel, es);
      h[t.name] = {{"dtype", dtype_name(dtype)}, {"shape", t.shape}, {"data_offsets", {at, at + bytes}}};
      at += bytes;
    }
    std::string text = h.dump();
    text.resize((text.size() + 7) / 8 * 8, ' ');
    io::AtomicFile file(path);
    std::byte len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((static_cast<std::uint64_t>(text.size()) >> (8 * i)) & 0xFF);
    file.write(len);
    file.write(std::as_bytes(std::span<const char>(text.data(), text.size())));
    std::vector<unsigned char> buf;
    for (const auto& t : tensors) {
      const std::size_t numel = t.data.size(), rows = t.transpose ? t.shape[1] : 1, cols = t.transpose ? t.shape[0] : 1;
      buf.resize(numel * es);
      for (std::size_t k = 0; k < numel; ++k) {
        // element k of the file is element (k % rows, k / rows) of the [rows=shape[1], cols=shape[0]] source
        const T x = t.transpose ? t.data[(k % rows) * cols + k / rows] : t.data[k];
        unsigned char* p = buf.data() + k * es;
        std::uint64_t bits = 0;
        if (dtype == Dtype::f32) bits = std::bit_cast<std::uint32_t>(static_cast<float>(x));
        else if (dtype == Dtype::f64) bits = std::bit_cast<std::uint64_t>(static_cast<double>(x));
        else bits = float_to_bf16(static_cast<float>(x));
        for (std::size_t i = 0; i < es; ++i) p[i] = static_cast<unsigned char>((bits >> (8 * i)) & 0xFF);
      }
      file.write(std::as_bytes(std::span<const unsigned char>(buf)));
    }
    file.commit();
  });
}

}  // namespace hf

DFTUNE_NAMESPACE_END

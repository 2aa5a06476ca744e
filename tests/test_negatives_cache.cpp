// The negatives cache (io/negatives_cache.hpp): round trip of a partly sampled set, reuse only
// under the same fingerprint and shape, and the container's guarantees (checksum, truncation,
// nothing written when the negatives are refused).
#include "support/testing.hpp"

#include <dftune/io/negatives_cache.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using namespace dftune;
using dftune::io::Fingerprint;
using dftune::io::Negatives;
using dftune::io::NegativesShape;
using test::error_of;

namespace {

fs::path temp(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("dftune_negatives_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir / name;
}

Fingerprint fingerprint(double temperature) {
  Fingerprint f;
  f.add_text("model", "weights bytes").add_text("data", "train.jsonl bytes").add_value("sampling.temperature", temperature).add_value("sampling.top_k", std::uint64_t{50});
  return f;
}

const NegativesShape shape{.prompts = 3, .m = 2, .max_new = 4, .vocab = 10};

// The negatives of the first `prompts` prompts.
Negatives sample(std::size_t prompts) {
  Negatives n;
  for (std::size_t i = 0; i < prompts * shape.m; ++i) {
    std::vector<token_t> y;
    for (std::size_t t = 0; t <= i % shape.max_new; ++t) y.push_back(static_cast<token_t>((i + t) % shape.vocab));
    n.push(y, -0.5 * static_cast<double>(i + 1));
  }
  return n;
}

}  // namespace

TEST_CASE("negatives cache: nothing at first, then a partial set, then the whole set, reused as saved") {
  const fs::path path = temp("round_trip.bin");
  fs::remove(path);
  CHECK_FALSE(io::load_negatives(path, fingerprint(0.7), shape).has_value());
  io::save_negatives(path, fingerprint(0.7), shape, sample(1));  // interrupted after one prompt
  auto partial = io::load_negatives(path, fingerprint(0.7), shape);
  REQUIRE(partial.has_value());
  CHECK(partial->filled(shape.m) == 1);
  CHECK(partial->tokens == sample(1).tokens);
  const Negatives whole = sample(3);
  io::save_negatives(path, fingerprint(0.7), shape, whole);
  const auto back = io::load_negatives(path, fingerprint(0.7), shape);
  REQUIRE(back.has_value());
  CHECK(back->offsets == whole.offsets);
  CHECK(back->tokens == whole.tokens);
  CHECK(back->logp_ref == whole.logp_ref);
  CHECK(back->filled(shape.m) == 3);
  CHECK(std::vector<token_t>(back->completion(2, 1, shape.m).begin(), back->completion(2, 1, shape.m).end()) ==
        std::vector<token_t>{5, 6});
  fs::remove_all(path.parent_path());
}

TEST_CASE("negatives cache: another fingerprint or shape is refused by name, and the file is kept") {
  const fs::path path = temp("refuse.bin");
  io::save_negatives(path, fingerprint(0.7), shape, sample(2));
  const auto size = fs::file_size(path);
  const std::string e = error_of([&] { (void)io::load_negatives(path, fingerprint(0.8), shape); });
  CHECK(e.find("negatives cache " + path.string()) != std::string::npos);
  CHECK(e.find("fingerprint part \"sampling.temperature\"") != std::string::npos);
  Fingerprint fewer;
  fewer.add_text("model", "weights bytes");
  CHECK(error_of([&] { (void)io::load_negatives(path, fewer, shape); }).find("fingerprint part 1: got \"data\", expected nothing") !=
        std::string::npos);
  NegativesShape other = shape;
  other.m = 4;
  CHECK(error_of([&] { (void)io::load_negatives(path, fingerprint(0.7), other); }).find("m: got 2, expected 4") != std::string::npos);
  other = shape;
  other.vocab = 5;  // the saved tokens go up to 9
  CHECK(error_of([&] { (void)io::load_negatives(path, fingerprint(0.7), other); }).find("tokens[") != std::string::npos);
  CHECK(fs::file_size(path) == size);
  CHECK(io::load_negatives(path, fingerprint(0.7), shape).has_value());
  fs::remove_all(path.parent_path());
}

TEST_CASE("negatives cache: a damaged or truncated file is a named error; bad negatives write nothing") {
  const fs::path path = temp("damaged.bin");
  io::save_negatives(path, fingerprint(0.7), shape, sample(3));
  std::vector<std::byte> bytes = io::read_file(path);
  {
    std::vector<std::byte> flipped = bytes;
    flipped[bytes.size() - 3] ^= std::byte{0x40};  // inside a log-prob
    io::write_file_atomic(path, flipped);
    CHECK(error_of([&] { (void)io::load_negatives(path, fingerprint(0.7), shape); }).find("checksum") != std::string::npos);
  }
  {
    io::write_file_atomic(path, std::span<const std::byte>(bytes).first(bytes.size() - 8));
    CHECK(error_of([&] { (void)io::load_negatives(path, fingerprint(0.7), shape); }).find("truncated") != std::string::npos);
  }
  io::write_file_atomic(path, bytes);
  Negatives bad = sample(1);
  bad.tokens[0] = 10;  // vocab is 10
  CHECK(error_of([&] { io::save_negatives(path, fingerprint(0.7), shape, bad); }).find("tokens[0]: got 10") != std::string::npos);
  bad = sample(1);
  bad.push(std::vector<token_t>{1, 2, 3, 4, 5}, -1.0);  // longer than max_new, and half a prompt
  CHECK(error_of([&] { io::save_negatives(path, fingerprint(0.7), shape, bad); }).find("multiple of m") != std::string::npos);
  bad.push(std::vector<token_t>{1}, -1.0);
  CHECK(error_of([&] { io::save_negatives(path, fingerprint(0.7), shape, bad); }).find("1 to max_new = 4") != std::string::npos);
  CHECK(io::read_file(path) == bytes);  // nothing was written
  CHECK(error_of([] { Fingerprint f; f.add_text("a", "x").add_text("a", "y"); }).find("twice") != std::string::npos);
  fs::remove_all(path.parent_path());
}

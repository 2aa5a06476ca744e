// libFuzzer target: the input checks of sampling (sampling_distribution, sample_token) and of the
// tiny LM (tiny_lm::validate, the TinyLm constructor, generate). The first byte picks the mode:
// sampling over float or double logits, or a config (sizes small, powers of two or raw 64-bit
// values, so products that wrap are reachable) followed by a generate call. Properties:
//   - no crash, no sanitizer report, no exception other than dftune::error;
//   - sampling_distribution / sample_token that throw write nothing; a returned distribution is
//     finite, non-negative, sums to 1, keeps the argmax (greedy: all mass on it), keeps at most
//     top_k tokens, and keeps a most-probable-first prefix (no dropped token outranks a kept one);
//     sample_token returns a token of positive probability;
//   - TinyLm's constructor accepts exactly the configs tiny_lm::validate accepts, with
//     parameter_count(config) parameters;
//   - generate (max_new up to SIZE_MAX) returns the prompts, each extended by at most max_new
//     tokens in [0, vocab) and at most max_len long, or throws dftune::error.
// DFTUNE_FUZZ_WRITE_SEEDS=<dir> writes a valid seed per mode into <dir> at start-up.
#include <dftune/model/sampling.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include "fuzz_input.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

using namespace dftune;

namespace {

template <class T>
void sampling(fuzz::Input& in) {
  const std::size_t V = in.count(0, 24);
  std::vector<T> z(V);
  for (T& x : z) x = in.number<T>(4.0);
  const std::uint8_t sizes = in.byte();
  auto off = [&](int bit) { return (sizes >> bit & 1) ? ((sizes >> (bit + 1) & 1) ? V + 1 : (V > 0 ? V - 1 : 1)) : V; };
  SamplingOptions o;
  const std::uint8_t t = in.byte();
  o.temperature = t % 4 == 0 ? 0.0 : t % 4 == 1 ? in.number<double>(2.0) : 0.05 + (t / 4) / 32.0;
  o.top_k = in.count(0, 26);
  const std::uint8_t p = in.byte();
  o.top_p = p == 0 ? 1.0 : p == 1 ? in.number<double>(1.0) : p / 255.0;
  const std::uint8_t ub = in.byte();
  const double u = ub == 255 ? in.number<double>(1.0) : ub / 256.0;

  const double sentinel = -3.0;
  std::vector<double> probs(off(0), sentinel);
  std::vector<std::int32_t> order(off(2), -3);
  try {
    sampling_distribution<T>(z, o, probs, order);
  } catch (const dftune::error&) {
    for (double x : probs) FUZZ_CHECK(x == sentinel);
    for (std::int32_t i : order) FUZZ_CHECK(i == -3);
    return;
  }
  FUZZ_CHECK(probs.size() == V && V > 0);
  const std::size_t top = static_cast<std::size_t>(std::max_element(z.begin(), z.end()) - z.begin());
  double sum = 0;
  std::size_t kept = 0;
  for (double x : probs) {
    FUZZ_CHECK(std::isfinite(x) && x >= 0);
    sum += x;
    kept += x > 0;
  }
  FUZZ_CHECK(std::abs(sum - 1) <= 1e-12);
  FUZZ_CHECK(probs[top] > 0);
  if (o.temperature == 0) FUZZ_CHECK(probs[top] == 1 && kept == 1);
  if (o.top_k > 0) FUZZ_CHECK(kept <= o.top_k);
  // The kept tokens are a prefix of the ranking by logit, lower index first on equal logits: a
  // token the filter dropped (weight exp((z − max z) / T) > 0, probability 0) never outranks a
  // kept one.
  const double hi = static_cast<double>(z[top]);
  for (std::size_t a = 0; o.temperature > 0 && a < V; ++a) {
    if (probs[a] != 0 || !(std::exp((static_cast<double>(z[a]) - hi) / o.temperature) > 0)) continue;
    for (std::size_t b = 0; b < V; ++b)
      if (probs[b] > 0) FUZZ_CHECK(z[b] > z[a] || (z[b] == z[a] && b < a));
  }
  const std::vector<double> dist = probs;
  try {
    const token_t y = sample_token<T>(z, o, u, probs, order);
    FUZZ_CHECK(y >= 0 && static_cast<std::size_t>(y) < V && dist[static_cast<std::size_t>(y)] > 0);
  } catch (const dftune::error&) {
    FUZZ_CHECK(!(u >= 0 && u < 1));  // the distribution was fine: only u can be refused
  }
}

// A size that is usually small, sometimes a power of two up to 2^49, sometimes raw 64 bits
// (0 and SIZE_MAX included), so that every product of the layout and the buffers can wrap.
std::size_t size_field(fuzz::Input& in, std::size_t small) {
  const std::uint8_t b = in.byte();
  if (b < 200) return 1 + b % small;
  if (b < 250) return std::size_t{1} << (b - 200);
  if (b == 250) return 0;
  if (b == 251) return std::numeric_limits<std::size_t>::max();
  return in.u64();
}

void model(fuzz::Input& in) {
  tiny_lm::Config c;
  c.vocab = size_field(in, 12);
  c.max_len = size_field(in, 12);
  c.d_model = size_field(in, 8);
  c.n_heads = size_field(in, 4);
  c.n_layers = size_field(in, 3);
  c.d_ff = size_field(in, 8);
  c.init_std = in.byte() % 8 == 0 ? in.number<double>(1.0) : 0.5;
  bool valid = true;
  try {
    tiny_lm::validate(c);
  } catch (const dftune::error&) {
    valid = false;
  }
  const bool small = valid && tiny_lm::parameter_count(c) <= 20000 && c.max_len <= 24 && c.n_layers <= 3;
  if (!valid) {
    try {
      TinyLm<float> refused(c);
      FUZZ_CHECK(false);  // the constructor accepted a config validate refused
    } catch (const dftune::error&) {
    }
    return;
  }
  if (!small) return;  // valid but too large to build within the fuzzer's budget
  TinyLm<float> m(c, in.byte());
  FUZZ_CHECK(m.parameters().size() == tiny_lm::parameter_count(c) && m.parameters().size() == m.layout().total);

  std::vector<token_t> tokens;
  std::vector<std::int64_t> offsets{0};
  for (std::size_t p = 0, P = in.count(0, 4); p < P; ++p) {
    for (std::size_t t = 0, len = in.count(0, 6); t < len; ++t) tokens.push_back(static_cast<token_t>(in.byte() % (c.vocab + 1)));
    offsets.push_back(static_cast<std::int64_t>(tokens.size()));
  }
  const std::uint8_t mb = in.byte();
  const std::size_t max_new = mb % 4 == 0 ? in.u64() : mb % 4 == 1 ? std::numeric_limits<std::size_t>::max() - mb / 4 : mb / 4 % 16;
  SamplingOptions o{.temperature = in.byte() % 3 * 0.5, .top_k = in.count(0, 4), .top_p = in.byte() % 2 ? 1.0 : 0.7, .seed = in.byte()};
  const Prompts prompts{.tokens = tokens, .offsets = offsets};
  std::optional<Sequences> out;
  try {
    out = m.generate(prompts, max_new, o, in.byte() % 2 ? std::optional<token_t>(0) : std::nullopt);
  } catch (const dftune::error&) {
    return;
  }
  FUZZ_CHECK(out->size() == prompts.size());
  for (std::size_t p = 0; p < out->size(); ++p) {
    const auto seq = out->view().sequence(p);
    const auto prompt = prompts.prompt(p);
    FUZZ_CHECK(static_cast<std::size_t>(out->prompt_len[p]) == prompt.size());
    FUZZ_CHECK(std::equal(prompt.begin(), prompt.end(), seq.begin()));
    FUZZ_CHECK(seq.size() <= c.max_len && seq.size() - prompt.size() <= max_new);
    for (token_t y : seq) FUZZ_CHECK(y >= 0 && static_cast<std::size_t>(y) < c.vocab);
  }
}

void write_seed(const std::string& dir, const char* name, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("DFTUNE_FUZZ_WRITE_SEEDS")) {
    // mode 0 (float) / 1 (double): V = 5, five moderate logits (byte 0 + two bytes each), sizes
    // right, temperature 0.05 + 20/32, top_k 3, top_p 0.8, u 0.5.
    std::vector<std::uint8_t> s{0, 5};
    for (std::uint8_t k = 0; k < 5; ++k) s.insert(s.end(), {1, static_cast<std::uint8_t>(40 * k), 7});
    s.insert(s.end(), {0, 82, 3, 204, 128});
    write_seed(dir, "seed_sampling_float", s);
    s[0] = 1;
    write_seed(dir, "seed_sampling_double", s);
    // mode 2: vocab 6, max_len 10, d_model 4, n_heads 2, n_layers 2, d_ff 8, init_std 0.5, seed 3,
    // two prompts (2 and 3 tokens), max_new 4, temperature 0.5, top_k 2, top_p 0.7, seed 9, no eos.
    write_seed(dir, "seed_generate", {2, 5, 9, 3, 1, 1, 7, 1, 3, 2, 2, 1, 3, 3, 4, 0, 4, 18, 1, 2, 0, 9, 0});
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  switch (in.byte() % 3) {
    case 0: sampling<float>(in); break;
    case 1: sampling<double>(in); break;
    default: model(in); break;
  }
  return 0;
}

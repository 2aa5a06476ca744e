// Throughput of the byte-level BPE tokenizer (docs/tokenizer.md):
//   bench_tokenizer TOKENIZER.json FILE...
// prints the load time, then encode MB/s over the files' text with a cold cache (a fresh
// tokenizer), with the cache warm (the same text again), and of the pre-tokenizer's regex split alone.
// Times are the process's CPU time (one thread): on a shared machine the wall clock also counts
// the time other processes held the core.
#include <dftune/hf/tokenizer.hpp>

#include <ctime>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER.json FILE...\n", argv[0]);
    return 2;
  }
  struct clock {
    static double now() {
      timespec t{};
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
      return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
    }
  };
  const auto secs = [](double a, double b) { return b - a; };
  std::vector<std::string> texts;
  std::size_t bytes = 0;
  for (int k = 2; k < argc; ++k) {
    std::ifstream in(argv[k], std::ios::binary);
    std::ostringstream os;
    os << in.rdbuf();
    if (dftune::hf::utf8::first_invalid(os.str()) != std::string_view::npos) continue;
    texts.push_back(os.str());
    bytes += texts.back().size();
  }
  const auto t0 = clock::now();
  const auto tok = dftune::hf::Tokenizer::from_file(argv[1]);
  const auto t1 = clock::now();
  std::size_t tokens = 0;
  for (const auto& t : texts) tokens += tok.encode(t).size();
  const auto t2 = clock::now();
  for (const auto& t : texts) tokens -= tok.encode(t).size();
  const auto t3 = clock::now();
  std::size_t pieces = 0;
  const dftune::hf::Regex gpt2(dftune::hf::gpt2_pattern, "gpt2");
  for (const auto& t : texts) gpt2.split(t, [&](std::size_t, std::size_t) { ++pieces; });
  const auto t4 = clock::now();
  std::printf("%zu files, %zu bytes (CPU time); load %.3f s; encode cold %.1f MB/s, warm %.1f MB/s; GPT-2 regex split alone %.1f MB/s (%zu pieces)\n",
              texts.size(), bytes, secs(t0, t1), bytes / secs(t1, t2) / 1e6, bytes / secs(t2, t3) / 1e6, bytes / secs(t3, t4) / 1e6,
              pieces);
  return tokens == 0 ? 0 : 1;
}

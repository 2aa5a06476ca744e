#pragma once
// What the decoder benchmarks (decoder_step.cpp, decoder_bf16.cpp) share: the timer, the peak
// resident set, and the token formula bench/torch_decoder.py repeats, so both sides score the same
// tokens.
#include <dftune/model/sequence_batch.hpp>

#include <chrono>
#include <cstddef>
#include <span>
#include <vector>

#include <sys/resource.h>

namespace bench {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// S sequences of L tokens (a 1-token prompt, L − 1 scored); token t of sequence s is
// ((s + salt)·7919 + t·104729 + 13) mod V, as in bench/torch_decoder.py.
inline dftune::Sequences make_sequences(std::size_t S, std::size_t L, std::size_t V, std::size_t salt = 0) {
  dftune::Sequences b;
  for (std::size_t s = 0; s < S; ++s) {
    std::vector<dftune::token_t> seq(L);
    for (std::size_t t = 0; t < L; ++t) seq[t] = static_cast<dftune::token_t>(((s + salt) * 7919 + t * 104729 + 13) % V);
    b.push(std::span<const dftune::token_t>(seq).first(1), std::span<const dftune::token_t>(seq).subspan(1));
  }
  return b;
}

}  // namespace bench

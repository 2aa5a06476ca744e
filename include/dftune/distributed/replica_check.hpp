#pragma once
// Are the replicas the same? (docs/distributed.md, "Replica check".) Data-parallel training keeps
// one copy of the parameters and of the inner rule's state per rank and relies on every rank
// starting from the same bits: the all-reduced gradient and the same rule then keep them equal.
// A per-rank model seed, a rank that loaded another file, or a rule state that differs trains on
// without complaint, and save_sharded keeps rank 0's copy. check_replicas catches it:
//
//   distributed::check_replicas(dft);               // collective: once before the first step
//   if (dft.steps() % 100 == 0) distributed::check_replicas(dft);   // optionally every k steps
//
// Each rank hashes (FNV-1a-64) the bytes the optimizer's section of a checkpoint holds — DftOptions,
// StepOptions, the step count, the parameters, the rule with its moments, the schedule
// (io/checkpoint.hpp, write_optimizer_state; nothing is written anywhere) — and the 8-byte
// checksums are all-gathered. If they differ, every rank throws the same dftune::error naming the
// ranks whose state differs from rank 0's. The estimator is sharded, not replicated: not hashed.
//
// Cost: P·8 bytes received per rank, one all-gather; the hash streams over the state once (n·s
// bytes of parameters plus the rule's moments: 2·n·s for Adam), FNV-1a over 8-byte words rather
// than bytes (one multiply per word: the chain of multiplies is the cost) — docs/distributed.md
// has the measured figures. Not the checkpoint files' checksum; only ranks compare it.
#include <dftune/config.hpp>
#include <dftune/distributed/collectives.hpp>
#include <dftune/error.hpp>
#include <dftune/io/checkpoint.hpp>
#include <dftune/io/format.hpp>
#include <dftune/optim/dft_optimizer.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace distributed {

namespace detail {

// FNV-1a-64 over little-endian 8-byte words (the tail zero-padded, the length mixed in last).
class WordHash final : public io::ByteSink {
 public:
  void write(std::span<const std::byte> bytes) override {
    n_ += bytes.size();
    while (!bytes.empty()) {
      const std::size_t take = std::min(bytes.size(), 8 - fill_);
      std::memcpy(word_.data() + fill_, bytes.data(), take);
      fill_ += take;
      bytes = bytes.subspan(take);
      if (fill_ == 8) mix();
      // whole words straight from the input
      while (fill_ == 0 && bytes.size() >= 8) {
        std::uint64_t w;
        std::memcpy(&w, bytes.data(), 8);
        h_ = (h_ ^ w) * 1099511628211ull;
        bytes = bytes.subspan(8);
      }
    }
  }
  std::uint64_t hash() {
    if (fill_ != 0) {
      std::fill(word_.begin() + static_cast<std::ptrdiff_t>(fill_), word_.end(), std::byte{0});
      mix();
    }
    return (h_ ^ n_) * 1099511628211ull;
  }

 private:
  void mix() {
    std::uint64_t w;
    std::memcpy(&w, word_.data(), 8);
    h_ = (h_ ^ w) * 1099511628211ull;
    fill_ = 0;
  }
  std::array<std::byte, 8> word_{};
  std::size_t fill_ = 0;
  std::uint64_t h_ = 14695981039346656037ull, n_ = 0;
};

}  // namespace detail

// The word-wise FNV-1a-64 of what io::save would write as the optimizer's section; this rank's, no traffic.
template <class M, class R, class S, class C>
std::uint64_t replica_checksum(const DftOptimizer<M, R, S, C>& opt) {
  io::detail::check_checkpointable<M, R, S>();
  detail::WordHash hashed;
  {
    io::Writer w(hashed);
    io::detail::write_optimizer_state(w, opt);
    w.flush();
  }
  return hashed.hash();
}

// Collective. Throws, on every rank alike, if any rank's replica_checksum differs from rank 0's.
template <class M, class R, class S, class C>
void check_replicas(DftOptimizer<M, R, S, C>& opt) {
  auto& comm = opt.communicator();
  const std::vector<std::uint64_t> sums = agree<std::uint64_t>(comm, [&] { return replica_checksum(std::as_const(opt)); });
  std::string differ;
  std::size_t n = 0;
  for (std::size_t r = 1; r < sums.size(); ++r)
    if (sums[r] != sums[0]) {
      differ += (n++ == 0 ? "" : ", ") + std::to_string(r);
    }
  if (n == 0) return;
  char hex[32];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(sums[0]));
  dftune::detail::fail("replicas",
                       "parameters, rule state or options that differ from rank 0's on rank" + std::string(n > 1 ? "s " : " ") +
                           differ + " of " + std::to_string(sums.size()),
                       "identical replicas on every rank (checksum " + std::string(hex) +
                           " as on rank 0): the same initial model, seed, rule state and options on every rank — "
                           "broadcast rank 0's parameters, or load the same checkpoint everywhere");
}

}  // namespace distributed

DFTUNE_NAMESPACE_END

#pragma once
// Typed helpers over a Communicator's byte collectives, and `agree`: the step that makes a local
// failure on any rank the same dftune::error on every rank, instead of a hang (docs/distributed.md).
//
// Why agree exists: a rank that throws before a collective leaves the others blocked in it. So the
// local part of a distributed step (checks, scoring, objective, backward) runs inside agree(), which
// catches its exception, and then every rank takes part in one all-gather of (ok, record). If any
// rank failed, the lowest such rank broadcasts its message and every rank throws
//   dftune::error("rank r of P: <that rank's message>")   (of that rank's kind, error.hpp)
// before anything was written anywhere; otherwise every rank gets every rank's record. In a world
// of one agree() only calls the function, so single-process errors stay exactly as they were.
#include <dftune/config.hpp>
#include <dftune/distributed/communicator.hpp>
#include <dftune/error.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace distributed {

// x ← root's x on every rank, for a span of trivially copyable values.
template <Communicator C, class T>
  requires std::is_trivially_copyable_v<T>
void broadcast_values(C& comm, std::span<T> x, std::size_t root) {
  comm.broadcast(std::as_writable_bytes(x), root);
}

// Every rank's v, in rank order.
template <Communicator C, class T>
  requires std::is_trivially_copyable_v<T>
std::vector<T> all_gather_values(C& comm, const T& v) {
  std::vector<T> out(comm.size());
  comm.all_gather(std::as_bytes(std::span<const T>(&v, 1)), std::as_writable_bytes(std::span<T>(out)));
  return out;
}

// root's string on every rank (its length first, then its bytes).
template <Communicator C>
std::string broadcast_string(C& comm, std::string s, std::size_t root) {
  std::uint64_t n = s.size();
  broadcast_values(comm, std::span<std::uint64_t>(&n, 1), root);
  s.resize(static_cast<std::size_t>(n));
  comm.broadcast(std::as_writable_bytes(std::span<char>(s.data(), s.size())), root);
  return s;
}

// Runs local() on every rank and returns every rank's Record in rank order, or throws the same
// dftune::error on every rank if local() threw on any (see the top of this file).
template <class Record, Communicator C, class F>
std::vector<Record> agree(C& comm, F&& local) {
  static_assert(std::is_trivially_copyable_v<Record> && std::is_default_constructible_v<Record>,
                "dftune::distributed::agree: the record is sent as bytes");
  const std::size_t P = comm.size();
  if (P == 1) return {std::forward<F>(local)()};
  Record mine{};
  std::string message;
  bool ok = true;
  error_kind kind = error_kind::argument;  // of the rank's error, kept on every rank
  try {
    mine = std::forward<F>(local)();
  } catch (const error& e) {
    ok = false;
    message = e.what();
    kind = e.kind();
  } catch (const std::exception& e) {
    ok = false;
    message = e.what();
  } catch (...) {
    ok = false;
    message = "an exception that is not a std::exception";
  }
  constexpr std::size_t n = 1 + sizeof(Record);
  std::array<std::byte, n> packet{};
  packet[0] = std::byte{ok ? std::uint8_t{0xFF} : static_cast<std::uint8_t>(kind)};
  std::memcpy(packet.data() + 1, &mine, sizeof(Record));
  std::vector<std::byte> all(P * n);
  comm.all_gather(std::span<const std::byte>(packet), std::span<std::byte>(all));
  std::size_t first = P, failed = 0;
  for (std::size_t r = 0; r < P; ++r)
    if (all[r * n] != std::byte{0xFF}) {
      if (first == P) first = r;
      ++failed;
    }
  if (failed != 0) {
    const std::string what = broadcast_string(comm, std::move(message), first);
    std::string prefix = "rank " + std::to_string(first) + " of " + std::to_string(P);
    if (failed > 1) prefix += " (and " + std::to_string(failed - 1) + " more)";
    dftune::detail::throw_error(static_cast<error_kind>(all[first * n]), prefix + ": " + what);
  }
  std::vector<Record> out(P);
  for (std::size_t r = 0; r < P; ++r) std::memcpy(&out[r], all.data() + r * n + 1, sizeof(Record));
  return out;
}

// agree() for a local step that returns nothing.
template <Communicator C, class F>
void agree(C& comm, F&& local) {
  struct Nothing {};
  (void)agree<Nothing>(comm, [&] {
    std::forward<F>(local)();
    return Nothing{};
  });
}

}  // namespace distributed

DFTUNE_NAMESPACE_END

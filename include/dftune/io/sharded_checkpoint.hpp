#pragma once
// Checkpoints of a data-parallel run (docs/distributed.md): each rank writes its estimator shard,
// rank 0 the model parameters and the inner rule, every file atomically (format.hpp), and a
// manifest written last commits the set. Loading works at any world size: every rank reads the
// shards that hold its ids under the new partition (re-sharding), so
//   P = 2 → save → load at P = 1 → save → load at P = 2
// continues exactly as the run that was never interrupted.
//
//   io::save_sharded("run.ckpt.d", optimizer);   // collective: every rank, the same directory
//   io::load_sharded("run.ckpt.d", optimizer);   // collective; all or nothing, on every rank
//
// The directory (on a file system every rank sees) holds, for generation g of the set:
//   manifest.ckpt                 kind 18: u64 g · u64 step · u64 P · u64 N · u32 sizeof(T) ·
//                                 [u64 P + 1, payload sizes] · [u64 P + 1, header checksums]
//                                 (file 0: the optimizer's, file 1 + r: rank r's shard; a file's
//                                 header checksum is the FNV-1a-64 over its header and payload)
//   g<g>-optimizer.ckpt           kind 16: the optimizer section of a training checkpoint
//                                 (DftOptions, StepOptions, step, parameters, rule, schedule;
//                                 checkpoint.hpp)
//   g<g>-shard-<r>-of-<P>.ckpt    kind 17: u32 sizeof(T) · u32 init · f64 log_u0 · u64 N · u64 P ·
//                                 u64 r · [u64 n, n × u8 seen] · [u64 n, n × T log u], by local index
// File names follow from (g, P) alone, so a forged manifest cannot point outside the directory.
//
// Commit protocol. A save picks g = 1 + the largest generation present, so it never overwrites a
// file of the committed set; the ranks write their files; only when every rank has succeeded
// does rank 0 replace manifest.ckpt (atomically), then remove the files of other generations.
// A crash or an error before that replacement leaves the previous manifest — and the previous
// set, whose files are untouched — committed; an error on any rank is the same error on every
// rank (distributed::agree). A load reads only what the manifest names, checks each file's header
// (payload size, checksum) against it and the contents against the header as they stream, checks everything against the objects being loaded into, and only then
// moves the state in, on every rank, by operations that cannot fail.
#include <dftune/config.hpp>
#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/shard.hpp>
#include <dftune/error.hpp>
#include <dftune/estimator/estimator.hpp>
#include <dftune/io/checkpoint.hpp>
#include <dftune/io/format.hpp>
#include <dftune/optim/dft_optimizer.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace io {

// The file, in a sharded checkpoint's directory, whose presence commits the set (written last).
inline constexpr const char* manifest_name = "manifest.ckpt";

namespace sharded {

// Appended piece by piece: g++ 12 at -O3 reports a false -Wrestrict for "g" + std::to_string(...).
inline std::string optimizer_file(std::uint64_t gen) {
  std::string s = "g";
  s += std::to_string(gen);
  s += "-optimizer.ckpt";
  return s;
}
inline std::string shard_file(std::uint64_t gen, std::uint64_t rank, std::uint64_t world) {
  std::string s = "g";
  s += std::to_string(gen);
  s += "-shard-";
  s += std::to_string(rank);
  s += "-of-";
  s += std::to_string(world);
  s += ".ckpt";
  return s;
}

// The generation of a file name "g<digits>-…", or 0 for any other name.
inline std::uint64_t generation_of(const std::string& name) {
  if (name.size() < 3 || name[0] != 'g') return 0;
  std::uint64_t g = 0;
  std::size_t k = 1;
  for (; k < name.size() && name[k] >= '0' && name[k] <= '9' && k < 19; ++k) g = g * 10 + static_cast<std::uint64_t>(name[k] - '0');
  return k > 1 && k < name.size() && name[k] == '-' ? g : 0;
}

inline std::uint64_t next_generation(const std::filesystem::path& dir) {
  std::uint64_t g = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_regular_file(ec)) g = std::max(g, generation_of(e.path().filename().string()));
  if (ec) dftune::detail::fail("path", dir, "a readable checkpoint directory (" + ec.message() + ")");
  return g + 1;
}

// Best effort: a file that cannot be removed stays (it belongs to no committed set).
inline void remove_other_generations(const std::filesystem::path& dir, std::uint64_t keep) {
  std::error_code ec;
  std::vector<std::filesystem::path> old;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::uint64_t g = generation_of(name);
    if (g != 0 && g != keep) old.push_back(e.path());  // with their temporaries, g<k>-….ckpt.tmp-…
  }
  for (const auto& p : old) std::filesystem::remove(p, ec);
}

struct Manifest {
  std::uint64_t generation = 0, step = 0, world = 0, num_examples = 0;
  std::uint32_t scalar_size = 0;
  // [1 + world]: the optimizer's file, then each rank's shard: payload size and header checksum
  // (the FNV-1a-64 each file's own header holds, over its header and payload).
  std::vector<std::uint64_t> sizes, checksums;
};

// The manifest of a world of at most 2^20 ranks: what a load reads at most.
inline constexpr std::uint64_t max_world = std::uint64_t{1} << 20;
inline constexpr std::uint64_t manifest_max_payload = 4 * 8 + 4 + 2 * (8 + 8 * (max_world + 1));

inline void write_manifest(Writer& w, const Manifest& m) {
  w.u64(m.generation);
  w.u64(m.step);
  w.u64(m.world);
  w.u64(m.num_examples);
  w.u32(m.scalar_size);
  w.array(std::span<const std::uint64_t>(m.sizes));
  w.array(std::span<const std::uint64_t>(m.checksums));
}

inline Manifest read_manifest(Reader& in) {
  Manifest m;
  m.generation = in.u64("generation");
  m.step = in.u64("step");
  m.world = in.u64("world size");
  m.num_examples = in.u64("num_examples");
  m.scalar_size = in.u32("scalar size");
  if (m.generation == 0) dftune::detail::fail("generation", m.generation, "at least 1");
  if (m.world == 0 || m.world > max_world)
    dftune::detail::fail("world size", m.world, "a world size in [1, " + std::to_string(max_world) + "]");
  m.sizes = in.array<std::uint64_t>("file sizes", static_cast<std::size_t>(m.world) + 1);
  m.checksums = in.array<std::uint64_t>("file checksums", static_cast<std::size_t>(m.world) + 1);
  return m;
}

inline Manifest decode_manifest(std::span<const std::byte> file) {
  return decode_checkpoint(file, CheckpointKind::manifest, manifest_max_payload, [](Reader& in) { return read_manifest(in); });
}

// Checks the header of a file the manifest names against the manifest's entry, before reading it:
// a file of another set (another generation, a rank's file from another run) is refused by name.
inline void check_listed(const std::filesystem::path& path, CheckpointKind kind, std::uint64_t size, std::uint64_t checksum) {
  FileSource source(path);
  std::array<std::byte, checkpoint_header_size> hb{};
  if (source.size() >= checkpoint_header_size) {
    Reader r(source, checkpoint_header_size);
    r.bytes(hb, "header");
  }
  const CheckpointHeader h = check_header(hb, kind, source.size());
  const std::string why = ", the manifest's (the set is damaged or mixed with another)";
  if (h.payload_size != size) dftune::detail::fail("payload size", h.payload_size, std::to_string(size) + why);
  if (h.checksum != checksum) dftune::detail::fail("checksum", std::to_string(h.checksum), std::to_string(checksum) + why);
}

template <class T>
void write_shard(Writer& w, const Estimator<T>& est) {
  w.u32(sizeof(T));
  w.u32(static_cast<std::uint32_t>(est.init()));
  w.f64(static_cast<double>(est.log_u0()));
  w.u64(est.num_examples());
  w.u64(est.shard().size);
  w.u64(est.shard().rank);
  w.array(est.raw_seen());
  w.array(est.raw_log_u());
}

// The payload of shard q of P for est's configuration, to the byte.
template <class T>
std::uint64_t shard_payload(const Estimator<T>& est, std::uint64_t q, std::uint64_t P) {
  const distributed::Shard old{.rank = static_cast<std::size_t>(q), .size = static_cast<std::size_t>(P)};
  const std::uint64_t n = old.local_count(est.num_examples());
  return 4 + 4 + 8 + 8 + 8 + 8 + (8 + n) + (8 + n * sizeof(T));
}

template <class T>
struct ShardState {
  std::vector<unsigned char> seen;
  std::vector<T> log_u;
};

// Reads shard q of P, checked against est's configuration (nothing of est is touched).
template <class T>
ShardState<T> read_shard(Reader& in, std::uint64_t q, std::uint64_t P, const Estimator<T>& est) {
  detail::expect_same("scalar size", in.u32("scalar size"), static_cast<std::uint32_t>(sizeof(T)));
  detail::expect_same("estimator init", static_cast<std::int64_t>(in.u32("estimator init")),
                        static_cast<std::int64_t>(est.init()));
  detail::expect_same("estimator log_u0", in.f64("estimator log_u0"), static_cast<double>(est.log_u0()));
  detail::expect_same("num_examples", in.u64("num_examples"), static_cast<std::uint64_t>(est.num_examples()));
  detail::expect_same("shard world size", in.u64("shard world size"), P);
  detail::expect_same("shard rank", in.u64("shard rank"), q);
  const distributed::Shard old{.rank = static_cast<std::size_t>(q), .size = static_cast<std::size_t>(P)};
  const std::size_t n = old.local_count(est.num_examples());
  ShardState<T> st;
  st.seen = in.array<unsigned char>("seen", n);
  st.log_u = in.array<T>("log_u", n);
  return st;
}

// Copies the entries of shard q of P that est's shard owns into (log_u, seen), local to est.
template <class T>
void reshard_into(const ShardState<T>& st, std::uint64_t q, std::uint64_t P, const Estimator<T>& est,
                  std::vector<T>& log_u, std::vector<unsigned char>& seen) {
  const distributed::Shard old{.rank = static_cast<std::size_t>(q), .size = static_cast<std::size_t>(P)};
  for (std::size_t k = 0; k < st.seen.size(); ++k) {
    const std::int64_t id = old.global_id(k);
    if (!est.shard().owns(id)) continue;
    const std::size_t i = est.shard().local_index(id);
    log_u[i] = st.log_u[k];
    seen[i] = st.seen[k];
  }
}

}  // namespace sharded

// Saves the run to `dir` (created if missing). Collective over opt's communicator.
template <class M, class R, class S, class C>
void save_sharded(const std::filesystem::path& dir, const DftOptimizer<M, R, S, C>& opt) {
  using T = typename M::scalar_type;
  detail::check_scalar<T>();
  C comm = opt.communicator();
  const Estimator<T>& est = opt.estimator();
  const std::size_t rank = comm.rank(), P = comm.size();
  // 1. rank 0 picks the generation (the directory may not exist yet).
  const auto gens = distributed::agree<std::uint64_t>(comm, [&] {
    if (rank != 0) return std::uint64_t{0};
    return detail::named(detail::path_name(dir), [&] {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec) dftune::detail::fail("path", dir, "a directory for the checkpoint set (" + ec.message() + ")");
      return sharded::next_generation(dir);
    });
  });
  const std::uint64_t gen = gens[0];
  // 2. every rank writes its shard, rank 0 also the optimizer's file (streamed, atomic).
  struct Written {
    std::uint64_t size = 0, checksum = 0, opt_size = 0, opt_checksum = 0;
  };
  const auto written = distributed::agree<Written>(comm, [&] {
    Written out;
    const std::filesystem::path spath = dir / sharded::shard_file(gen, rank, P);
    const CheckpointHeader sh = detail::named(detail::path_name(spath), [&] {
      detail::check_savable(est);
      return write_checkpoint(spath, CheckpointKind::estimator_shard, [&](Writer& w) { sharded::write_shard(w, est); });
    });
    out.size = sh.payload_size;
    out.checksum = sh.checksum;
    if (rank == 0) {
      const std::filesystem::path opath = dir / sharded::optimizer_file(gen);
      const CheckpointHeader oh = detail::named(detail::path_name(opath), [&] {
        detail::check_savable_optimizer(opt);
        return write_checkpoint(opath, CheckpointKind::sharded_optimizer,
                                [&](Writer& w) { detail::write_optimizer_state(w, opt); });
      });
      out.opt_size = oh.payload_size;
      out.opt_checksum = oh.checksum;
    }
    return out;
  });
  // 3. rank 0 commits the set by replacing the manifest, once every file is on disk.
  distributed::agree(comm, [&] {
    if (rank != 0) return;
    sharded::Manifest m{.generation = gen, .step = opt.steps(), .world = P, .num_examples = est.num_examples(),
                        .scalar_size = sizeof(T), .sizes = {}, .checksums = {}};
    m.sizes.push_back(written[0].opt_size);
    m.checksums.push_back(written[0].opt_checksum);
    for (const auto& w : written) {
      m.sizes.push_back(w.size);
      m.checksums.push_back(w.checksum);
    }
    const std::filesystem::path mpath = dir / manifest_name;
    detail::named(detail::path_name(mpath), [&] {
      write_checkpoint(mpath, CheckpointKind::manifest, [&](Writer& w) { sharded::write_manifest(w, m); });
    });
  });
  if (rank == 0) sharded::remove_other_generations(dir, gen);
}

// Loads the set committed in `dir`, saved at any world size, into opt, its model and its
// estimator shard on every rank; on any error, on any rank, every rank throws the same error and
// nothing changes anywhere. Collective over opt's communicator.
template <class M, class R, class S, class C>
void load_sharded(const std::filesystem::path& dir, DftOptimizer<M, R, S, C>& opt) {
  using T = typename M::scalar_type;
  detail::check_scalar<T>();
  C& comm = opt.communicator();
  Estimator<T>& est = opt.estimator();
  const std::size_t rank = comm.rank(), P = comm.size();
  // 1. rank 0 reads the manifest and hands its bytes to every rank (one view of the set, even if
  //    a save replaces the manifest meanwhile).
  std::vector<std::byte> manifest_bytes;
  const std::filesystem::path mpath = dir / manifest_name;
  const auto sizes = distributed::agree<std::uint64_t>(comm, [&] {
    if (rank != 0) return std::uint64_t{0};
    manifest_bytes = detail::named(detail::path_name(mpath), [&] {
      std::vector<std::byte> b = read_file(mpath);
      (void)sharded::decode_manifest(b);
      return b;
    });
    return static_cast<std::uint64_t>(manifest_bytes.size());
  });
  manifest_bytes.resize(static_cast<std::size_t>(sizes[0]));
  comm.broadcast(std::span<std::byte>(manifest_bytes), 0);
  // 2. every rank reads, checks and re-shards what it needs into temporaries.
  struct Loaded {
    std::optional<detail::OptimizerState<T, R>> state;  // optional: a rule need not be default-constructible
    std::vector<T> log_u;
    std::vector<unsigned char> seen;
  };
  Loaded l;
  distributed::agree(comm, [&] {
    const sharded::Manifest m = detail::named(detail::path_name(mpath), [&] {
      sharded::Manifest mm = sharded::decode_manifest(manifest_bytes);
      detail::expect_same("scalar size", mm.scalar_size, static_cast<std::uint32_t>(sizeof(T)));
      detail::expect_same("num_examples", mm.num_examples, static_cast<std::uint64_t>(est.num_examples()));
      return mm;
    });
    const std::filesystem::path opath = dir / sharded::optimizer_file(m.generation);
    l.state = detail::named(detail::path_name(opath), [&] {
      sharded::check_listed(opath, CheckpointKind::sharded_optimizer, m.sizes[0], m.checksums[0]);
      detail::OptimizerState<T, R> st =
          read_checkpoint(opath, CheckpointKind::sharded_optimizer, detail::training_max_payload(opt, false),
                          [&](Reader& in) { return detail::read_optimizer_state(in, std::as_const(opt)); });
      detail::expect_same("step", st.step, m.step);
      return st;
    });
    l.log_u.assign(est.size(), T(0));
    l.seen.assign(est.size(), 0);
    // Old shard q holds ids ≡ q (mod P_old); this rank's ids are ≡ rank (mod P): they meet iff
    // q ≡ rank (mod gcd(P_old, P)).
    const std::uint64_t g = std::gcd(m.world, static_cast<std::uint64_t>(P));
    for (std::uint64_t q = rank % g; q < m.world; q += g) {
      const std::filesystem::path spath = dir / sharded::shard_file(m.generation, q, m.world);
      detail::named(detail::path_name(spath), [&] {
        sharded::check_listed(spath, CheckpointKind::estimator_shard, m.sizes[1 + q], m.checksums[1 + q]);
        const sharded::ShardState<T> st =
            read_checkpoint(spath, CheckpointKind::estimator_shard, sharded::shard_payload(std::as_const(est), q, m.world),
                            [&](Reader& in) { return sharded::read_shard(in, q, m.world, std::as_const(est)); });
        sharded::reshard_into(st, q, m.world, std::as_const(est), l.log_u, l.seen);
      });
    }
    detail::named(detail::path_name(dir), [&] { est.check_raw(l.log_u, l.seen); });
  });
  // 3. commit, everywhere: nothing below can throw.
  est.restore(std::move(l.log_u), std::move(l.seen));
  detail::commit_optimizer_state(opt, std::move(*l.state));
}

}  // namespace io

DFTUNE_NAMESPACE_END

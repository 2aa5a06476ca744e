#pragma once
// "Device" buffers for the emulated kernels: each one sits between two inaccessible guard pages
// (mmap + mprotect), flush against one of them, so that an access past its end (or, placed at the
// start, before its start) faults at once instead of landing in padding or a neighbour. A fault
// in a guard page is reported with the buffer's name and the distance, then the test exits 3.
//
// For the 64-bit offset tests, a buffer of several GiB costs only what is touched: untouched pages
// of an anonymous mapping are never backed, and `alias_outside` maps every page outside a few kept
// ranges onto one small shared chunk (memfd), so writes there (zeros of masked rows) are cheap and
// their values are not kept.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace emu {

struct Guarded {
  std::uintptr_t lo_guard, data_begin, data_end, hi_guard_end;  // [lo_guard, data_begin - slack) etc.
  std::string name;
};

inline std::vector<Guarded>& guarded_buffers() {
  static std::vector<Guarded> all;
  return all;
}

// SIGSEGV in a guard page: name the buffer and how far past its end (or before its start).
inline void on_segv(int, siginfo_t* info, void*) {
  const auto a = reinterpret_cast<std::uintptr_t>(info->si_addr);
  char msg[512];
  int n = std::snprintf(msg, sizeof msg, "  emulator: invalid access at %p", info->si_addr);
  for (const Guarded& g : guarded_buffers()) {
    if (a >= g.data_end && a < g.hi_guard_end)
      n = std::snprintf(msg, sizeof msg, "  emulator: access %zu bytes past the end of device buffer '%s'",
                        static_cast<std::size_t>(a - g.data_end), g.name.c_str());
    else if (a >= g.lo_guard && a < g.data_begin)
      n = std::snprintf(msg, sizeof msg, "  emulator: access %zu bytes before the start of device buffer '%s'",
                        static_cast<std::size_t>(g.data_begin - a), g.name.c_str());
  }
  const std::size_t len = n < 0 ? 0 : std::min(static_cast<std::size_t>(n), sizeof msg - 1);
  (void)!write(1, msg, len);
  (void)!write(1, "\n", 1);
  _exit(3);
}

inline void install_segv_handler() {
  static bool done = false;
  if (done) return;
  done = true;
  static std::vector<char> alt(1 << 16);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  struct sigaction sa{};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
}

// Which guard page the elements touch.
enum class flush { end, start };

template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  // n elements named `name`; flush::start leaves `lead` elements between the leading guard page and
  // the data (to give the data a chosen misalignment).
  device_buffer(std::string name, std::size_t n, flush where = flush::end, std::size_t lead = 0) : n_(n) {
    install_segv_handler();
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t data_bytes = (n + lead) * sizeof(T);
    const std::size_t body = (data_bytes + page - 1) / page * page;
    bytes_ = body + 2 * page;
    void* p = mmap(nullptr, bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("mmap");
    base_ = static_cast<char*>(p);
    if (body && mprotect(base_ + page, body, PROT_READ | PROT_WRITE) != 0) fail("mprotect");
    char* first = where == flush::start ? base_ + page + lead * sizeof(T) : base_ + page + body - n * sizeof(T);
    data_ = reinterpret_cast<T*>(first);
    guarded_buffers().push_back({reinterpret_cast<std::uintptr_t>(base_), reinterpret_cast<std::uintptr_t>(first),
                                 reinterpret_cast<std::uintptr_t>(first + n * sizeof(T)),
                                 reinterpret_cast<std::uintptr_t>(base_ + bytes_), std::move(name)});
  }
  device_buffer(std::string name, std::span<const T> init, flush where = flush::end, std::size_t lead = 0)
      : device_buffer(std::move(name), init.size(), where, lead) {
    if (!init.empty()) std::memcpy(static_cast<void*>(data_), init.data(), init.size_bytes());
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept { swap(o); }
  device_buffer& operator=(device_buffer&& o) noexcept {
    swap(o);
    return *this;
  }
  ~device_buffer() {
    if (!base_) return;
    auto& all = guarded_buffers();
    for (std::size_t i = 0; i < all.size(); ++i)
      if (all[i].lo_guard == reinterpret_cast<std::uintptr_t>(base_)) {
        all.erase(all.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    munmap(base_, bytes_);
  }

  T* data() const { return data_; }
  std::size_t size() const { return n_; }
  T& operator[](std::size_t i) const { return data_[i]; }
  std::span<T> span() const { return {data_, n_}; }
  std::vector<T> to_vector() const { return std::vector<T>(data_, data_ + n_); }

  // Every page outside the element ranges `keep` is remapped onto one shared chunk of `chunk_bytes`
  // (a multiple of the page size): what is written there is not kept, and costs no memory.
  void alias_outside(std::vector<std::pair<std::size_t, std::size_t>> keep, std::size_t chunk_bytes = 1 << 20) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const int fd = memfd_create("emu_alias", 0);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(chunk_bytes)) != 0) fail("memfd_create");
    const auto begin = reinterpret_cast<std::uintptr_t>(data_) / page * page;
    const auto end = (reinterpret_cast<std::uintptr_t>(data_ + n_) + page - 1) / page * page;
    auto kept = [&](std::uintptr_t a) {  // is any byte of the page at a kept?
      for (auto [b, e] : keep) {
        const auto kb = reinterpret_cast<std::uintptr_t>(data_ + b), ke = reinterpret_cast<std::uintptr_t>(data_ + e);
        if (a < ke && kb < a + page) return true;
      }
      return false;
    };
    for (std::uintptr_t a = begin; a < end;) {
      if (kept(a)) {
        a += page;
        continue;
      }
      std::uintptr_t stop = a + page;
      while (stop < end && stop - a < chunk_bytes && !kept(stop)) stop += page;
      if (mmap(reinterpret_cast<void*>(a), stop - a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd,
               0) == MAP_FAILED)
        fail("mmap (alias)");
      a = stop;
    }
    close(fd);
  }

 private:
  [[noreturn]] static void fail(const char* what) {
    std::perror(what);
    std::abort();
  }
  void swap(device_buffer& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(bytes_, o.bytes_);
    std::swap(data_, o.data_);
    std::swap(n_, o.n_);
  }
  char* base_ = nullptr;
  std::size_t bytes_ = 0;
  T* data_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace emu

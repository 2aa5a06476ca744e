#pragma once
// The large buffers of one generate call, written once and read many times (the key/value cache,
// the packed weights): uninitialised, 2 MiB-aligned and, on Linux, marked for transparent huge
// pages (MADV_HUGEPAGE: a hint, ignored where THP is off). Where THP is "madvise" (this machine's
// setting, and Debian's and Ubuntu's default), memory is otherwise first touched in 4 KiB pages,
// a page fault each: a third of the time to pack GPT-2 124M's 471 MiB of weights, and ≈ 10 % of a
// generate call at batch 32 × 256 new tokens writing its 0.6 GB cache (docs/generation.md).
#include <dftune/config.hpp>

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace generation {

// An uninitialised, huge-page-advised buffer (see the top of this file); move-only.
class Arena {
 public:
  // No buffer (data() is null, bytes() 0).
  Arena() = default;
  // At least `bytes` bytes (rounded up to whole 2 MiB pages); std::bad_alloc when they cannot be had.
  explicit Arena(std::size_t bytes) {
    if (bytes == 0) return;
    if (bytes > static_cast<std::size_t>(-1) - kHuge) throw std::bad_alloc();
    bytes_ = (bytes + kHuge - 1) / kHuge * kHuge;
    ptr_.reset(static_cast<std::byte*>(std::aligned_alloc(kHuge, bytes_)));
    if (!ptr_) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(ptr_.get(), bytes_, MADV_HUGEPAGE);
#endif
  }
  // The buffer's first byte.
  std::byte* data() const { return ptr_.get(); }
  // The buffer as an array of an implicit-lifetime type T (float, double: malloc'd memory holds them).
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(ptr_.get());
  }
  // Its size: the request rounded up to whole 2 MiB pages.
  std::size_t bytes() const { return bytes_; }

 private:
  static constexpr std::size_t kHuge = std::size_t{2} << 20;
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::size_t bytes_ = 0;
  std::unique_ptr<std::byte, Free> ptr_;
};

}  // namespace generation

DFTUNE_NAMESPACE_END

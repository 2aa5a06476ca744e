#pragma once
// for_each_isa: runs a test body once per kernel version (cpu/isa.hpp) this CPU runs, each forced
// and checked to be the one that ran. f takes the Isa, or nothing.
#include <dftune/cpu/isa.hpp>

#include <doctest/doctest.h>

#include <string>
#include <type_traits>

namespace test {

template <class F>
void for_each_isa(F&& f) {
  namespace isa = dftune::cpu;
  for (isa::Isa i : {isa::Isa::baseline, isa::Isa::avx2, isa::Isa::avx512}) {
    if (static_cast<int>(i) > static_cast<int>(isa::supported_isa())) {
      MESSAGE("this CPU does not run " << isa::isa_name(i) << ": not tested");
      continue;
    }
    INFO("ISA " << std::string(isa::isa_name(i)));
    isa::force_isa(i);
    if constexpr (std::is_invocable_v<F&, isa::Isa>) f(i);
    else f();
    CHECK(isa::last_isa() == i);
  }
  isa::reset_isa();
}

}  // namespace test

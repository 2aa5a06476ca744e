#pragma once
// for_each_isa: runs a test body once per kernel version (cpu/isa.hpp) this CPU runs, each forced
// and checked to be the one that ran. (test_logprob_fast and test_fused_linear have older copies.)
#include <dftune/cpu/isa.hpp>

#include <doctest/doctest.h>

#include <string>

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
    f(i);
    CHECK(isa::last_isa() == i);
  }
  isa::reset_isa();
}

}  // namespace test

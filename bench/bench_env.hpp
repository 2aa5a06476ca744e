#pragma once
// The environment a benchmark figure was measured in, printed by every benchmark beside its
// numbers: GEMM speed here depends on it (OPENBLAS_CORETYPE=Haswell halves OpenBLAS's sgemm against
// its AVX-512 kernels on a Skylake-X-class core; bench/RESULTS_gemm_env.md). One JSON object:
//   env_json(gemm)  {"OPENBLAS_CORETYPE": ..., "OPENBLAS_L2_SIZE": ..., "OMP_NUM_THREADS": ...,
//                    "OMP_WAIT_POLICY": ..., "gemm": ..., "compiler": ..., "flags": ..., "cpu": ...}
// DFTUNE_BENCH_FLAGS is set by bench/CMakeLists.txt to the build's compiler flags.
#include <cstdlib>
#include <fstream>
#include <string>

#ifndef DFTUNE_BENCH_FLAGS
#define DFTUNE_BENCH_FLAGS "unknown (built outside bench/CMakeLists.txt)"
#endif

namespace bench_env {

inline std::string quoted(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

inline std::string var(const char* name) {
  const char* v = std::getenv(name);
  return v ? quoted(v) : "null";  // null: unset
}

inline std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

inline std::string env_json(const char* gemm) {
  std::string s = "{";
  for (const char* name : {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"})
    s += quoted(name) + ": " + var(name) + ", ";
  s += "\"gemm\": " + quoted(gemm) + ", \"compiler\": " + quoted("g++ " __VERSION__) + ", \"flags\": " + quoted(DFTUNE_BENCH_FLAGS) +
       ", \"cpu\": " + quoted(cpu_model()) + "}";
  return s;
}

}  // namespace bench_env

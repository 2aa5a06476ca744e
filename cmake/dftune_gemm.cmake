# The BLAS the fused linear head (include/dftune/logprob/linear/) may use instead of Eigen's GEMM.
# The library itself never needs one: these are opt-in INTERFACE targets that define the macro the
# dispatch reads and link Debian's OpenMP build of the library (it runs single-threaded inside the
# head's own parallel region; the pthread builds would start their own threads there).
#   dftune::openblas   DFTUNE_LINEAR_GEMM_CBLAS, libopenblas-openmp-dev
#   dftune::blis       DFTUNE_LINEAR_GEMM_BLIS,  libblis-openmp-dev
# DFTUNE_GEMM=eigen|openblas|blis picks the one dftune's own tests, examples and benchmarks use.
set(DFTUNE_GEMM "eigen" CACHE STRING "GEMM of the fused linear head in dftune's own targets: eigen, openblas or blis")
set_property(CACHE DFTUNE_GEMM PROPERTY STRINGS eigen openblas blis)

set(_dftune_arch_lib /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE})
set(_dftune_arch_inc /usr/include/${CMAKE_LIBRARY_ARCHITECTURE})

find_path(DFTUNE_OPENBLAS_INCLUDE_DIR cblas.h NO_DEFAULT_PATH
  PATHS ${_dftune_arch_inc}/openblas-openmp ${_dftune_arch_inc}/openblas-serial)
find_library(DFTUNE_OPENBLAS_LIBRARY openblas NO_DEFAULT_PATH
  PATHS ${_dftune_arch_lib}/openblas-openmp ${_dftune_arch_lib}/openblas-serial)
if(DFTUNE_OPENBLAS_INCLUDE_DIR AND DFTUNE_OPENBLAS_LIBRARY AND NOT TARGET dftune_openblas)
  add_library(dftune_openblas INTERFACE)
  add_library(dftune::openblas ALIAS dftune_openblas)
  target_include_directories(dftune_openblas SYSTEM INTERFACE ${DFTUNE_OPENBLAS_INCLUDE_DIR})
  target_link_libraries(dftune_openblas INTERFACE dftune::dftune ${DFTUNE_OPENBLAS_LIBRARY})
  target_compile_definitions(dftune_openblas INTERFACE DFTUNE_LINEAR_GEMM_CBLAS)
endif()

find_path(DFTUNE_BLIS_INCLUDE_DIR blis.h NO_DEFAULT_PATH
  PATHS ${_dftune_arch_inc}/blis-openmp ${_dftune_arch_inc}/blis-serial)
find_library(DFTUNE_BLIS_LIBRARY blis NO_DEFAULT_PATH
  PATHS ${_dftune_arch_lib}/blis-openmp ${_dftune_arch_lib}/blis-serial)
if(DFTUNE_BLIS_INCLUDE_DIR AND DFTUNE_BLIS_LIBRARY AND NOT TARGET dftune_blis)
  add_library(dftune_blis INTERFACE)
  add_library(dftune::blis ALIAS dftune_blis)
  target_include_directories(dftune_blis SYSTEM INTERFACE ${DFTUNE_BLIS_INCLUDE_DIR})
  target_link_libraries(dftune_blis INTERFACE dftune::dftune ${DFTUNE_BLIS_LIBRARY})
  target_compile_definitions(dftune_blis INTERFACE DFTUNE_LINEAR_GEMM_BLIS)
endif()

if(NOT DFTUNE_GEMM STREQUAL "eigen" AND NOT TARGET dftune_${DFTUNE_GEMM})
  message(FATAL_ERROR "DFTUNE_GEMM=${DFTUNE_GEMM}: not found (Debian: apt-get install lib${DFTUNE_GEMM}-openmp-dev), "
                      "or not one of eigen, openblas, blis")
endif()
message(STATUS "dftune: fused linear head GEMM: ${DFTUNE_GEMM} (OpenBLAS ${DFTUNE_OPENBLAS_LIBRARY}, BLIS ${DFTUNE_BLIS_LIBRARY})")

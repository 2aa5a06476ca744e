# The GEMM library the fused linear head (include/dftune/logprob/linear/) and the tiny LM may use
# instead of Eigen's kernel. The library itself never needs one: these are opt-in INTERFACE targets
# that define the macro the dispatch reads and link Debian's build of the library.
#   dftune::openblas   DFTUNE_LINEAR_GEMM_CBLAS, libopenblas-openmp-dev, -serial-dev or Debian's default
#                      libopenblas-pthread-dev (whose own threads gemm.hpp turns down to one: they would
#                      oversubscribe the head's)
#   dftune::blis       DFTUNE_LINEAR_GEMM_BLIS,  libblis-openmp-dev (or -serial-dev)
#   dftune::onednn     DFTUNE_LINEAR_GEMM_DNNL,  libdnnl-dev (float GEMMs; doubles stay on Eigen)
# OpenMP and serial builds run single-threaded inside the head's own parallel region.
# DFTUNE_GEMM=eigen|openblas|blis|onednn picks the one dftune's own tests, examples and benchmarks use;
# the default, auto, is oneDNN where it is installed (measured fastest at the fused head's GEMM tasks,
# docs/fused_linear.md; cmake/install_deps.sh installs it) and Eigen elsewhere. A library named
# explicitly and not found is an error.
set(DFTUNE_GEMM "auto" CACHE STRING "GEMM of the fused linear head and the tiny LM in dftune's own targets: auto, eigen, openblas, blis or onednn")
set_property(CACHE DFTUNE_GEMM PROPERTY STRINGS auto eigen openblas blis onednn)

set(_dftune_arch_lib /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE})
set(_dftune_arch_inc /usr/include/${CMAKE_LIBRARY_ARCHITECTURE})

find_path(DFTUNE_OPENBLAS_INCLUDE_DIR cblas.h NO_DEFAULT_PATH
  PATHS ${_dftune_arch_inc}/openblas-openmp ${_dftune_arch_inc}/openblas-serial ${_dftune_arch_inc}/openblas-pthread)
find_library(DFTUNE_OPENBLAS_LIBRARY openblas NO_DEFAULT_PATH
  PATHS ${_dftune_arch_lib}/openblas-openmp ${_dftune_arch_lib}/openblas-serial ${_dftune_arch_lib}/openblas-pthread)
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

# oneDNN 2.x: dnnl_sgemm in oneapi/dnnl/dnnl.h; Debian's build runs on OpenMP, which the target
# links so that gemm.hpp can keep a top-level call on one thread.
find_path(DFTUNE_ONEDNN_INCLUDE_DIR oneapi/dnnl/dnnl.h)
find_library(DFTUNE_ONEDNN_LIBRARY dnnl)
if(DFTUNE_ONEDNN_INCLUDE_DIR AND DFTUNE_ONEDNN_LIBRARY AND NOT TARGET dftune_onednn)
  find_package(OpenMP QUIET)
  if(OpenMP_CXX_FOUND)
    add_library(dftune_onednn INTERFACE)
    add_library(dftune::onednn ALIAS dftune_onednn)
    target_include_directories(dftune_onednn SYSTEM INTERFACE ${DFTUNE_ONEDNN_INCLUDE_DIR})
    target_link_libraries(dftune_onednn INTERFACE dftune::dftune ${DFTUNE_ONEDNN_LIBRARY} OpenMP::OpenMP_CXX)
    target_compile_definitions(dftune_onednn INTERFACE DFTUNE_LINEAR_GEMM_DNNL)
  endif()
endif()

set(_dftune_gemm_package_openblas "libopenblas-dev (or libopenblas-openmp-dev)")
set(_dftune_gemm_package_blis "libblis-openmp-dev")
set(_dftune_gemm_package_onednn "libdnnl-dev (and a compiler with OpenMP)")
if(DFTUNE_GEMM STREQUAL "auto")
  if(TARGET dftune_onednn)
    set(DFTUNE_GEMM onednn)
  else()
    set(DFTUNE_GEMM eigen)
  endif()
endif()
if(NOT DFTUNE_GEMM MATCHES "^(eigen|openblas|blis|onednn)$")
  message(FATAL_ERROR "DFTUNE_GEMM=${DFTUNE_GEMM}: not one of auto, eigen, openblas, blis, onednn")
elseif(NOT DFTUNE_GEMM STREQUAL "eigen" AND NOT TARGET dftune_${DFTUNE_GEMM})
  message(FATAL_ERROR "DFTUNE_GEMM=${DFTUNE_GEMM}: the library was not found "
                      "(Debian: apt-get install ${_dftune_gemm_package_${DFTUNE_GEMM}})")
endif()
message(STATUS "dftune: GEMM of the fused linear head and the tiny LM: ${DFTUNE_GEMM} (OpenBLAS ${DFTUNE_OPENBLAS_LIBRARY}, "
               "BLIS ${DFTUNE_BLIS_LIBRARY}, oneDNN ${DFTUNE_ONEDNN_LIBRARY})")

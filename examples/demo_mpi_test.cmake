# ctest: `mpirun -np 2 demo --quick` prints the table of the single-process `demo --quick` from
# the same base model (docs/distributed.md). Only the last line (output paths, wall time) differs.
#   cmake -DMPIRUN="mpirun|-np|2|..." -DDEMO=path/to/demo -DWORK=dir -P demo_mpi_test.cmake
string(REPLACE "|" ";" MPIRUN "${MPIRUN}")
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND ${DEMO} --quick --out ${WORK}/p1 RESULT_VARIABLE rc OUTPUT_VARIABLE one ERROR_VARIABLE err TIMEOUT 300)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "demo --quick failed (${rc}):\n${err}")
endif()
execute_process(COMMAND ${MPIRUN} ${DEMO} --quick --base ${WORK}/p1/base.bin --out ${WORK}/p2 RESULT_VARIABLE rc
                OUTPUT_VARIABLE two ERROR_VARIABLE err TIMEOUT 300)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mpirun -np 2 demo --quick failed (${rc}):\n${err}")
endif()
string(REGEX REPLACE "\nwrote [^\n]*\n?$" "" one "${one}")
string(REGEX REPLACE "\nwrote [^\n]*\n?$" "" two "${two}")
if(NOT one STREQUAL two)
  message(FATAL_ERROR "the tables differ\n--- demo --quick\n${one}\n--- mpirun -np 2 demo --quick\n${two}")
endif()
message(STATUS "the same table at P = 1 and P = 2:\n${two}")

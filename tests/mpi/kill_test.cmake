# Run by ctest: `mpirun -np 2 test_mpi kill_run WORK` must end — rank 1 SIGKILLs itself in step 7 —
# with a non-zero status well before the timeout (a hang is a failure); then
# `mpirun -np 2 test_mpi kill_verify WORK` loads the last committed checkpoint (step 6) and checks
# that it resumes to the uninterrupted run bit for bit.
#   cmake -DMPIRUN="mpirun|-np|2|..." -DTEST=path/to/test_mpi -DWORK=dir -P kill_test.cmake
string(REPLACE "|" ";" MPIRUN "${MPIRUN}")
file(REMOVE_RECURSE "${WORK}")
string(TIMESTAMP t0 "%s")
execute_process(COMMAND ${MPIRUN} ${TEST} kill_run ${WORK} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT 90)
string(TIMESTAMP t1 "%s")
math(EXPR seconds "${t1} - ${t0}")
message(STATUS "kill_run: mpirun returned '${rc}' after ${seconds} s\n${out}${err}")
if(rc MATCHES "timeout")
  message(FATAL_ERROR "kill_run hung: the job did not end when a rank was killed")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "kill_run: mpirun returned 0, but rank 1 was killed")
endif()
if(NOT EXISTS "${WORK}/manifest.ckpt")
  message(FATAL_ERROR "kill_run left no committed checkpoint in ${WORK}")
endif()
execute_process(COMMAND ${MPIRUN} ${TEST} kill_verify ${WORK} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT 90)
message(STATUS "kill_verify: mpirun returned '${rc}'\n${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "kill_verify failed")
endif()

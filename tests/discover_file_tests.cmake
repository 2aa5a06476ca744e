# Run after a test executable is built (tests/CMakeLists.txt): lists the doctest cases that one test
# file (FILE, the name without .cpp) compiled into the executable EXE (several files share one when
# DFTUNE_TEST_UNITY is on) and writes the ctest script OUT: one entry per case, named
# "<PREFIX>:<case>" as doctest_discover_tests names them, with the test properties PROPERTIES
# ("<prop>|<value>|...", optional).
# Unlike doctest_discover_tests it keeps a name with a ';' whole (that one splits it into two
# entries that match, and run, no case).
execute_process(COMMAND "${EXE}" "--source-file=*/${FILE}.cpp" --list-test-cases
                OUTPUT_VARIABLE output RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "listing the tests of ${FILE} in ${EXE} failed (${result}):\n${output}")
endif()
set(script "")
set(count 0)
while(NOT output STREQUAL "")
  # line by line without CMake lists, which would split a name at ';'
  string(FIND "${output}" "\n" eol)
  if(eol EQUAL -1)
    set(line "${output}")
    set(output "")
  else()
    string(SUBSTRING "${output}" 0 ${eol} line)
    math(EXPR eol "${eol} + 1")
    string(SUBSTRING "${output}" ${eol} -1 output)
  endif()
  if(line STREQUAL "" OR line MATCHES "^====" OR line MATCHES "^\\[doctest\\] ")
    continue()
  endif()
  string(REPLACE "," "\\," spec "${line}")  # doctest's filters split at commas
  # bracket arguments: quotes, backslashes, $ and ; stay as they are
  string(APPEND script "add_test([==[${PREFIX}:${line}]==] [==[${EXE}]==] [==[--test-case=${spec}]==] "
         "[==[--source-file=*/${FILE}.cpp]==])\n")
  if(NOT PROPERTIES STREQUAL "")
    string(REPLACE "|" "]==] [==[" props "${PROPERTIES}")
    string(APPEND script "set_tests_properties([==[${PREFIX}:${line}]==] PROPERTIES [==[${props}]==])\n")
  endif()
  math(EXPR count "${count} + 1")
endwhile()
if(count EQUAL 0)
  message(FATAL_ERROR "no doctest case of ${FILE}.cpp found in ${EXE}")
endif()
file(WRITE "${OUT}" "${script}")

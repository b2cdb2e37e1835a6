# Finds the Python interpreter, nanobind and the XLA FFI headers shipped with jaxlib.
find_package(Python 3.10 REQUIRED COMPONENTS Interpreter Development.Module)

execute_process(
  COMMAND "${Python_EXECUTABLE}" -m nanobind --cmake_dir
  OUTPUT_STRIP_TRAILING_WHITESPACE OUTPUT_VARIABLE nanobind_ROOT
  RESULT_VARIABLE _nb_result)
if(NOT _nb_result EQUAL 0)
  message(FATAL_ERROR "nanobind not found: pip install nanobind")
endif()
find_package(nanobind CONFIG REQUIRED)

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import jax.ffi; print(jax.ffi.include_dir())"
  OUTPUT_STRIP_TRAILING_WHITESPACE OUTPUT_VARIABLE XLA_FFI_INCLUDE_DIR
  RESULT_VARIABLE _ffi_result)
if(NOT _ffi_result EQUAL 0 OR NOT EXISTS "${XLA_FFI_INCLUDE_DIR}/xla/ffi/api/ffi.h")
  message(FATAL_ERROR "XLA FFI headers not found: the build needs jax and jaxlib >= 0.10")
endif()
message(STATUS "lutgemm: XLA FFI headers: ${XLA_FFI_INCLUDE_DIR}")

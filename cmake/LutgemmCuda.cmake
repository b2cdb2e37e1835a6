# Decides whether the CUDA extension is built (LUTGEMM_CUDA = AUTO | ON | OFF) and enables the
# CUDA language when it is. Sets LUTGEMM_WITH_CUDA and LUTGEMM_CUDA_ARCHS_USED.
set(LUTGEMM_WITH_CUDA OFF)
set(LUTGEMM_CUDA_ARCHS_USED "")
string(TOUPPER "${LUTGEMM_CUDA}" _mode)
if(_mode STREQUAL "OFF")
  message(STATUS "lutgemm: CUDA extension: OFF (LUTGEMM_CUDA=OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(_mode STREQUAL "ON")
    message(FATAL_ERROR "lutgemm: LUTGEMM_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
  message(STATUS "lutgemm: CUDA extension: OFF (no nvcc found; LUTGEMM_CUDA=AUTO)")
  return()
endif()

# SASS for Ampere (sm_80) and Hopper (sm_90) plus PTX for newer GPUs. "native" would fail on
# build machines without a GPU, so the default is explicit.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(LUTGEMM_WITH_CUDA ON)
set(LUTGEMM_CUDA_ARCHS_USED "${CMAKE_CUDA_ARCHITECTURES}")
message(STATUS "lutgemm: CUDA extension: ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
               "architectures ${CMAKE_CUDA_ARCHITECTURES})")

// Stand-in for CUDA's cuda_runtime_api.h, used only when building the TensorRT plugins without a
// CUDA toolkit: TensorRT's headers need just these handle types (the plugins then never touch
// the GPU; their enqueue reports that the library was built without CUDA).
#pragma once
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

// The ONNX Runtime entry point: SessionOptions.register_custom_ops_library(path) calls
// RegisterCustomOps, which adds every spa.ops kernel of this build to one custom-op domain.
// The library is not linked to libonnxruntime: the API table comes from the loading runtime
// (ORT_API_MANUAL_INIT), which must be at least the version of the headers it was built with.
#include <mutex>
#include <vector>

#include "ort_glue.h"

namespace spa {
void register_monarch(Ort::CustomOpDomain& domain);
void register_nm(Ort::CustomOpDomain& domain);
}  // namespace spa

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // The runtime is older than these headers; it cannot even build an error status for us.
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest ? oldest->CreateStatus(ORT_FAIL,
                                         "spa.ops: ONNX Runtime is older than the headers this "
                                         "library was built with; rebuild against its headers")
                  : nullptr;
  }
  Ort::InitApi(api);
  // Domains must outlive every session that uses them: keep them for the process' lifetime.
  static std::mutex mu;
  static std::vector<Ort::CustomOpDomain> domains;
  try {
    std::lock_guard<std::mutex> lock(mu);
    domains.emplace_back("spa.ops");
    Ort::CustomOpDomain& domain = domains.back();
    spa::register_monarch(domain);
    spa::register_nm(domain);
    Ort::UnownedSessionOptions(options).Add(domain);
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

//! Bytes → the model loader (`--model`): safetensors header, metadata JSON, config, shapes,
//! dtypes, then the network built from the tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = msdm::model_file::Model::from_bytes(data, &candle_core::Device::Cpu);
});

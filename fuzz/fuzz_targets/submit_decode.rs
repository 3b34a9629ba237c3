//! Arbitrary bytes as a gRPC SubmitRequest, then the validation every submit
//! goes through: it never panics, and what it accepts keeps every promise
//! (tps_fuzz::check_valid).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tps_proto::v1::SubmitRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = SubmitRequest::decode(data) {
        tps_fuzz::check_submit(&req);
    }
});

//! Arbitrary bytes as the body of the HTTP facade's POST /signal: the JSON
//! parser never panics, names a field whenever it refuses, and what it turns
//! into a SubmitRequest then goes through validate::submit like a gRPC one
//! (tps_fuzz::check_submit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tps_domain::http_body::parse_submit;

fuzz_target!(|data: &[u8]| {
    match parse_submit(data) {
        Ok(req) => {
            // signal_type is required in the JSON body.
            assert_ne!(req.r#type, 0, "a body without a signal type was converted");
            tps_fuzz::check_submit(&req);
        }
        Err(bad) => {
            assert!(!bad.is_empty(), "refused without naming a field");
        }
    }
});

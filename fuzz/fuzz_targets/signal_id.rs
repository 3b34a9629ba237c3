//! Arbitrary strings as the id of Get, Retry and Watch (and of a work item's
//! signal): validate::signal_id never panics, and what it accepts is the
//! canonical hyphenated lower-case UUID, which it accepts again unchanged, so
//! nothing else (paths, subjects, key wildcards) ever reaches a key lookup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tps_domain::validate::signal_id;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    match signal_id("id", &s) {
        Ok(id) => {
            assert_eq!(id.len(), 36, "{id:?}");
            for (i, b) in id.bytes().enumerate() {
                if [8, 13, 18, 23].contains(&i) {
                    assert_eq!(b, b'-', "{id:?}");
                } else {
                    assert!(matches!(b, b'0'..=b'9' | b'a'..=b'f'), "{id:?}");
                }
            }
            assert_eq!(signal_id("id", &id).as_deref(), Ok(id.as_str()));
        }
        Err(bad) => {
            assert_eq!(bad.len(), 1);
            assert_eq!(bad[0].field, "id");
        }
    }
});

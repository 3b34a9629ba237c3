//! Arbitrary bytes as what a worker pulls off the queue (WorkItem) and as a
//! status record read back from the key-value bucket (SignalStatus): decoding
//! never panics, a decoded message re-encodes to something that decodes to
//! the same message, and the JSON views the HTTP facade and tpsctl print of
//! it (json::status_view, json::from_struct) never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tps_proto::v1::{SignalStatus, WorkItem};

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = WorkItem::decode(data) {
        let bytes = item.encode_to_vec();
        assert_eq!(bytes.len(), item.encoded_len());
        let again = WorkItem::decode(bytes.as_slice())
            .unwrap_or_else(|e| panic!("a decoded work item does not decode again: {e}"));
        tps_fuzz::same_work_item(&again, &item);
        if let Some(signal) = &item.signal {
            // What the worker checks before it runs anything.
            let _ = tps_domain::validate::signal_id("signal.id", &signal.id);
            let status = SignalStatus {
                signal: Some(signal.clone()),
                ..Default::default()
            };
            let _ = serde_json::to_string(&tps_domain::json::status_view(&status)).unwrap();
        }
    }
    if let Ok(status) = SignalStatus::decode(data) {
        let bytes = status.encode_to_vec();
        let again = SignalStatus::decode(bytes.as_slice())
            .unwrap_or_else(|e| panic!("a decoded status record does not decode again: {e}"));
        assert_eq!(again.encode_to_vec(), bytes);
        let view = tps_domain::json::status_view(&status);
        let _ = serde_json::to_string(&view).unwrap();
        if let Some(output) = &status.output {
            let _ = tps_domain::json::from_struct(output);
        }
    }
});

//! "Bind once, report the address": after a process has bound its listeners it
//! logs them and, when `TPS_PORTS_FILE` is set, writes them as a JSON object
//! (`{"grpc": "127.0.0.1:40123", ...}`) so tests and scripts that started it
//! with port 0 know where to connect. The file is written atomically.

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub fn report(ports_file: Option<&str>, bound: &[(&str, SocketAddr)]) -> std::io::Result<()> {
    let map: BTreeMap<&str, String> = bound.iter().map(|(k, v)| (*k, v.to_string())).collect();
    for (name, addr) in &map {
        tracing::info!(listener = name, %addr, "listening");
    }
    if let Some(path) = ports_file {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&map)?)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

//! The `tps.v1` contracts: messages, tonic clients and servers, generated once
//! from `proto/tps/v1`, plus [`FILE_DESCRIPTOR_SET`] for gRPC reflection.

#![allow(clippy::all)] // generated code

pub mod codec;

pub mod v1 {
    tonic::include_proto!("tps.v1");
}

/// The encoded descriptor set of every `tps.v1` file (and their imports).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tps_descriptor");

pub use prost_types;

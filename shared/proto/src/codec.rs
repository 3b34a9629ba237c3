//! The codec every generated `tps.v1` client and server uses: prost's, except
//! that a message which does not decode is the caller's error
//! (INVALID_ARGUMENT with a `google.rpc.BadRequest` naming the field where
//! decoding stopped), not INTERNAL as tonic-prost reports it. A request too
//! deeply nested for prost's recursion limit, or plain garbage, is then
//! refused like every other malformed request.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Debug, Clone)]
pub struct TpsCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for TpsCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for TpsCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TpsDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        TpsDecoder(PhantomData)
    }
}

#[derive(Debug, Clone)]
pub struct TpsDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for TpsDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| undecodable(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        ProstDecoder::<U>::default().buffer_settings()
    }
}

/// INVALID_ARGUMENT for a message that does not decode. prost's error reads
/// `failed to decode Protobuf message: Inner.field: …: Outer.field: reason`;
/// the outermost `Message.field` names the bad field of the request.
fn undecodable(e: &prost::DecodeError) -> Status {
    let text = e.to_string();
    // The last `Message.field` element of the path (prost's reasons, such
    // as "invalid wire type: …", hold ": " themselves, so look for the shape).
    let is_ident = |w: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let field = text
        .split(": ")
        .filter_map(|part| part.split_once('.'))
        .filter(|(message, field)| is_ident(message) && is_ident(field))
        .last()
        .map_or("message", |(_, field)| field);
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, text.clone());
    details.set_error_info(
        "INVALID_ARGUMENT",
        "tps.v1",
        std::collections::HashMap::<String, String>::new(),
    );
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("the message does not decode: {text}"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_for(bytes: &[u8]) -> Status {
        let e = crate::v1::SubmitRequest::decode(bytes).unwrap_err();
        undecodable(&e)
    }

    #[test]
    fn garbage_and_deep_nesting_are_invalid_arguments_naming_the_field() {
        let garbage = status_for(&[0xff, 0xff, 0xff]);
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
        assert!(garbage.get_details_bad_request().is_some());
        // idempotency_key (field 5) sent as a varint: a wire-type error
        // whose reason holds ": " itself; the field is still named.
        let wrong_wire = status_for(&[5 << 3, 1]);
        let field = &wrong_wire
            .get_details_bad_request()
            .unwrap()
            .field_violations[0]
            .field;
        assert_eq!(field, "idempotency_key", "{wrong_wire:?}");

        // payload (field 3) = Struct{fields: {"a": Value{struct: …}}}, 80 deep.
        let mut value = prost_types::Value::default();
        for _ in 0..80 {
            let mut s = prost_types::Struct::default();
            s.fields.insert("a".into(), value);
            value = prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(s)),
            };
        }
        let Some(prost_types::value::Kind::StructValue(payload)) = value.kind else {
            unreachable!()
        };
        let deep = crate::v1::SubmitRequest {
            payload: Some(payload),
            ..Default::default()
        }
        .encode_to_vec();
        let status = status_for(&deep);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let fields: Vec<_> = status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["payload"], "{status:?}");
    }
}

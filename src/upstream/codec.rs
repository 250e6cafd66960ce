//! A tonic codec that encodes dynamic messages (or bytes already encoded) and hands back the raw
//! bytes of each response message, which are decoded later so a bad message is a clean 502.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::DynamicMessage;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A request message on its way to a backend.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A message built by the gateway.
    Message(DynamicMessage),
    /// A message the client sent already encoded.
    Encoded(Bytes),
    /// Never sent: encoding it fails, which resets the call's HTTP/2 stream. A request stream
    /// the client abandoned ends with it, so the backend sees a cancellation, not a half-close
    /// that would pass the truncated stream off as complete.
    Abandon,
}

impl From<crate::transcode::Bound> for Outgoing {
    fn from(bound: crate::transcode::Bound) -> Self {
        match bound {
            crate::transcode::Bound::Message(msg) => Outgoing::Message(msg),
            crate::transcode::Bound::Encoded(bytes) => Outgoing::Encoded(bytes),
        }
    }
}

impl Outgoing {
    /// The same message, encoded, so copies are cheap.
    pub fn encoded(self) -> Outgoing {
        match self {
            Outgoing::Message(msg) => Outgoing::Encoded(msg.encode_to_vec().into()),
            encoded => encoded,
        }
    }
}

/// The codec for every backend call: [`Outgoing`] in, raw message bytes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct DynamicCodec;

impl Codec for DynamicCodec {
    type Encode = Outgoing;
    type Decode = Bytes;
    type Encoder = OutgoingEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

/// Writes an [`Outgoing`] into a gRPC frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Message(msg) => msg
                .encode(dst)
                .map_err(|err| Status::internal(format!("encoding the request: {err}"))),
            Outgoing::Encoded(bytes) => {
                dst.put(bytes);
                Ok(())
            }
            Outgoing::Abandon => Err(Status::cancelled("the client abandoned the request")),
        }
    }
}

/// Takes each gRPC frame's payload as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

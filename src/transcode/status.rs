//! The google.rpc.Status JSON body of every error, with details decoded through the pool.

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value};

use crate::error::GatewayError;
use crate::proto::google::rpc;

/// Renders `{"code": N, "message": "...", "details": [...]}` for an error. Each detail whose type
/// the pool knows is written in its JSON form with `@type`; any other keeps its bytes in base64,
/// so one unknown detail never hides the error.
pub fn error_json(err: &GatewayError, pool: Option<&DescriptorPool>) -> Vec<u8> {
    let details = if err.details().is_empty() {
        Vec::new()
    } else {
        rpc::Status::decode(err.details().clone())
            .map(|s| s.details)
            .unwrap_or_default()
    };
    let mut out = Vec::with_capacity(64 + err.client_message().len());
    out.extend_from_slice(b"{\"code\":");
    out.extend_from_slice((err.code() as i32).to_string().as_bytes());
    out.extend_from_slice(b",\"message\":");
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, err.client_message());
    out.extend_from_slice(b",\"details\":[");
    for (i, any) in details.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let rendered = pool.and_then(|pool| detail_json(pool, any));
        match rendered {
            Some(json) => out.extend_from_slice(&json),
            None => {
                let fallback = serde_json::json!({
                    "@type": any.type_url,
                    "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                });
                let _ = serde_json::to_writer(&mut out, &fallback);
            }
        }
    }
    out.extend_from_slice(b"]}");
    out
}

fn detail_json(pool: &DescriptorPool, any: &prost_types::Any) -> Option<Vec<u8>> {
    let any_desc = pool.get_message_by_name("google.protobuf.Any")?;
    let mut msg = DynamicMessage::new(any_desc);
    msg.set_field_by_name("type_url", Value::String(any.type_url.clone()));
    msg.set_field_by_name("value", Value::Bytes(any.value.clone().into()));
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    // prost-reflect resolves the Any's type through the pool; an unknown type fails here.
    msg.serialize_with_options(
        &mut ser,
        &SerializeOptions::new().skip_default_fields(false),
    )
    .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn pool() -> DescriptorPool {
        crate::descriptors::RegistryBuilder::new()
            .build()
            .unwrap()
            .pool()
            .clone()
    }

    fn status_with(details: Vec<prost_types::Any>) -> GatewayError {
        let status = rpc::Status {
            code: 5,
            message: "gone".into(),
            details,
        };
        let tonic = tonic::Status::with_details(
            tonic::Code::NotFound,
            "gone",
            status.encode_to_vec().into(),
        );
        GatewayError::from_status(tonic)
    }

    #[test]
    fn known_details_are_decoded_unknown_kept_as_base64() {
        let info = rpc::ErrorInfo {
            reason: "NO_SUCH_THING".into(),
            domain: "example.com".into(),
            metadata: Default::default(),
        };
        let err = status_with(vec![
            prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                value: info.encode_to_vec(),
            },
            prost_types::Any {
                type_url: "type.googleapis.com/nobody.Knows".into(),
                value: vec![1, 2, 3],
            },
        ]);
        let body: serde_json::Value =
            serde_json::from_slice(&error_json(&err, Some(&pool()))).unwrap();
        assert_eq!(body["code"], 5);
        assert_eq!(body["message"], "gone");
        assert_eq!(
            body["details"][0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(body["details"][0]["reason"], "NO_SUCH_THING");
        assert_eq!(
            body["details"][1]["@type"],
            "type.googleapis.com/nobody.Knows"
        );
        assert_eq!(body["details"][1]["value"], "AQID");
    }

    #[test]
    fn gateway_errors_have_empty_details() {
        let err = GatewayError::new(ErrorKind::NoRoute, "Not Found");
        let body: serde_json::Value = serde_json::from_slice(&error_json(&err, None)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": 5, "message": "Not Found", "details": []})
        );
    }
}

//! The google.rpc.Status body of every error — JSON, XML or protobuf as negotiated — with details
//! decoded through the pool.

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value};

use super::negotiate::Format;
use super::xml;
use crate::error::GatewayError;
use crate::proto::google::rpc;

/// The error body in `format`: the same code, message and details in each.
pub fn error_body(err: &GatewayError, pool: Option<&DescriptorPool>, format: Format) -> Vec<u8> {
    match format {
        Format::Json => error_json(err, pool),
        Format::Xml => error_xml(err, pool),
        Format::Protobuf => error_protobuf(err),
    }
}

/// The backend's details, if it sent a google.rpc.Status that decodes.
fn details(err: &GatewayError) -> Vec<prost_types::Any> {
    if err.details().is_empty() {
        return Vec::new();
    }
    rpc::Status::decode(err.details().clone())
        .map(|s| s.details)
        .unwrap_or_default()
}

/// `<Status><code>N</code><message>…</message><details type="…">…</details></Status>`: the
/// google.rpc.Status in the XML mapping; a detail of an unknown type keeps its bytes in base64.
pub fn error_xml(err: &GatewayError, pool: Option<&DescriptorPool>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + err.message().len());
    xml::write_declaration(&mut out);
    out.extend_from_slice(b"<Status>");
    xml::write_text_element(&mut out, "code", &(err.code() as i32).to_string());
    xml::write_text_element(&mut out, "message", err.message());
    for any in details(err) {
        xml::write_any(&mut out, "details", &any.type_url, &any.value, pool);
    }
    out.extend_from_slice(b"</Status>");
    out
}

/// The encoded google.rpc.Status, details as the backend sent them.
pub fn error_protobuf(err: &GatewayError) -> Vec<u8> {
    rpc::Status {
        code: err.code() as i32,
        message: err.message().to_owned(),
        details: details(err),
    }
    .encode_to_vec()
}

/// Renders `{"code": N, "message": "...", "details": [...]}` for an error. Each detail whose type
/// the pool knows is written in its JSON form with `@type`; any other keeps its bytes in base64,
/// so one unknown detail never hides the error.
pub fn error_json(err: &GatewayError, pool: Option<&DescriptorPool>) -> Vec<u8> {
    let details = details(err);
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
    // Unwraps here are assertions on test data: a failure fails the test.
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
    fn xml_and_protobuf_errors_carry_the_same_fields() {
        let info = rpc::ErrorInfo {
            reason: "NO_SUCH_THING".into(),
            domain: "example.com".into(),
            metadata: [("id".to_owned(), "a<b".to_owned())].into(),
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
        let body = String::from_utf8(error_xml(&err, Some(&pool()))).unwrap();
        assert_eq!(
            body,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Status><code>5</code><message>gone</message>\
             <details type=\"type.googleapis.com/google.rpc.ErrorInfo\"><reason>NO_SUCH_THING</reason>\
             <domain>example.com</domain><metadata><key>id</key><value>a&lt;b</value></metadata>\
             </details><details><typeUrl>type.googleapis.com/nobody.Knows</typeUrl>\
             <value>AQID</value></details></Status>"
        );
        let without_pool = String::from_utf8(error_xml(&err, None)).unwrap();
        assert!(
            without_pool.contains(
                "<details><typeUrl>type.googleapis.com/google.rpc.ErrorInfo</typeUrl><value>"
            ),
            "{without_pool}"
        );

        let decoded = rpc::Status::decode(error_protobuf(&err).as_slice()).unwrap();
        assert_eq!(decoded.code, 5);
        assert_eq!(decoded.message, "gone");
        assert_eq!(decoded.details.len(), 2);
        assert_eq!(decoded.details[1].value, vec![1, 2, 3]);
    }

    #[test]
    fn gateway_errors_in_xml_have_no_details() {
        let err = GatewayError::new(ErrorKind::NotAcceptable, "no <way>");
        let body = String::from_utf8(error_body(&err, None, Format::Xml)).unwrap();
        assert_eq!(
            body,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Status><code>3</code>\
             <message>no &lt;way&gt;</message></Status>"
        );
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

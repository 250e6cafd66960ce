//! Content negotiation: which format a request body is in (`Content-Type`) and which format the
//! client wants back (`Accept`). Pure functions over header text.

use crate::error::{ErrorKind, GatewayError};

/// A body format the gateway reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The proto3 JSON mapping.
    Json,
    /// The XML mapping of docs/xml.md.
    Xml,
    /// The protobuf binary encoding.
    Protobuf,
}

/// A response media type the gateway can produce; the chosen one is echoed in `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `application/json`, the default.
    Json,
    /// `application/xml`.
    ApplicationXml,
    /// `text/xml`.
    TextXml,
    /// `application/x-protobuf`.
    XProtobuf,
    /// `application/protobuf`.
    Protobuf,
}

/// Every response type, in the gateway's order of preference (used only to break exact ties).
pub const OFFERS: [ResponseFormat; 5] = [
    ResponseFormat::Json,
    ResponseFormat::ApplicationXml,
    ResponseFormat::TextXml,
    ResponseFormat::XProtobuf,
    ResponseFormat::Protobuf,
];

impl ResponseFormat {
    /// The body format.
    pub fn format(self) -> Format {
        match self {
            ResponseFormat::Json => Format::Json,
            ResponseFormat::ApplicationXml | ResponseFormat::TextXml => Format::Xml,
            ResponseFormat::XProtobuf | ResponseFormat::Protobuf => Format::Protobuf,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::Json => "application/json",
            ResponseFormat::ApplicationXml => "application/xml",
            ResponseFormat::TextXml => "text/xml",
            ResponseFormat::XProtobuf => "application/x-protobuf",
            ResponseFormat::Protobuf => "application/protobuf",
        }
    }

    fn type_and_subtype(self) -> (&'static str, &'static str) {
        match self {
            ResponseFormat::Json => ("application", "json"),
            ResponseFormat::ApplicationXml => ("application", "xml"),
            ResponseFormat::TextXml => ("text", "xml"),
            ResponseFormat::XProtobuf => ("application", "x-protobuf"),
            ResponseFormat::Protobuf => ("application", "protobuf"),
        }
    }
}

/// The format of a request body from its `Content-Type` (absent: JSON). JSON is
/// `application/json` and any `+json` type; XML is `application/xml`, `text/xml` and any `+xml`
/// type; protobuf is `application/x-protobuf` or `application/protobuf`. Parameters such as
/// `charset` are ignored. Anything else is a 415.
pub fn request_format(content_type: Option<&str>) -> Result<Format, GatewayError> {
    let Some(header) = content_type else {
        return Ok(Format::Json);
    };
    let essence = header.split(';').next().unwrap_or("").trim();
    if essence.is_empty() {
        return Ok(Format::Json);
    }
    let Some((kind, subtype)) = essence.split_once('/') else {
        return Err(unsupported(header));
    };
    let (kind, subtype) = (kind.trim(), subtype.trim());
    let is = |a: &str, b: &str| kind.eq_ignore_ascii_case(a) && subtype.eq_ignore_ascii_case(b);
    let suffix = |s: &str| {
        subtype.len() > s.len()
            && subtype.is_char_boundary(subtype.len() - s.len())
            && subtype[subtype.len() - s.len()..].eq_ignore_ascii_case(s)
    };
    if is("application", "json") || suffix("+json") {
        Ok(Format::Json)
    } else if is("application", "xml") || is("text", "xml") || suffix("+xml") {
        Ok(Format::Xml)
    } else if is("application", "x-protobuf") || is("application", "protobuf") {
        Ok(Format::Protobuf)
    } else {
        Err(unsupported(header))
    }
}

fn unsupported(header: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::UnsupportedMediaType,
        format!(
            "unsupported Content-Type {header:?}: send application/json, application/xml, \
             text/xml or application/x-protobuf"
        ),
    )
}

/// One media range of an Accept header.
#[derive(Debug, PartialEq)]
struct Range<'a> {
    kind: &'a str,
    subtype: &'a str,
    /// Quality in thousandths, 0..=1000.
    q: u16,
}

impl Range<'_> {
    /// How specifically this range names `offer`: 3 exact, 2 `type/*`, 1 `*/*`, 0 no match.
    fn specificity(&self, offer: ResponseFormat) -> u8 {
        let (kind, subtype) = offer.type_and_subtype();
        if self.kind == "*" && self.subtype == "*" {
            1
        } else if !self.kind.eq_ignore_ascii_case(kind) {
            0
        } else if self.subtype == "*" {
            2
        } else if self.subtype.eq_ignore_ascii_case(subtype) {
            3
        } else {
            0
        }
    }
}

/// Parses one element of an Accept header; `None` for a malformed one, which matches nothing.
fn parse_range(element: &str) -> Option<Range<'_>> {
    let mut parts = element.split(';');
    let (kind, subtype) = parts.next()?.trim().split_once('/')?;
    let (kind, subtype) = (kind.trim(), subtype.trim());
    if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            q = parse_q(value.trim())?;
            // Parameters after q are accept-extensions, which do not affect matching.
            break;
        }
    }
    Some(Range { kind, subtype, q })
}

/// RFC 9110 qvalue: `0`, `0.ddd`, `1` or `1.000`, as thousandths.
fn parse_q(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, digit) in fraction.bytes().enumerate() {
        thousandths += u16::from(digit - b'0') * [100, 10, 1][i];
    }
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The response format from the `Accept` header values (all of them, in order), among every type
/// the gateway writes. No header, or only empty ones, means JSON. Each offered type takes the
/// quality of the most specific range that names it; the highest quality wins, then the more
/// specific match, then the range listed first, then JSON over XML over protobuf. Nothing
/// acceptable is a 406.
pub fn response_format<'a, I>(accept: I) -> Result<ResponseFormat, GatewayError>
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: Clone,
{
    response_format_among(accept, &OFFERS)
}

/// [`response_format`] among `offers` only (in order of preference), for routes that can write
/// fewer formats.
pub fn response_format_among<'a, I>(
    accept: I,
    offers: &[ResponseFormat],
) -> Result<ResponseFormat, GatewayError>
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: Clone,
{
    let values = accept.into_iter().filter(|v| !v.trim().is_empty());
    let mut first = values.clone();
    let Some(only) = first.next() else {
        return offers
            .first()
            .copied()
            .ok_or_else(|| not_acceptable(values, offers));
    };
    // What most clients send, answered without parsing: `*/*` (curl, reqwest) or the default.
    if first.next().is_none() {
        let only = only.trim();
        if let Some(default) = offers.first() {
            if only == "*/*" || only.eq_ignore_ascii_case(default.content_type()) {
                return Ok(*default);
            }
        }
    }
    let ranges: Vec<Option<Range<'_>>> = values
        .clone()
        .flat_map(|v| v.split(','))
        .filter(|e| !e.trim().is_empty())
        .map(parse_range)
        .collect();
    // (quality, specificity, position of the range as a negative so earlier is larger)
    let mut best: Option<(ResponseFormat, (u16, u8, isize))> = None;
    for &offer in offers {
        let mut chosen: Option<(u8, usize, u16)> = None;
        for (position, range) in ranges.iter().enumerate() {
            let Some(range) = range else {
                continue;
            };
            let specificity = range.specificity(offer);
            if specificity > 0 && chosen.is_none_or(|(s, _, _)| specificity > s) {
                chosen = Some((specificity, position, range.q));
            }
        }
        let Some((specificity, position, q)) = chosen else {
            continue;
        };
        if q == 0 {
            continue;
        }
        let rank = (q, specificity, -(position as isize));
        if best.is_none_or(|(_, b)| rank > b) {
            best = Some((offer, rank));
        }
    }
    best.map(|(offer, _)| offer)
        .ok_or_else(|| not_acceptable(values, offers))
}

fn not_acceptable<'a>(
    values: impl Iterator<Item = &'a str>,
    offers: &[ResponseFormat],
) -> GatewayError {
    let values: Vec<&str> = values.collect();
    let offered: Vec<&str> = offers.iter().map(|o| o.content_type()).collect();
    GatewayError::new(
        ErrorKind::NotAcceptable,
        format!(
            "none of the types in Accept {:?} can be produced here; this route writes {}",
            values.join(", "),
            offered.join(", ")
        ),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn request_formats() {
        let cases: &[(Option<&str>, Option<Format>)] = &[
            (None, Some(Format::Json)),
            (Some(""), Some(Format::Json)),
            (Some("application/json"), Some(Format::Json)),
            (Some("Application/JSON; charset=utf-8"), Some(Format::Json)),
            (Some("application/merge-patch+json"), Some(Format::Json)),
            (Some("application/vnd.acme.v1+JSON"), Some(Format::Json)),
            (Some("application/xml"), Some(Format::Xml)),
            (Some("text/xml; charset=UTF-8"), Some(Format::Xml)),
            (Some("application/atom+xml"), Some(Format::Xml)),
            (Some("application/x-protobuf"), Some(Format::Protobuf)),
            (
                Some("application/protobuf; proto=test.v1.AllTypes"),
                Some(Format::Protobuf),
            ),
            (Some("text/plain"), None),
            (Some("application/x-www-form-urlencoded"), None),
            (Some("application/octet-stream"), None),
            (Some("json"), None),
            (Some("+json"), None),
            (Some("application/+json"), None),
        ];
        for (header, want) in cases {
            let got = request_format(*header);
            match want {
                Some(format) => assert_eq!(got.ok(), Some(*format), "{header:?}"),
                None => {
                    let err = got.expect_err(header.unwrap_or("none"));
                    assert_eq!(err.kind(), &ErrorKind::UnsupportedMediaType, "{header:?}");
                }
            }
        }
    }

    fn negotiate(headers: &[&str]) -> Option<ResponseFormat> {
        response_format(headers.iter().copied()).ok()
    }

    #[test]
    fn accept_defaults_and_exact_types() {
        use ResponseFormat::*;
        let cases: &[(&[&str], Option<ResponseFormat>)] = &[
            (&[], Some(Json)),
            (&[""], Some(Json)),
            (&["*/*"], Some(Json)),
            (&["application/json"], Some(Json)),
            (&["application/xml"], Some(ApplicationXml)),
            (&["TEXT/XML"], Some(TextXml)),
            (&["application/x-protobuf"], Some(XProtobuf)),
            (&["application/protobuf"], Some(Protobuf)),
            (&["application/*"], Some(Json)),
            (&["text/*"], Some(TextXml)),
            (&["text/html"], None),
            (&["image/png, text/html;q=0.9"], None),
            (&["garbage"], None),
            (&["*/xml"], None),
            (&["application/json;q=0"], None),
            (&["*/*;q=0"], None),
        ];
        for (headers, want) in cases {
            assert_eq!(negotiate(headers), *want, "{headers:?}");
        }
    }

    #[test]
    fn accept_quality_specificity_and_order() {
        use ResponseFormat::*;
        let cases: &[(&str, ResponseFormat)] = &[
            // The highest quality wins.
            ("application/json;q=0.5, application/xml", ApplicationXml),
            ("application/xml;q=0.4, application/json;q=0.8", Json),
            ("text/xml;q=0.9, application/xml;q=0.91", ApplicationXml),
            // A browser: XML at 0.9 beats JSON through */* at 0.8.
            (
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                ApplicationXml,
            ),
            // The most specific range that names a type gives its quality.
            ("application/*;q=0.5, application/json;q=0", ApplicationXml),
            ("*/*;q=0.1, application/xml;q=0", Json),
            ("*/*, application/json;q=0, application/xml;q=0", TextXml),
            // Equal quality: the exact match over the wildcard.
            ("*/*, application/x-protobuf", XProtobuf),
            ("application/*, text/xml", TextXml),
            // Equal quality and specificity: the range listed first.
            ("text/xml, application/xml", TextXml),
            ("application/xml, text/xml", ApplicationXml),
            ("application/protobuf, application/x-protobuf", Protobuf),
            // Several headers are one list; malformed elements are skipped.
            ("nonsense, application/xml;q=0.3", ApplicationXml),
            ("application/xml;q=2, text/xml;q=0.2", TextXml),
            (
                "application/xml;level=1;q=0.7, application/json;q=0.6",
                ApplicationXml,
            ),
            ("application/json; q=1.000, application/xml; q=0.999", Json),
        ];
        for (header, want) in cases {
            assert_eq!(negotiate(&[header]), Some(*want), "{header}");
        }
        assert_eq!(
            negotiate(&["application/json;q=0.1", "application/xml"]),
            Some(ApplicationXml)
        );
    }

    #[test]
    fn not_acceptable_names_the_header() {
        let err = response_format(["image/png"]).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::NotAcceptable);
        assert!(err.message().contains("image/png"), "{}", err.message());
    }

    #[test]
    fn fewer_offers() {
        let json_only = [ResponseFormat::Json];
        let among = |h: &'static str| response_format_among([h], &json_only).ok();
        assert_eq!(
            among("application/xml, application/json;q=0.1"),
            Some(ResponseFormat::Json)
        );
        assert_eq!(among("*/*"), Some(ResponseFormat::Json));
        assert_eq!(among("application/xml"), None);
        assert_eq!(
            response_format_among(std::iter::empty(), &json_only).ok(),
            Some(ResponseFormat::Json)
        );
    }

    #[test]
    fn q_values() {
        for (text, want) in [
            ("0", Some(0)),
            ("1", Some(1000)),
            ("1.0", Some(1000)),
            ("1.000", Some(1000)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.001", Some(1)),
            ("1.001", None),
            ("0.0001", None),
            ("2", None),
            ("-1", None),
            ("abc", None),
            ("", None),
        ] {
            assert_eq!(parse_q(text), want, "{text}");
        }
    }
}

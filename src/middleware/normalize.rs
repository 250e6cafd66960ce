//! Request normalization, so that every spelling of a path or method meets the policy of its
//! plain form.
//!
//! Routing and every per-route policy (auth, limits, CORS, header rules) see the normalized path
//! and method; a spelling that would otherwise slip past a policy (`//`, `/./`, `/../`, `%2e%2e`,
//! `get`) is rewritten to the plain form or rejected.

use std::borrow::Cow;

use http::Method;

/// Why a path cannot be normalized; the caller answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejected {
    /// The path does not start with `/` (an asterisk or absolute form reached the router).
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// A `..` segment climbs above the root.
    #[error("the request path climbs above the root with '..'")]
    AboveRoot,
    /// A raw control byte (below 0x20, or DEL).
    #[error("the request path contains a control character")]
    Control,
    /// A raw backslash, which some backends and proxies read as a separator.
    #[error("the request path contains a backslash")]
    Backslash,
    /// `%00`, which truncates the path in C-string code downstream.
    #[error("the request path contains an encoded NUL (%00)")]
    EncodedNul,
}

/// Normalizes a request path (without its query string).
///
/// `//` collapses to `/`; `.` and `..` segments are resolved, also when written with percent-encoded
/// dots (`%2e`); every percent-encoded unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded,
/// since RFC 3986 makes both spellings the same path. Other escapes, `%2F` in particular, stay as
/// written: they belong to a segment's value, not to the path's structure. A trailing slash is
/// kept; the empty path is the root. Returns the input borrowed when it is already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathRejected> {
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathRejected::NotAbsolute);
    };
    for &b in path.as_bytes() {
        if b < 0x20 || b == 0x7f {
            return Err(PathRejected::Control);
        }
        if b == b'\\' {
            return Err(PathRejected::Backslash);
        }
    }
    // The common case: one pass that finds nothing to change and allocates nothing.
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        let dirty = (seg.is_empty() && !last)
            || seg == "."
            || seg == ".."
            || matches!(decode_unreserved(seg)?, Cow::Owned(_));
        if dirty {
            return rewrite(rest).map(Cow::Owned);
        }
    }
    Ok(Cow::Borrowed(path))
}

/// The method with its letters uppercased, so `get` or `Post` meets the routes and policies of
/// `GET` and `POST`. Borrowed when already uppercase, as every standard method is.
pub fn normalize_method(method: &Method) -> Cow<'_, Method> {
    let text = method.as_str();
    if !text.bytes().any(|b| b.is_ascii_lowercase()) {
        return Cow::Borrowed(method);
    }
    // Uppercasing keeps a token a token, so this cannot fail; if it did, the method stays as it
    // came and simply matches no route.
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_or(Cow::Borrowed(method), Cow::Owned)
}

/// Builds the normal form of `rest` (the path after its leading `/`).
fn rewrite(rest: &str) -> Result<String, PathRejected> {
    let mut out = String::with_capacity(rest.len() + 1);
    // Whether the result ends with a directory: after `/a/`, `/a/.` or `/a/b/..`.
    let mut trailing = false;
    for seg in rest.split('/') {
        let seg = decode_unreserved(seg)?;
        match &*seg {
            "" | "." => trailing = true,
            ".." => {
                let cut = out.rfind('/').ok_or(PathRejected::AboveRoot)?;
                out.truncate(cut);
                trailing = true;
            }
            text => {
                out.push('/');
                out.push_str(text);
                trailing = false;
            }
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

/// Decodes the escapes of unreserved characters in one segment; others (and malformed `%`
/// sequences, which the router also takes literally) stay as written.
fn decode_unreserved(seg: &str) -> Result<Cow<'_, str>, PathRejected> {
    if !seg.contains('%') {
        return Ok(Cow::Borrowed(seg));
    }
    let bytes = seg.as_bytes();
    // Allocated only once an escape is actually decoded.
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| Some((hex_value(hex[0])? << 4) | hex_value(hex[1])?));
        match escaped {
            Some(0) => return Err(PathRejected::EncodedNul),
            Some(b) if is_unreserved(b) => {
                let out = out.get_or_insert_with(|| String::with_capacity(seg.len()));
                out.push_str(&seg[copied..i]);
                out.push(char::from(b));
                i += 3;
                copied = i;
            }
            _ => i += 1,
        }
    }
    Ok(match out {
        Some(mut out) => {
            out.push_str(&seg[copied..]);
            Cow::Owned(out)
        }
        None => Cow::Borrowed(seg),
    })
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 section 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/v1/shelves/1/books",
            "/v1/shelves/1/books/",
            "/v1/a.b/c..d/.e/f.",
            "/v1/files/a%2Fb",
            "/v1/files/a%2fb",
            "/v1/name%20with%20spaces",
            "/v1/books/1:publish",
            "/v1/caf%C3%A9",
            "/v1/bad%zzescape/%2",
            "/v1/%",
        ] {
            let got = normalize_path(path).unwrap();
            assert!(matches!(got, Cow::Borrowed(_)), "{path} was copied");
            assert_eq!(got, path);
        }
    }

    #[test]
    fn rewrites_to_the_plain_path() {
        for (path, want) in [
            ("", "/"),
            ("//", "/"),
            ("///", "/"),
            ("//v1//shelves///1", "/v1/shelves/1"),
            ("/v1//shelves/", "/v1/shelves/"),
            ("/v1/shelves//", "/v1/shelves/"),
            ("/./v1/./shelves", "/v1/shelves"),
            ("/v1/.", "/v1/"),
            ("/.", "/"),
            ("/v1/admin/../shelves", "/v1/shelves"),
            ("/v1/shelves/1/..", "/v1/shelves/"),
            ("/v1/..", "/"),
            ("/v1/a/b/../../c", "/v1/c"),
            ("/v1/admin/%2e%2e/shelves", "/v1/shelves"),
            ("/v1/admin/%2E%2E/shelves", "/v1/shelves"),
            ("/v1/admin/%2E./shelves", "/v1/shelves"),
            ("/v1/admin/.%2e/shelves", "/v1/shelves"),
            ("/v1/%2e/shelves", "/v1/shelves"),
            ("/v1/%2E/shelves", "/v1/shelves"),
            ("/v1/a%2eb", "/v1/a.b"),
            ("/%76%31/%73helves", "/v1/shelves"),
            ("/v1/%7E%5F%2D", "/v1/~_-"),
            // %2F is data, not a separator, so it neither splits nor hides a dot segment.
            ("/v1/files/%2e%2e%2Fsecret", "/v1/files/..%2Fsecret"),
            ("/v1//files/a%2Fb", "/v1/files/a%2Fb"),
            ("/v1/x/%2e%2e/files/%2F/", "/v1/files/%2F/"),
            // Escapes of reserved characters keep their spelling next to decoded ones.
            ("/v1/%41%2F%42%3a", "/v1/A%2FB%3a"),
            ("/v1/%2e%zz", "/v1/.%zz"),
        ] {
            let got = normalize_path(path).unwrap();
            assert_eq!(got, want, "normalizing {path:?}");
            assert_eq!(normalize_path(&got).unwrap(), got, "{want:?} is stable");
            assert!(matches!(normalize_path(&got).unwrap(), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn rejects_what_cannot_be_made_safe() {
        for (path, want) in [
            ("/..", PathRejected::AboveRoot),
            ("/../v1", PathRejected::AboveRoot),
            ("/v1/../../v1", PathRejected::AboveRoot),
            ("/v1/%2e%2e/%2E%2E/etc", PathRejected::AboveRoot),
            ("//..//", PathRejected::AboveRoot),
            ("v1/shelves", PathRejected::NotAbsolute),
            ("*", PathRejected::NotAbsolute),
            ("/v1/a\0b", PathRejected::Control),
            ("/v1/a\nb", PathRejected::Control),
            ("/v1/a\tb", PathRejected::Control),
            ("/v1/a\x7fb", PathRejected::Control),
            ("/v1\\..\\admin", PathRejected::Backslash),
            ("/v1/a%00b", PathRejected::EncodedNul),
            // Found even after an earlier segment already forced a rewrite.
            ("//v1/a%00", PathRejected::EncodedNul),
        ] {
            assert_eq!(normalize_path(path), Err(want), "{path:?}");
        }
    }

    #[test]
    fn methods_are_uppercased() {
        for (text, want) in [
            ("get", Method::GET),
            ("Post", Method::POST),
            ("pAtCh", Method::PATCH),
            ("options", Method::OPTIONS),
        ] {
            let method = Method::from_bytes(text.as_bytes()).unwrap();
            assert_ne!(
                method, want,
                "{text} is an extension method until normalized"
            );
            assert_eq!(*normalize_method(&method), want);
        }
        let purge = Method::from_bytes(b"purge").unwrap();
        assert_eq!(normalize_method(&purge).as_str(), "PURGE");
        for method in [
            Method::GET,
            Method::DELETE,
            Method::from_bytes(b"PURGE").unwrap(),
        ] {
            assert!(matches!(normalize_method(&method), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn encoded_backslash_and_controls_other_than_nul_are_data() {
        assert_eq!(normalize_path("/v1/a%5Cb").unwrap(), "/v1/a%5Cb");
        assert_eq!(normalize_path("/v1/a%0Ab").unwrap(), "/v1/a%0Ab");
    }
}

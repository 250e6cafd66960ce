//! Splits a request body that arrives in chunks into JSON values, newline-delimited or simply
//! concatenated, each handed on as soon as its last byte has arrived.

use bytes::{Buf, Bytes, BytesMut};
use serde::de::IgnoredAny;

/// Why the body could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The bytes are not a sequence of JSON values.
    #[error("request message {index} is not valid JSON: {reason}")]
    Invalid {
        /// Zero-based position of the bad message in the stream.
        index: usize,
        /// serde_json's explanation.
        reason: String,
    },
    /// One message is larger than the bound.
    #[error("request message {index} is larger than {limit} bytes")]
    TooLarge {
        /// Zero-based position of the message.
        index: usize,
        /// The bound.
        limit: usize,
    },
    /// The body ended inside a message.
    #[error("the request body ended inside message {index}")]
    Truncated {
        /// Zero-based position of the message.
        index: usize,
    },
}

/// Sans-IO splitter: push chunks, pull whole messages. Holds at most one partial message plus
/// one chunk, and refuses a message longer than `limit`.
#[derive(Debug)]
pub struct JsonSplitter {
    buf: BytesMut,
    limit: usize,
    index: usize,
    /// Whether bytes that could end a value arrived since the last incomplete parse; without
    /// them the partial message is not parsed again, so a large message arriving in many small
    /// chunks is not re-scanned for each one.
    may_end: bool,
}

impl JsonSplitter {
    /// A splitter refusing messages longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        JsonSplitter {
            buf: BytesMut::new(),
            limit,
            index: 0,
            may_end: false,
        }
    }

    /// Appends a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        // Objects, arrays and strings end with one of these; numbers and literals end at
        // whitespace or another value.
        self.may_end |= chunk
            .iter()
            .any(|b| matches!(b, b'}' | b']' | b'"' | b'{' | b'[') || b.is_ascii_whitespace())
            || !matches!(self.buf.first(), None | Some(b'{'));
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole message, if one has arrived; `Ok(None)` means more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, SplitError> {
        if !self.may_end {
            return self.check_size();
        }
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<IgnoredAny>();
        match values.next() {
            None => {
                // Only whitespace so far.
                self.buf.clear();
                Ok(None)
            }
            Some(Ok(_)) => {
                let end = values.byte_offset();
                let message = self.buf.split_to(end).freeze();
                let start = message
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())
                    .unwrap_or(message.len());
                let mut message = message;
                message.advance(start);
                if message.len() > self.limit {
                    return Err(SplitError::TooLarge {
                        index: self.index,
                        limit: self.limit,
                    });
                }
                self.index += 1;
                Ok(Some(message))
            }
            Some(Err(err)) if err.is_eof() => {
                self.may_end = false;
                self.check_size()
            }
            Some(Err(err)) => Err(SplitError::Invalid {
                index: self.index,
                reason: err.to_string(),
            }),
        }
    }

    fn check_size(&self) -> Result<Option<Bytes>, SplitError> {
        if self.buf.len() > self.limit {
            return Err(SplitError::TooLarge {
                index: self.index,
                limit: self.limit,
            });
        }
        Ok(None)
    }

    /// Called when the body has ended: an error if a message was left unfinished.
    pub fn finish(&self) -> Result<(), SplitError> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(SplitError::Truncated { index: self.index })
        }
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn split(chunks: &[&str], limit: usize) -> Result<Vec<String>, SplitError> {
        let mut s = JsonSplitter::new(limit);
        let mut out = Vec::new();
        for chunk in chunks {
            s.push(chunk.as_bytes());
            while let Some(m) = s.next_message()? {
                out.push(String::from_utf8_lossy(&m).into_owned());
            }
        }
        s.finish()?;
        Ok(out)
    }

    #[test]
    fn newline_delimited_and_concatenated() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["{\"a\":1}\n{\"a\":2}\n"], &["{\"a\":1}", "{\"a\":2}"]),
            (&["{\"a\":1}{\"a\":2}"], &["{\"a\":1}", "{\"a\":2}"]),
            (&["{\"a\"", ":1}\n  {", "}"], &["{\"a\":1}", "{}"]),
            (&["  \n", "\n"], &[]),
            (&["{\"s\":\"}{\"}"], &["{\"s\":\"}{\"}"]),
            (
                &["{\"s\":\"", "xx", "xx", "\"}{}"],
                &["{\"s\":\"xxxx\"}", "{}"],
            ),
            (&["\"str\"", " 12", " "], &["\"str\"", "12"]),
        ];
        for (chunks, want) in cases {
            let got = split(chunks, 1024).unwrap();
            assert_eq!(&got, want, "{chunks:?}");
        }
    }

    #[test]
    fn failures_name_the_message() {
        assert!(matches!(
            split(&["{}\n{\"a\":}"], 1024),
            Err(SplitError::Invalid { index: 1, .. })
        ));
        assert_eq!(
            split(&["{}", "{\"a\""], 1024),
            Err(SplitError::Truncated { index: 1 })
        );
        assert_eq!(
            split(&["{\"a\":\"", "xxxxxxxxxxxxxxxxxxxx"], 10),
            Err(SplitError::TooLarge {
                index: 0,
                limit: 10
            })
        );
    }
}

//! Parser for google.api.http path templates such as `/v1/{name=shelves/*/books/*}:publish`.

use std::fmt;
use std::str::FromStr;

/// One segment of a parsed template; variables are tracked separately as segment ranges.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A literal segment, matched against the percent-decoded request segment.
    Literal(Box<str>),
    /// `*`: exactly one non-empty request segment.
    Single,
    /// `**`: zero or more request segments; at most one per template.
    Multi,
}

/// A dotted protobuf field path such as `book.name`; always one or more identifiers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(Box<str>);

impl FieldPath {
    /// The dotted form, e.g. `book.name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifiers in order, e.g. `["book", "name"]`; never empty.
    pub fn parts(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split('.')
    }
}

impl AsRef<str> for FieldPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `{field=...}` capture: the template segments `start..end` bind to `field_path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Variable {
    field_path: FieldPath,
    start: usize,
    end: usize,
}

impl Variable {
    /// The request message field this variable fills.
    pub fn field_path(&self) -> &FieldPath {
        &self.field_path
    }

    /// Index of the first template segment the variable covers.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Index one past the last template segment the variable covers (always `> start`).
    pub fn end(&self) -> usize {
        self.end
    }
}

/// A parsed, valid path template; `Display` renders its canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<Box<str>>,
}

impl PathTemplate {
    /// Parses `s`; `"/"` alone is the root template with zero segments.
    pub fn parse(s: &str) -> Result<PathTemplate, TemplateError> {
        Parser::new(s).template()
    }

    /// The segments in order, variables expanded (`{id}` contributes one `Single`).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The custom verb after the final `:`, if any (e.g. `cancel`).
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// The variables in the order they appear; field paths are distinct.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// Index of the `**` segment, if the template has one.
    pub fn multi_index(&self) -> Option<usize> {
        self.segments.iter().position(|s| *s == Segment::Multi)
    }
}

impl FromStr for PathTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PathTemplate::parse(s)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            f.write_str("/")?;
        }
        let mut vars = self.variables.iter().peekable();
        let mut i = 0;
        while let Some(seg) = self.segments.get(i) {
            f.write_str("/")?;
            match vars.next_if(|v| v.start == i) {
                Some(var) => {
                    write!(f, "{{{}", var.field_path)?;
                    let inner = self.segments.get(var.start..var.end).unwrap_or_default();
                    if inner != [Segment::Single] {
                        f.write_str("=")?;
                        for (n, s) in inner.iter().enumerate() {
                            if n > 0 {
                                f.write_str("/")?;
                            }
                            write_segment(f, s)?;
                        }
                    }
                    f.write_str("}")?;
                    i = var.end;
                }
                None => {
                    write_segment(f, seg)?;
                    i += 1;
                }
            }
        }
        if let Some(verb) = &self.verb {
            write!(f, ":{verb}")?;
        }
        Ok(())
    }
}

fn write_segment(f: &mut fmt::Formatter<'_>, seg: &Segment) -> fmt::Result {
    match seg {
        Segment::Literal(l) => f.write_str(l),
        Segment::Single => f.write_str("*"),
        Segment::Multi => f.write_str("**"),
    }
}

/// Why a template was rejected, with the template and the byte offset of the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    template: Box<str>,
    offset: usize,
    kind: TemplateErrorKind,
}

impl TemplateError {
    /// The template text as given.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Byte offset into the template where the problem was found.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// What is wrong.
    pub fn kind(&self) -> &TemplateErrorKind {
        &self.kind
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid path template {:?} at byte {}: {}",
            self.template, self.offset, self.kind
        )
    }
}

impl std::error::Error for TemplateError {}

/// The kinds of template error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateErrorKind {
    /// The template does not start with `/`.
    MissingLeadingSlash,
    /// A segment is empty (`//`, a trailing `/`, `/:verb` or `{name=}`).
    EmptySegment,
    /// A character that the grammar does not allow here.
    Unexpected {
        /// The offending character.
        found: char,
        /// What the grammar allows at this point.
        expected: &'static str,
    },
    /// The template ended early.
    UnexpectedEnd {
        /// What the grammar needs at this point.
        expected: &'static str,
    },
    /// A `{` inside a variable.
    NestedVariable,
    /// A second `**`.
    MultipleDoubleWildcards,
    /// The same field path is bound twice.
    DuplicateVariable(FieldPath),
}

impl fmt::Display for TemplateErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingLeadingSlash => f.write_str("must start with '/'"),
            Self::EmptySegment => f.write_str("empty segment"),
            Self::Unexpected { found, expected } => {
                write!(f, "unexpected {found:?}, expected {expected}")
            }
            Self::UnexpectedEnd { expected } => write!(f, "unexpected end, expected {expected}"),
            Self::NestedVariable => f.write_str("variables cannot nest"),
            Self::MultipleDoubleWildcards => f.write_str("'**' may appear only once"),
            Self::DuplicateVariable(path) => write!(f, "field {:?} is bound twice", path.as_str()),
        }
    }
}

/// Characters allowed in literals and verbs: everything but the template's own syntax, `%`
/// (templates hold decoded text), `=`, `?`, `#`, whitespace and control characters.
fn is_literal_char(c: char) -> bool {
    !matches!(c, '/' | '{' | '}' | '*' | ':' | '=' | '%' | '?' | '#')
        && !c.is_whitespace()
        && !c.is_control()
}

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    seen_multi: bool,
}

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> Self {
        Parser {
            src,
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
            seen_multi: false,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self, c: char) {
        self.pos += c.len_utf8();
    }

    fn error_at(&self, offset: usize, kind: TemplateErrorKind) -> TemplateError {
        TemplateError {
            template: self.src.into(),
            offset,
            kind,
        }
    }

    fn unexpected(&self, expected: &'static str) -> TemplateError {
        let kind = match self.peek() {
            Some(found) => TemplateErrorKind::Unexpected { found, expected },
            None => TemplateErrorKind::UnexpectedEnd { expected },
        };
        self.error_at(self.pos, kind)
    }

    /// Template = "/" Segments [ Verb ] ;
    fn template(mut self) -> Result<PathTemplate, TemplateError> {
        if self.src == "/" {
            return Ok(PathTemplate {
                segments: Vec::new(),
                variables: Vec::new(),
                verb: None,
            });
        }
        if self.peek() != Some('/') {
            return Err(self.error_at(0, TemplateErrorKind::MissingLeadingSlash));
        }
        self.bump('/');
        self.segments(false)?;
        let verb = match self.peek() {
            None => None,
            Some(':') => {
                self.bump(':');
                let verb = self.literal().ok_or_else(|| self.unexpected("a verb"))?;
                if self.peek().is_some() {
                    return Err(self.unexpected("end of template after the verb"));
                }
                Some(verb)
            }
            Some(_) => return Err(self.unexpected("'/', ':' or end of template")),
        };
        Ok(PathTemplate {
            segments: self.segments,
            variables: self.variables,
            verb,
        })
    }

    /// Segments = Segment { "/" Segment } ;
    fn segments(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        loop {
            self.segment(in_variable)?;
            if self.peek() != Some('/') {
                return Ok(());
            }
            self.bump('/');
        }
    }

    /// Segment = "*" | "**" | LITERAL | Variable ;
    fn segment(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        let start = self.pos;
        match self.peek() {
            Some('*') => {
                self.bump('*');
                if self.peek() == Some('*') {
                    if self.seen_multi {
                        return Err(
                            self.error_at(start, TemplateErrorKind::MultipleDoubleWildcards)
                        );
                    }
                    self.bump('*');
                    self.seen_multi = true;
                    self.segments.push(Segment::Multi);
                } else {
                    self.segments.push(Segment::Single);
                }
            }
            Some('{') if in_variable => {
                return Err(self.error_at(start, TemplateErrorKind::NestedVariable));
            }
            Some('{') => self.variable()?,
            None | Some('/' | ':') => {
                return Err(self.error_at(start, TemplateErrorKind::EmptySegment));
            }
            Some('}') if in_variable => {
                return Err(self.error_at(start, TemplateErrorKind::EmptySegment));
            }
            Some(_) => match self.literal() {
                Some(lit) => self.segments.push(Segment::Literal(lit)),
                None => return Err(self.unexpected("a path segment")),
            },
        }
        Ok(())
    }

    /// LITERAL: a non-empty run of literal characters, or `None` if there is none here.
    fn literal(&mut self) -> Option<Box<str>> {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|&c| is_literal_char(c)) {
            self.bump(c);
        }
        let lit = self.src.get(start..self.pos)?;
        (!lit.is_empty()).then(|| lit.into())
    }

    /// Variable = "{" FieldPath [ "=" Segments ] "}" ;
    fn variable(&mut self) -> Result<(), TemplateError> {
        self.bump('{');
        let path_start = self.pos;
        let field_path = self.field_path()?;
        if self.variables.iter().any(|v| v.field_path == field_path) {
            return Err(self.error_at(path_start, TemplateErrorKind::DuplicateVariable(field_path)));
        }
        let start = self.segments.len();
        match self.peek() {
            Some('}') => self.segments.push(Segment::Single),
            Some('=') => {
                self.bump('=');
                self.segments(true)?;
                if self.peek() != Some('}') {
                    return Err(self.unexpected("'/' or '}'"));
                }
            }
            _ => return Err(self.unexpected("'=' or '}'")),
        }
        self.bump('}');
        self.variables.push(Variable {
            field_path,
            start,
            end: self.segments.len(),
        });
        Ok(())
    }

    /// FieldPath = IDENT { "." IDENT } ; IDENT = [A-Za-z_][A-Za-z0-9_]* ;
    fn field_path(&mut self) -> Result<FieldPath, TemplateError> {
        let start = self.pos;
        loop {
            match self.peek() {
                Some(c) if c.is_ascii_alphabetic() || c == '_' => self.bump(c),
                _ => return Err(self.unexpected("a field name")),
            }
            while let Some(c) = self
                .peek()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                self.bump(c);
            }
            if self.peek() != Some('.') {
                break;
            }
            self.bump('.');
        }
        let path = self.src.get(start..self.pos).unwrap_or_default();
        Ok(FieldPath(path.into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    use Segment::{Multi, Single};

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.into())
    }

    #[test]
    fn parses_every_grammar_form() {
        // (template, canonical form, segments, variables as (path, start, end), verb)
        type Case = (
            &'static str,
            &'static str,
            Vec<Segment>,
            Vec<(&'static str, usize, usize)>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("/", "/", vec![], vec![], None),
            ("/v1", "/v1", vec![lit("v1")], vec![], None),
            (
                "/v1/books",
                "/v1/books",
                vec![lit("v1"), lit("books")],
                vec![],
                None,
            ),
            ("/v1/*", "/v1/*", vec![lit("v1"), Single], vec![], None),
            ("/v1/**", "/v1/**", vec![lit("v1"), Multi], vec![], None),
            ("/**/x", "/**/x", vec![Multi, lit("x")], vec![], None),
            (
                "/v1/messages/{message_id}",
                "/v1/messages/{message_id}",
                vec![lit("v1"), lit("messages"), Single],
                vec![("message_id", 2, 3)],
                None,
            ),
            (
                "/v1/{id=*}",
                "/v1/{id}",
                vec![lit("v1"), Single],
                vec![("id", 1, 2)],
                None,
            ),
            (
                "/v1/{name=messages/*}",
                "/v1/{name=messages/*}",
                vec![lit("v1"), lit("messages"), Single],
                vec![("name", 1, 3)],
                None,
            ),
            (
                "/v1/users/{user_id}/messages/{message_id}",
                "/v1/users/{user_id}/messages/{message_id}",
                vec![lit("v1"), lit("users"), Single, lit("messages"), Single],
                vec![("user_id", 2, 3), ("message_id", 4, 5)],
                None,
            ),
            (
                "/v1/{name=shelves/*/books/*}",
                "/v1/{name=shelves/*/books/*}",
                vec![lit("v1"), lit("shelves"), Single, lit("books"), Single],
                vec![("name", 1, 5)],
                None,
            ),
            (
                "/v1/{name=**}",
                "/v1/{name=**}",
                vec![lit("v1"), Multi],
                vec![("name", 1, 2)],
                None,
            ),
            (
                "/v1/{name=**}/edit",
                "/v1/{name=**}/edit",
                vec![lit("v1"), Multi, lit("edit")],
                vec![("name", 1, 2)],
                None,
            ),
            (
                "/v1/{name=**}:cancel",
                "/v1/{name=**}:cancel",
                vec![lit("v1"), Multi],
                vec![("name", 1, 2)],
                Some("cancel"),
            ),
            (
                "/v1/{name=shelves/*/books/**}:publish",
                "/v1/{name=shelves/*/books/**}:publish",
                vec![lit("v1"), lit("shelves"), Single, lit("books"), Multi],
                vec![("name", 1, 5)],
                Some("publish"),
            ),
            (
                "/v1/{name=shelves}",
                "/v1/{name=shelves}",
                vec![lit("v1"), lit("shelves")],
                vec![("name", 1, 2)],
                None,
            ),
            (
                "/v1/{book.name}/x:do-it",
                "/v1/{book.name}/x:do-it",
                vec![lit("v1"), Single, lit("x")],
                vec![("book.name", 1, 2)],
                Some("do-it"),
            ),
            (
                "/v1/{a}/{b=c/**}",
                "/v1/{a}/{b=c/**}",
                vec![lit("v1"), Single, lit("c"), Multi],
                vec![("a", 1, 2), ("b", 2, 4)],
                None,
            ),
            ("/*:get", "/*:get", vec![Single], vec![], Some("get")),
            (
                "/v1.2/café-ü_~!$&'()+,;@",
                "/v1.2/café-ü_~!$&'()+,;@",
                vec![lit("v1.2"), lit("café-ü_~!$&'()+,;@")],
                vec![],
                None,
            ),
        ];
        for (input, canonical, segments, variables, verb) in cases {
            let t = PathTemplate::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.segments(), segments.as_slice(), "{input}");
            let vars: Vec<_> = t
                .variables()
                .iter()
                .map(|v| (v.field_path().as_str(), v.start(), v.end()))
                .collect();
            assert_eq!(vars, variables, "{input}");
            assert_eq!(t.verb(), verb, "{input}");
            assert_eq!(t.to_string(), canonical, "{input}");
            // The canonical form parses back to the same template.
            assert_eq!(canonical.parse::<PathTemplate>().unwrap(), t, "{input}");
        }
    }

    #[test]
    fn field_path_parts() {
        let t = PathTemplate::parse("/v1/{a.b_c.d1}").unwrap();
        let fp = t.variables()[0].field_path();
        assert_eq!(fp.parts().collect::<Vec<_>>(), ["a", "b_c", "d1"]);
        assert_eq!(fp.to_string(), "a.b_c.d1");
    }

    #[test]
    fn multi_index() {
        let cases = [
            ("/v1/{a}", None),
            ("/v1/{a=**}/x", Some(1)),
            ("/**", Some(0)),
        ];
        for (input, want) in cases {
            assert_eq!(
                PathTemplate::parse(input).unwrap().multi_index(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_every_error() {
        use TemplateErrorKind as K;
        let un = |found, expected| K::Unexpected { found, expected };
        let end = |expected| K::UnexpectedEnd { expected };
        let dup = |p: &str| K::DuplicateVariable(FieldPath(p.into()));
        let cases: Vec<(&str, usize, TemplateErrorKind)> = vec![
            ("", 0, K::MissingLeadingSlash),
            ("v1/books", 0, K::MissingLeadingSlash),
            ("//", 1, K::EmptySegment),
            ("/v1//books", 4, K::EmptySegment),
            ("/v1/", 4, K::EmptySegment),
            ("/v1/:verb", 4, K::EmptySegment),
            ("/:verb", 1, K::EmptySegment),
            ("/v1/{name=}", 10, K::EmptySegment),
            ("/v1/{name=a/}", 12, K::EmptySegment),
            ("/v1/}", 4, un('}', "a path segment")),
            ("/v1/a b", 5, un(' ', "'/', ':' or end of template")),
            ("/v1/a%20b", 5, un('%', "'/', ':' or end of template")),
            ("/v1/a=b", 5, un('=', "'/', ':' or end of template")),
            ("/v1/a?x", 5, un('?', "'/', ':' or end of template")),
            ("/v1/*a", 5, un('a', "'/', ':' or end of template")),
            ("/v1/***", 6, un('*', "'/', ':' or end of template")),
            ("/v1/x}", 5, un('}', "'/', ':' or end of template")),
            ("/v1/x:", 6, end("a verb")),
            ("/v1/x:/y", 6, un('/', "a verb")),
            ("/v1/x:a:b", 7, un(':', "end of template after the verb")),
            ("/v1/x:a/b", 7, un('/', "end of template after the verb")),
            ("/v1/{", 5, end("a field name")),
            ("/v1/{}", 5, un('}', "a field name")),
            ("/v1/{1a}", 5, un('1', "a field name")),
            ("/v1/{a.}", 7, un('}', "a field name")),
            ("/v1/{.a}", 5, un('.', "a field name")),
            ("/v1/{a-b}", 6, un('-', "'=' or '}'")),
            ("/v1/{a", 6, end("'=' or '}'")),
            ("/v1/{a=*", 8, end("'/' or '}'")),
            ("/v1/{a=*:x}", 8, un(':', "'/' or '}'")),
            ("/v1/{a=b/{c}}", 9, K::NestedVariable),
            ("/v1/{a={c}}", 7, K::NestedVariable),
            ("/v1/**/**", 7, K::MultipleDoubleWildcards),
            ("/v1/{a=**}/{b=**}", 14, K::MultipleDoubleWildcards),
            ("/v1/{a}/{a}", 9, dup("a")),
            ("/v1/{a.b}/{a.b=x/*}", 11, dup("a.b")),
        ];
        for (input, offset, kind) in cases {
            let err = PathTemplate::parse(input).expect_err(input);
            assert_eq!(
                (err.offset(), err.kind()),
                (offset, &kind),
                "{input}: {err}"
            );
            assert_eq!(err.template(), input);
        }
    }

    #[test]
    fn error_message_names_template_and_offset() {
        let err = PathTemplate::parse("/v1/{a").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid path template "/v1/{a" at byte 6: unexpected end, expected '=' or '}'"#
        );
        let err = PathTemplate::parse("/v1/{a}/{a}").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid path template "/v1/{a}/{a}" at byte 9: field "a" is bound twice"#
        );
    }
}

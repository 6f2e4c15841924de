//! `google.api.http` path templates (google/api/http.proto):
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{user_id}` is `{user_id=*}`: one segment. `**` matches the rest of the
//! path and must come last.

use std::fmt;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `*`: one segment.
    One,
    /// `**`: every remaining segment (at least zero).
    Rest,
}

/// A variable: the field it binds and the span of parts it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template {template:?}: {problem}")]
pub struct TemplateError {
    template: String,
    problem: String,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_ident(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Percent-decodes `text`; `keep_slash` leaves `%2F` encoded (a variable
/// spanning several segments keeps its slashes meaningful).
fn decode(text: &str, keep_slash: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if keep_slash && byte == b'/' {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(byte);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let error = |problem: &str| TemplateError {
            template: text.to_owned(),
            problem: problem.to_owned(),
        };
        let body = text
            .strip_prefix('/')
            .ok_or_else(|| error("must start with /"))?;
        // The verb follows the last ':' outside braces.
        let mut depth = 0i32;
        let mut verb_at = None;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
        }
        let (segments, verb) = match verb_at {
            Some(i) => (&body[..i], Some(body[i + 1..].to_owned())),
            None => (body, None),
        };
        if verb
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains('/'))
        {
            return Err(error("the verb must be one literal"));
        }
        let mut template = Self {
            text: text.to_owned(),
            parts: Vec::new(),
            variables: Vec::new(),
            verb,
        };
        let mut rest = segments;
        while !rest.is_empty() {
            if let Some(inner) = rest.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| error("unclosed {"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                if !field.split('.').all(is_ident) {
                    return Err(error("a variable names a field path"));
                }
                let start = template.parts.len();
                for segment in pattern.split('/') {
                    template.parts.push(match segment {
                        "*" => Part::One,
                        "**" => Part::Rest,
                        "" => return Err(error("empty segment")),
                        s if s.contains(['{', '}']) => return Err(error("nested variable")),
                        literal => Part::Literal(literal.to_owned()),
                    });
                }
                template.variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end: template.parts.len(),
                });
                rest = &inner[close + 1..];
            } else {
                let end = rest.find('/').unwrap_or(rest.len());
                template.parts.push(match &rest[..end] {
                    "*" => Part::One,
                    "**" => Part::Rest,
                    "" => return Err(error("empty segment")),
                    s if s.contains(['{', '}']) => return Err(error("misplaced brace")),
                    literal => Part::Literal(literal.to_owned()),
                });
                rest = &rest[end..];
            }
            rest = match rest.strip_prefix('/') {
                Some("") => return Err(error("trailing /")),
                Some(next) => next,
                None if rest.is_empty() => rest,
                None => return Err(error("a variable must end its segment")),
            };
        }
        if let Some(i) = template.parts.iter().position(|p| *p == Part::Rest)
            && i + 1 != template.parts.len()
        {
            return Err(error("** must come last"));
        }
        Ok(template)
    }

    /// The field paths the template binds, in order (`experiment.key`).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }

    /// The custom method's verb (`setStatus` of `…:setStatus`).
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// How many leading segments are literals: more specific templates are
    /// tried first.
    pub fn literal_prefix_len(&self) -> usize {
        self.parts
            .iter()
            .take_while(|p| matches!(p, Part::Literal(_)))
            .count()
    }

    /// The variables' values when `path` matches (percent-decoded), else
    /// None. `path` is the request's path, without the query.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let body = path.strip_prefix('/')?;
        let segments_text = match &self.verb {
            Some(verb) => body.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            // A ':' in the last segment starts a verb this template has not
            // (a value with ':' there is sent as %3A).
            None if body
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':')) =>
            {
                return None;
            }
            None => body,
        };
        let segments: Vec<&str> = if segments_text.is_empty() {
            Vec::new()
        } else {
            segments_text.split('/').collect()
        };
        // Where each part's segments start (Rest may take several).
        let mut bounds = Vec::with_capacity(self.parts.len() + 1);
        let mut at = 0;
        for part in &self.parts {
            bounds.push(at);
            match part {
                Part::Literal(literal) => {
                    if segments.get(at) != Some(&literal.as_str()) {
                        return None;
                    }
                    at += 1;
                }
                Part::One => {
                    if segments.get(at).is_none_or(|s| s.is_empty()) {
                        return None;
                    }
                    at += 1;
                }
                Part::Rest => at = segments.len(),
            }
        }
        bounds.push(at);
        if at != segments.len() {
            return None;
        }
        self.variables
            .iter()
            .map(|v| {
                let raw = segments[bounds[v.start]..bounds[v.end]].join("/");
                let single = v.end - v.start == 1 && self.parts[v.start] == Part::One;
                Some((v.field.clone(), decode(&raw, !single)?))
            })
            .collect()
    }

    /// The path with each variable as `{field}` (OpenAPI's form, named by
    /// [`openapi_name`]).
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.parts.len() {
            out.push('/');
            if let Some(v) = self.variables.iter().find(|v| v.start == i) {
                out.push('{');
                out.push_str(&openapi_name(&v.field));
                out.push('}');
                i = v.end;
                continue;
            }
            match &self.parts[i] {
                Part::Literal(l) => out.push_str(l),
                Part::One => out.push('*'),
                Part::Rest => out.push_str("**"),
            }
            i += 1;
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }
}

/// A field path as an OpenAPI path parameter name: its last field
/// (`experiment.key` → `key`), so `/v1/experiments/{key}` is one OpenAPI
/// path whichever request field its methods bind.
pub(crate) fn openapi_name(field: &str) -> String {
    field.rsplit('.').next().unwrap_or(field).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(t).ok()?.matches(path)
    }

    #[test]
    fn variables_verbs_and_rest() {
        assert_eq!(
            vars("/v1/users/{user_id}", "/v1/users/u%201"),
            Some(vec![("user_id".into(), "u 1".into())])
        );
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users"), None);
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users/a/b"), None);
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users/"), None);
        assert_eq!(
            vars("/v1/users/{user_id}:setStatus", "/v1/users/abc:setStatus"),
            Some(vec![("user_id".into(), "abc".into())])
        );
        assert_eq!(vars("/v1/users/{user_id}:setStatus", "/v1/users/abc"), None);
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users/abc:setStatus"), None);
        assert_eq!(
            vars("/v1/users/{user_id}", "/v1/users/a%3Ab"),
            Some(vec![("user_id".into(), "a:b".into())])
        );
        assert_eq!(
            vars("/v1/payments:charge", "/v1/payments:charge"),
            Some(vec![])
        );
        assert_eq!(vars("/v1/payments:charge", "/v1/payments"), None);
        assert_eq!(
            vars(
                "/v1/experiments/{experiment.key}",
                "/v1/experiments/checkout"
            ),
            Some(vec![("experiment.key".into(), "checkout".into())])
        );
        assert_eq!(
            vars(
                "/v1/{name=shelves/*/books/**}",
                "/v1/shelves/1/books/a/b%2Fc"
            ),
            Some(vec![("name".into(), "shelves/1/books/a/b%2Fc".into())])
        );
        assert_eq!(
            Template::parse("/v1/experiments/{experiment_key}/assignments/{user_id}")
                .map(|t| t.openapi_path())
                .ok()
                .as_deref(),
            Some("/v1/experiments/{experiment_key}/assignments/{user_id}")
        );
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "v1/users",
            "/v1/users/",
            "/v1/{user_id",
            "/v1/{1x}",
            "/v1/**/x",
            "/v1/x{y}",
            "/v1/users:",
            "/v1//users",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Scheduler id templates such as `inspection:{id}`.
//!
//! The literal text before the first placeholder marks which schedulers in Redis
//! belong to the database: only those are ever reported as orphans or pruned.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTemplate {
    parts: Vec<Part>,
}

impl IdTemplate {
    /// Parses `text`; `{column}` is replaced by that column of the row, `{{` and
    /// `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut column = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' => column.push(c),
                            Some(c) => {
                                return Err(format!("unexpected {c:?} in placeholder of {text:?}"))
                            }
                            None => return Err(format!("unclosed '{{' in {text:?}")),
                        }
                    }
                    if column.is_empty() {
                        return Err(format!("empty placeholder in {text:?}"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Column(column.to_ascii_lowercase()));
                }
                '}' => return Err(format!("unmatched '}}' in {text:?}")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
            return Err(format!(
                "{text:?} has no placeholder such as {{id}}, so every row would get the same id"
            ));
        }
        Ok(Self { parts })
    }

    /// The fixed text every id rendered from this template starts with.
    pub(crate) fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(text)) => text,
            _ => "",
        }
    }

    /// Whether a scheduler id could have been rendered from this template.
    pub(crate) fn may_have_rendered(&self, scheduler_id: &str) -> bool {
        scheduler_id.starts_with(self.literal_prefix())
    }

    /// Renders the id; `lookup` gives a column's text, `None` when absent or NULL.
    pub(crate) fn render<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<std::borrow::Cow<'a, str>>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Column(column) => match lookup(column) {
                    Some(value) => out.push_str(&value),
                    None => return Err(format!("column {column} is missing or NULL")),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn renders_columns_and_keeps_the_literal_prefix() {
        let template = IdTemplate::parse("inspection:{queue}:{id}").unwrap();
        assert_eq!(template.literal_prefix(), "inspection:");
        let id = template
            .render(|c| match c {
                "queue" => Some(Cow::Borrowed("reports")),
                "id" => Some(Cow::Borrowed("42")),
                _ => None,
            })
            .unwrap();
        assert_eq!(id, "inspection:reports:42");
        assert!(template.may_have_rendered("inspection:x"));
        assert!(!template.may_have_rendered("app-made"));
    }

    #[test]
    fn missing_column_is_reported() {
        let template = IdTemplate::parse("t:{tenant}").unwrap();
        let err = template.render(|_| None).unwrap_err();
        assert!(err.contains("tenant"));
    }

    #[test]
    fn escaped_braces_are_literal() {
        let template = IdTemplate::parse("{{x}}:{id}").unwrap();
        assert_eq!(template.literal_prefix(), "{x}:");
    }

    #[test]
    fn malformed_templates_are_rejected() {
        for bad in ["x:{id", "x:}", "x:{}", "x:{a-b}", "constant"] {
            assert!(IdTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}

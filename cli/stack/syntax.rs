//! The stack file's syntax: HCL parsed with hcl-edit into a small tree of literal values,
//! each with its byte span, so that later stages can point at the exact place of a problem.
//!
//! A stack file is configuration, not a program: only literals are accepted (strings,
//! numbers, booleans, lists, objects). Variables, function calls and interpolations are
//! rejected here with a clear message rather than half-evaluated.

use std::ops::Range;

use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{BlockLabel, Body, Structure};
use hcl_edit::Span;

use super::diagnostic::Diagnostic;

pub type ByteSpan = Range<usize>;

#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: ByteSpan,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: ByteSpan) -> Self {
        Spanned { value, span }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    List(Vec<Spanned<Value>>),
    Object(Vec<(Spanned<String>, Spanned<Value>)>),
}

impl Value {
    /// What a person calls this kind of value, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "a whole number",
            Value::Float(_) => "a number with a fraction",
            Value::Bool(_) => "a boolean",
            Value::List(_) => "a list",
            Value::Object(_) => "an object",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub key: Spanned<String>,
    pub value: Spanned<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub ident: Spanned<String>,
    pub labels: Vec<Spanned<String>>,
    pub body: BlockBody,
    pub span: ByteSpan,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockBody {
    pub attributes: Vec<Attribute>,
    pub blocks: Vec<Block>,
}

/// Parses HCL text into a body of literal attributes and blocks.
pub fn parse(text: &str) -> Result<BlockBody, Vec<Diagnostic>> {
    let body = hcl_edit::parser::parse_body(text).map_err(|error| vec![syntax_error(text, error.location().offset(), error.message())])?;
    let mut diagnostics = Vec::new();
    let converted = convert_body(&body, &mut diagnostics);
    if diagnostics.is_empty() {
        Ok(converted)
    } else {
        Err(diagnostics)
    }
}

/// A diagnostic for hcl-edit's parse error at `offset`, in words a stack file's author knows.
fn syntax_error(text: &str, offset: usize, message: &str) -> Diagnostic {
    let offset = offset.min(text.len());
    // hcl-edit rejects a key given twice in one body or object, pointing at the second one.
    if message.contains("found redefined") {
        let key_len = text[offset..].find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-')).unwrap_or(text.len() - offset);
        let key = &text[offset..offset + key_len];
        return Diagnostic::error(offset..offset + key_len.max(1), format!("`{key}` is set twice")).with_help("keep one of them");
    }
    let diagnostic = Diagnostic::error(offset..offset + 1, format!("invalid HCL: {message}"));
    if message.contains("expected `}`") {
        diagnostic.with_help("every block `{` needs its closing `}`; a setting is written `key = value`, one per line")
    } else if message.contains("expected `{`") {
        diagnostic.with_help("a setting is written `key = value`; a block is `name { … }` or `name \"label\" { … }`")
    } else {
        diagnostic
    }
}

fn span_of(item: &impl Span) -> ByteSpan {
    item.span().unwrap_or(0..0)
}

fn convert_body(body: &Body, diagnostics: &mut Vec<Diagnostic>) -> BlockBody {
    let mut out = BlockBody::default();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attribute) => {
                let key = Spanned::new(attribute.key.as_str().to_owned(), span_of(&attribute.key));
                if let Some(value) = convert_expr(&attribute.value, diagnostics) {
                    out.attributes.push(Attribute { key, value });
                }
            }
            Structure::Block(block) => {
                let labels = block
                    .labels
                    .iter()
                    .map(|label| {
                        let text = match label {
                            BlockLabel::Ident(ident) => ident.as_str().to_owned(),
                            BlockLabel::String(string) => string.value().clone(),
                        };
                        Spanned::new(text, span_of(label))
                    })
                    .collect();
                out.blocks.push(Block {
                    ident: Spanned::new(block.ident.as_str().to_owned(), span_of(&block.ident)),
                    labels,
                    body: convert_body(&block.body, diagnostics),
                    span: span_of(block),
                });
            }
        }
    }
    out
}

fn convert_expr(expr: &Expression, diagnostics: &mut Vec<Diagnostic>) -> Option<Spanned<Value>> {
    let span = span_of(expr);
    let value = match expr {
        Expression::String(string) => Value::String(string.value().clone()),
        Expression::Bool(boolean) => Value::Bool(*boolean.value()),
        Expression::Number(number) => {
            let number = number.value();
            match number.as_i64() {
                Some(integer) => Value::Integer(integer),
                None => Value::Float(number.as_f64().unwrap_or(f64::NAN)),
            }
        }
        Expression::Array(array) => Value::List(array.iter().filter_map(|item| convert_expr(item, diagnostics)).collect()),
        Expression::Object(object) => {
            let mut entries = Vec::new();
            for (key, value) in object.iter() {
                let key = match key {
                    ObjectKey::Ident(ident) => Spanned::new(ident.as_str().to_owned(), span_of(ident)),
                    ObjectKey::Expression(Expression::String(string)) => Spanned::new(string.value().clone(), span_of(string)),
                    ObjectKey::Expression(other) => {
                        diagnostics.push(Diagnostic::error(span_of(other), "object keys must be names or quoted strings"));
                        continue;
                    }
                };
                if let Some(value) = convert_expr(value.expr(), diagnostics) {
                    entries.push((key, value));
                }
            }
            Value::Object(entries)
        }
        Expression::HeredocTemplate(heredoc) => match literal_template(&heredoc.template) {
            Some(text) => Value::String(text),
            None => return not_literal(span, diagnostics),
        },
        Expression::StringTemplate(template) => match literal_template(template) {
            Some(text) => Value::String(text),
            None => return not_literal(span, diagnostics),
        },
        Expression::Null(_) => {
            diagnostics.push(Diagnostic::error(span, "`null` is not a value here").with_help("leave the setting out to get its default"));
            return None;
        }
        Expression::Parenthesis(inner) => return convert_expr(inner.inner(), diagnostics),
        Expression::UnaryOp(op) if matches!(op.expr, Expression::Number(_)) => {
            let inner = convert_expr(&op.expr, diagnostics)?;
            match inner.value {
                Value::Integer(i) => Value::Integer(-i),
                Value::Float(f) => Value::Float(-f),
                _ => unreachable!("a number stays a number"),
            }
        }
        _ => return not_literal(span, diagnostics),
    };
    Some(Spanned::new(value, span))
}

fn not_literal(span: ByteSpan, diagnostics: &mut Vec<Diagnostic>) -> Option<Spanned<Value>> {
    diagnostics.push(
        Diagnostic::error(span, "only literal values are allowed in a stack file")
            .with_help("write the value itself; variables, functions and `${...}` interpolations are not evaluated"),
    );
    None
}

/// The text of a template that holds only literal parts (`$${` escapes included).
fn literal_template(template: &hcl_edit::template::Template) -> Option<String> {
    use hcl_edit::template::Element;
    let mut text = String::new();
    for element in template.iter() {
        match element {
            Element::Literal(literal) => text.push_str(literal.value()),
            _ => return None,
        }
    }
    Some(text)
}

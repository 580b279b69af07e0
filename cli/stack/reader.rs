//! Typed reading of a block body: each section of the stack asks for the keys it knows,
//! and whatever it did not ask for is reported as unknown, with a "did you mean".

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::diagnostic::{did_you_mean, Diagnostic};
use super::syntax::{Block, BlockBody, ByteSpan, Spanned, Value};

pub struct Reader<'a> {
    /// How this block is named in messages, e.g. `postgres` or `backup.repo`.
    context: String,
    body: &'a BlockBody,
    /// Span of the block's name; values that were left out are "at" the block.
    pub span: ByteSpan,
    known: RefCell<Vec<&'static str>>,
    diagnostics: &'a RefCell<Vec<Diagnostic>>,
}

impl<'a> Reader<'a> {
    pub fn root(body: &'a BlockBody, diagnostics: &'a RefCell<Vec<Diagnostic>>) -> Self {
        Reader { context: String::new(), body, span: 0..0, known: RefCell::default(), diagnostics }
    }

    fn child(&self, block: &'a Block) -> Reader<'a> {
        let context = if self.context.is_empty() { block.ident.value.clone() } else { format!("{}.{}", self.context, block.ident.value) };
        Reader { context, body: &block.body, span: block.ident.span.clone(), known: RefCell::default(), diagnostics: self.diagnostics }
    }

    pub fn error(&self, diagnostic: Diagnostic) {
        self.diagnostics.borrow_mut().push(diagnostic);
    }

    fn where_(&self) -> String {
        if self.context.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in `{}`", self.context)
        }
    }

    fn attribute(&self, name: &'static str) -> Option<&'a Spanned<Value>> {
        self.known.borrow_mut().push(name);
        let mut found = self.body.attributes.iter().filter(|a| a.key.value == name);
        let first = found.next()?;
        if let Some(again) = found.next() {
            self.error(
                Diagnostic::error(again.key.span.clone(), format!("`{name}` is set twice {}", self.where_())).with_help("keep one of them"),
            );
        }
        Some(&first.value)
    }

    fn mismatch(&self, name: &str, expected: &str, found: &Spanned<Value>) {
        self.error(Diagnostic::error(
            found.span.clone(),
            format!("`{name}` {} must be {expected}, found {}", self.where_(), found.value.kind()),
        ));
    }

    pub fn string(&self, name: &'static str) -> Option<Spanned<String>> {
        let value = self.attribute(name)?;
        match &value.value {
            Value::String(text) => Some(Spanned::new(text.clone(), value.span.clone())),
            _ => {
                self.mismatch(name, "a string", value);
                None
            }
        }
    }

    pub fn boolean(&self, name: &'static str) -> Option<Spanned<bool>> {
        let value = self.attribute(name)?;
        match &value.value {
            Value::Bool(b) => Some(Spanned::new(*b, value.span.clone())),
            _ => {
                self.mismatch(name, "true or false", value);
                None
            }
        }
    }

    /// A whole number in `min..=max`.
    pub fn integer(&self, name: &'static str, min: i64, max: i64) -> Option<Spanned<i64>> {
        let value = self.attribute(name)?;
        match &value.value {
            Value::Integer(i) if (min..=max).contains(i) => Some(Spanned::new(*i, value.span.clone())),
            Value::Integer(i) => {
                self.error(Diagnostic::error(
                    value.span.clone(),
                    format!("`{name}` {} must be between {min} and {max}, found {i}", self.where_()),
                ));
                None
            }
            _ => {
                self.mismatch(name, "a whole number", value);
                None
            }
        }
    }

    /// A duration in milliseconds, within `min..=max`: a whole number of seconds, or a string
    /// with a unit, "250ms", "2s", "1m".
    pub fn duration_millis(&self, name: &'static str, min: u64, max: u64) -> Option<Spanned<u64>> {
        let value = self.attribute(name)?;
        let millis = match &value.value {
            Value::Integer(seconds) => u64::try_from(*seconds).ok().and_then(|s| s.checked_mul(1000)),
            Value::String(text) => parse_millis(text),
            _ => {
                self.mismatch(name, "a duration such as \"250ms\" or a whole number of seconds", value);
                return None;
            }
        };
        match millis {
            Some(ms) if (min..=max).contains(&ms) => Some(Spanned::new(ms, value.span.clone())),
            Some(ms) => {
                self.error(Diagnostic::error(
                    value.span.clone(),
                    format!(
                        "`{name}` {} must be between {} and {}, found {}",
                        self.where_(),
                        human_millis(min),
                        human_millis(max),
                        human_millis(ms)
                    ),
                ));
                None
            }
            None => {
                self.error(
                    Diagnostic::error(value.span.clone(), format!("`{name}` {} is not a duration", self.where_()))
                        .with_help("write a whole number with a unit (ms, s, m, h) and no space: \"250ms\", \"2s\", \"1m\""),
                );
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub fn choice(&self, name: &'static str, choices: &[&'static str]) -> Option<Spanned<&'static str>> {
        let text = self.string(name)?;
        match choices.iter().find(|c| **c == text.value) {
            Some(choice) => Some(Spanned::new(*choice, text.span)),
            None => {
                let list = choices.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
                let mut diagnostic =
                    Diagnostic::error(text.span, format!("`{name}` {} must be one of {list}, found \"{}\"", self.where_(), text.value));
                if let Some(close) = did_you_mean(&text.value, choices.iter().copied()) {
                    diagnostic = diagnostic.with_help(format!("did you mean \"{close}\"?"));
                }
                self.error(diagnostic);
                None
            }
        }
    }

    pub fn string_list(&self, name: &'static str) -> Option<Vec<Spanned<String>>> {
        let value = self.attribute(name)?;
        let Value::List(items) = &value.value else {
            self.mismatch(name, "a list of strings", value);
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Value::String(text) => out.push(Spanned::new(text.clone(), item.span.clone())),
                _ => self.error(
                    Diagnostic::error(
                        item.span.clone(),
                        format!("items of `{name}` {} must be strings, found {}", self.where_(), item.value.kind()),
                    )
                    .with_help("write each item in double quotes, as in [\"a\", \"b\"]"),
                ),
            }
        }
        Some(out)
    }

    /// An object whose values are scalars, kept as text (postgresql.conf parameters, tags),
    /// each with the span of its key.
    pub fn scalar_map(&self, name: &'static str) -> Option<BTreeMap<String, (ByteSpan, Spanned<String>)>> {
        let value = self.attribute(name)?;
        let Value::Object(entries) = &value.value else {
            self.mismatch(name, "an object such as { key = \"value\" }", value);
            return None;
        };
        let mut out = BTreeMap::new();
        for (key, item) in entries {
            let text = match &item.value {
                Value::String(s) => s.clone(),
                Value::Integer(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
                _ => {
                    self.mismatch(&format!("{name}.{}", key.value), "a string, number or boolean", item);
                    continue;
                }
            };
            if out.insert(key.value.clone(), (key.span.clone(), Spanned::new(text, item.span.clone()))).is_some() {
                self.error(Diagnostic::error(key.span.clone(), format!("`{}` is set twice in `{name}`", key.value)));
            }
        }
        Some(out)
    }

    /// At most one block of this name.
    pub fn block(&self, name: &'static str) -> Option<Reader<'a>> {
        let mut blocks = self.blocks_named(name);
        let first = blocks.next()?;
        for again in blocks {
            self.error(
                Diagnostic::error(again.ident.span.clone(), format!("block `{name}` appears twice {}", self.where_()))
                    .with_help("merge the two blocks into one"),
            );
        }
        if let Some(label) = first.labels.first() {
            self.error(
                Diagnostic::error(label.span.clone(), format!("block `{name}` takes no label"))
                    .with_help(format!("remove the label: `{name} {{ … }}`")),
            );
        }
        Some(self.child(first))
    }

    /// Every block of this name with exactly one label, e.g. `database "app" { … }`.
    pub fn labelled_blocks(&self, name: &'static str) -> Vec<(Spanned<String>, Reader<'a>)> {
        let mut out = Vec::new();
        for block in self.blocks_named(name) {
            match block.labels.as_slice() {
                [label] => out.push((label.clone(), self.child(block))),
                _ => self.error(Diagnostic::error(
                    block.ident.span.clone(),
                    format!("block `{name}` needs exactly one label, as in `{name} \"name\" {{ … }}`"),
                )),
            }
        }
        out
    }

    /// Whether the body has a block of this name, whatever its labels.
    pub fn has_block(&self, name: &str) -> bool {
        self.body.blocks.iter().any(|b| b.ident.value == name)
    }

    fn blocks_named(&self, name: &'static str) -> impl Iterator<Item = &'a Block> + use<'a> {
        self.known.borrow_mut().push(name);
        self.body.blocks.iter().filter(move |b| b.ident.value == name)
    }

    /// Like `finish`, but keys that belong to another variant of this block (say `plugin_id`
    /// in host storage) get a message that says so.
    pub fn finish_for(&self, other_variant: &[&'static str]) {
        for attribute in &self.body.attributes {
            if let Some(key) = other_variant.iter().find(|k| **k == attribute.key.value) {
                self.known.borrow_mut().push(key);
                self.error(
                    Diagnostic::error(attribute.key.span.clone(), format!("`{key}` does not apply {} with this `type`", self.where_()))
                        .with_help("remove it, or change `type`"),
                );
            }
        }
        self.finish();
    }

    /// Reports every attribute and block that nobody asked for.
    pub fn finish(&self) {
        let known = self.known.borrow();
        let unknown_attributes = self.body.attributes.iter().map(|a| (&a.key, "key"));
        let unknown_blocks = self.body.blocks.iter().map(|b| (&b.ident, "block"));
        for (name, what) in unknown_attributes.chain(unknown_blocks) {
            if known.contains(&name.value.as_str()) {
                continue;
            }
            let mut diagnostic = Diagnostic::error(name.span.clone(), format!("unknown {what} `{}` {}", name.value, self.where_()));
            diagnostic = match did_you_mean(&name.value, known.iter().copied()) {
                Some(close) => diagnostic.with_help(format!("did you mean `{close}`?")),
                None => diagnostic.with_help(format!("known here: {}", known.join(", "))),
            };
            self.error(diagnostic);
        }
    }
}

/// 7_200_000 → "2h", 1500 → "1500ms": the largest unit that divides it.
fn human_millis(ms: u64) -> String {
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// "250ms", "2s", "1m", "1h" → milliseconds.
fn parse_millis(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

#[cfg(test)]
mod duration_tests {
    use super::parse_millis;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_millis("250ms"), Some(250));
        assert_eq!(parse_millis("2s"), Some(2000));
        assert_eq!(parse_millis("1m"), Some(60_000));
        assert_eq!(parse_millis("250"), None);
        assert_eq!(parse_millis("0.5s"), None);
        assert_eq!(parse_millis("ms"), None);
        assert_eq!(parse_millis("1 s"), None);
    }
}

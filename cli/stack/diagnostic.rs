//! Problems found in a stack file, with the place they were found.
//!
//! Building a diagnostic and rendering it are separate: the pipeline collects
//! `Diagnostic`s, and `render` turns one into the `file:line:col` excerpt with a caret.

use std::fmt::Write as _;
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Byte range in the source; `None` for problems of the whole file.
    pub span: Option<Range<usize>>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(span: impl Into<Option<Range<usize>>>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, message: message.into(), span: span.into(), help: None }
    }

    pub fn warning(span: impl Into<Option<Range<usize>>>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, message: message.into(), span: span.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A stack file's name and text, to place diagnostics in.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    /// A leading UTF-8 byte-order mark (some editors write one) is not part of the text the
    /// editor shows, so it is dropped here, before parsing: every span and column is then
    /// counted as the editor counts.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        Source { name: name.into(), text }
    }

    /// The largest char boundary at or before `offset` (and within the text): a span from
    /// the parser may end inside a multi-byte character.
    fn floor_boundary(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.floor_boundary(offset);
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    fn line_text(&self, line: usize) -> &str {
        self.text.lines().nth(line - 1).unwrap_or("")
    }

    /// Renders a diagnostic the way compilers do:
    ///
    /// ```text
    /// error: unknown key `memebers` in `postgres`
    ///   --> pgnomad.hcl:3:3
    ///    |
    ///  3 |   memebers = 3
    ///    |   ^^^^^^^^
    ///    = help: did you mean `members`?
    /// ```
    pub fn render(&self, diagnostic: &Diagnostic) -> String {
        let mut out = String::new();
        let label = match diagnostic.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{label}: {}", diagnostic.message);
        match &diagnostic.span {
            Some(span) => {
                // A span may end past the text (a syntax error at the end of the file).
                // Either end may fall inside a multi-byte character: both are moved back to
                // the character's start.
                let start = self.floor_boundary(span.start);
                let span = start..self.floor_boundary(span.end.max(start));
                let (line, col) = self.line_col(span.start);
                let text = self.line_text(line);
                let gutter = line.to_string().len();
                let pad = " ".repeat(gutter);
                let _ = writeln!(out, "{pad}--> {}:{line}:{col}", self.name);
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{line} | {text}");
                // The caret covers the span on its first line, at least one character.
                let line_rest = text.chars().count().saturating_sub(col - 1);
                let span_chars = self.text[span.clone()].split('\n').next().unwrap_or("").chars().count();
                let width = span_chars.min(line_rest).max(1);
                let indent: String = text.chars().take(col - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
                let _ = writeln!(out, "{pad} | {indent}{}", "^".repeat(width));
                if let Some(help) = &diagnostic.help {
                    let _ = writeln!(out, "{pad} = help: {help}");
                }
            }
            None => {
                let _ = writeln!(out, "  --> {}", self.name);
                if let Some(help) = &diagnostic.help {
                    let _ = writeln!(out, "   = help: {help}");
                }
            }
        }
        out
    }
}

/// The closest candidate to a misspelt name, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(name, candidate), candidate))
        // Allow about one edit in three, but never as many edits as the name has characters:
        // "ab" is no typo of "on".
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3) && *distance < name.chars().count())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let source = Source::new("f", "ab\ncd\n");
        assert_eq!(source.line_col(0), (1, 1));
        assert_eq!(source.line_col(4), (2, 2));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("memebers", ["members", "version"]), Some("members"));
        assert_eq!(did_you_mean("zzz", ["members", "version"]), None);
    }

    #[test]
    fn did_you_mean_edges() {
        // Nothing to choose from, an empty name, exact matches.
        assert_eq!(did_you_mean("members", []), None);
        assert_eq!(did_you_mean("", ["a", "ttl"]), None);
        assert_eq!(did_you_mean("ttl", ["ttl", "tls"]), Some("ttl"));
        // A transposition counts as one edit.
        assert_eq!(did_you_mean("datacentres", ["datacenters"]), Some("datacenters"));
        assert_eq!(did_you_mean("Members", ["members"]), Some("members"));
        // Short names: two edits are allowed, but not a complete rewrite.
        assert_eq!(did_you_mean("tl", ["ttl"]), Some("ttl"));
        assert_eq!(did_you_mean("ab", ["on", "off"]), None);
        assert_eq!(did_you_mean("x", ["y"]), None);
        // Long names allow a third of their length.
        assert_eq!(did_you_mean("primary_strat_timeot", ["primary_start_timeout"]), Some("primary_start_timeout"));
        assert_eq!(did_you_mean("port", ["postgres_exporter"]), None);
        // The closest wins; on a tie, the first candidate.
        assert_eq!(did_you_mean("consull", ["etcd3", "consul"]), Some("consul"));
        assert_eq!(did_you_mean("of", ["off", "on"]), Some("off"));
    }

    #[test]
    fn renders_a_span_past_the_end_of_the_text() {
        let source = Source::new("f.hcl", "cluster \"main\" {");
        let rendered = source.render(&Diagnostic::error(16..17, "invalid HCL: expected `}`"));
        assert_eq!(rendered, "error: invalid HCL: expected `}`\n --> f.hcl:1:17\n  |\n1 | cluster \"main\" {\n  |                 ^\n");
    }

    #[test]
    fn caret_stops_at_the_end_of_the_first_line() {
        let source = Source::new("f.hcl", "a = [\n  1,\n]\n");
        let rendered = source.render(&Diagnostic::error(4..12, "x"));
        assert!(rendered.ends_with("1 | a = [\n  |     ^\n"), "{rendered}");
    }
}

//! A small YAML document model for Kubernetes manifests, shared by
//! `stickyd lint` and `stickyd inject`.
//!
//! Parsing goes through the event API of `yaml-rust2`, which reports the
//! position of every node: lint needs the line of each field, and inject needs
//! the document number and line of a syntax error. Mappings keep their key
//! order and every scalar keeps its original text and style, so that fields
//! stickyd does not know pass through unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML syntax error, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {doc}, line {line}, column {col}: {message}")]
pub struct ParseError {
    /// 1-based number of the document in the stream.
    pub doc: usize,
    /// 1-based line in the input.
    pub line: usize,
    /// 1-based column in the input.
    pub col: usize,
    pub message: String,
}

/// How a scalar was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Plain: its type (string, number, boolean, null) comes from its text.
    Plain,
    /// Quoted or block: always a string.
    Str,
}

/// A YAML node and the 1-based line where it starts (0 for nodes built in code).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar {
        text: String,
        style: Style,
        tag: Option<String>,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// One document of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// 1-based position in the stream.
    pub index: usize,
    pub root: Node,
}

impl Node {
    /// A string scalar.
    pub fn str(s: impl Into<String>) -> Node {
        Node {
            line: 0,
            value: Value::Scalar {
                text: s.into(),
                style: Style::Str,
                tag: None,
            },
        }
    }

    /// A plain scalar such as a number or a boolean, written as given.
    pub fn plain(s: impl Into<String>) -> Node {
        Node {
            line: 0,
            value: Value::Scalar {
                text: s.into(),
                style: Style::Plain,
                tag: None,
            },
        }
    }

    pub fn int(n: i64) -> Node {
        Node::plain(n.to_string())
    }

    pub fn bool(b: bool) -> Node {
        Node::plain(if b { "true" } else { "false" })
    }

    pub fn null() -> Node {
        Node::plain("")
    }

    pub fn seq(items: Vec<Node>) -> Node {
        Node {
            line: 0,
            value: Value::Seq(items),
        }
    }

    /// A mapping from string keys.
    pub fn map<K: Into<String>>(entries: Vec<(K, Node)>) -> Node {
        Node {
            line: 0,
            value: Value::Map(entries.into_iter().map(|(k, v)| (Node::str(k), v)).collect()),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, style: Style::Plain, tag: None }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a scalar that is not null.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// The value of an integer scalar (or of a string holding one).
    pub fn as_i64(&self) -> Option<i64> {
        self.as_str()?.trim().parse().ok()
    }

    /// Whether the scalar is true (plain `true`, or the string "true").
    pub fn is_true(&self) -> bool {
        self.as_str().is_some_and(|s| s.trim().eq_ignore_ascii_case("true"))
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_seq_mut(&mut self) -> Option<&mut Vec<Node>> {
        match &mut self.value {
            Value::Seq(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<(Node, Node)>> {
        match &mut self.value {
            Value::Map(v) => Some(v),
            _ => None,
        }
    }

    /// The items of a sequence; empty for anything else (null included).
    pub fn items(&self) -> &[Node] {
        self.as_seq().unwrap_or(&[])
    }

    /// The entries of a mapping with their key text; empty for anything else.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node, &Node)> {
        self.as_map()
            .unwrap_or(&[])
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?, k, v)))
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The key node of `key` in a mapping (its line is the field's line).
    pub fn key(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, _)| k)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.as_map_mut()?
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Follows a path of mapping keys.
    pub fn path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |n, k| n.get(k))
    }

    /// The string at a path of mapping keys.
    pub fn str_at(&self, keys: &[&str]) -> Option<&str> {
        self.path(keys)?.as_str()
    }

    /// Sets `key` in a mapping (replacing its value in place, or appending it).
    /// A null node becomes an empty mapping first. Does nothing on other nodes.
    pub fn set(&mut self, key: &str, value: Node) {
        if self.is_null() {
            self.value = Value::Map(Vec::new());
        }
        if let Some(slot) = self.get_mut(key) {
            *slot = value;
        } else if let Some(m) = self.as_map_mut() {
            m.push((Node::str(key), value));
        }
    }

    /// The mapping under `key`, created (empty) when missing or null.
    /// Returns `None` when the node or the value is of another type.
    pub fn entry_map(&mut self, key: &str) -> Option<&mut Node> {
        if self.get(key).is_none_or(Node::is_null) {
            self.set(key, Node::map::<String>(Vec::new()));
        }
        self.get_mut(key).filter(|n| n.as_map().is_some())
    }

    /// The sequence under `key`, created (empty) when missing or null.
    pub fn entry_seq(&mut self, key: &str) -> Option<&mut Vec<Node>> {
        if self.get(key).is_none_or(Node::is_null) {
            self.set(key, Node::seq(Vec::new()));
        }
        self.get_mut(key)?.as_seq_mut()
    }
}

/// The anchored node under construction.
enum Frame {
    Seq(Node, usize),
    Map(Node, usize, Option<Node>),
}

struct Builder {
    docs: Vec<Doc>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    /// The lines where nodes start.
    lines: BTreeSet<usize>,
    /// The first content lines of block scalars.
    blocks: Vec<usize>,
}

fn tag_text(tag: Option<Tag>) -> Option<String> {
    tag.map(|t| {
        if t.handle.starts_with('!') {
            format!("{}{}", t.handle, t.suffix)
        } else {
            format!("!<{}{}>", t.handle, t.suffix)
        }
    })
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Frame::Map(map, _, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    if let Value::Map(entries) = &mut map.value {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        if matches!(
            ev,
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) | Event::Alias(_)
        ) {
            self.lines.insert(line);
        }
        if let Event::Scalar(_, TScalarStyle::Literal | TScalarStyle::Folded, ..) = &ev {
            self.blocks.push(line);
        }
        match ev {
            Event::DocumentStart => {
                self.root = None;
                self.anchors.clear();
            }
            Event::DocumentEnd => {
                let root = self.root.take().unwrap_or_else(Node::null);
                let index = self.docs.len() + 1;
                self.docs.push(Doc { index, root });
            }
            Event::Scalar(text, style, anchor, tag) => {
                let style = match style {
                    TScalarStyle::Plain => Style::Plain,
                    _ => Style::Str,
                };
                let node = Node {
                    line,
                    value: Value::Scalar {
                        text,
                        style,
                        tag: tag_text(tag),
                    },
                };
                self.push_node(node, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(
                Node {
                    line,
                    value: Value::Seq(Vec::new()),
                },
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(
                Node {
                    line,
                    value: Value::Map(Vec::new()),
                },
                anchor,
                None,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Frame::Seq(node, anchor) | Frame::Map(node, anchor, _)) = self.stack.pop() {
                    self.push_node(node, anchor);
                }
            }
            // The parser refuses aliases of unknown anchors, so the lookup succeeds.
            Event::Alias(id) => {
                if let Some(mut node) = self.anchors.get(&id).cloned() {
                    node.line = line;
                    self.push_node(node, 0);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

/// The full-line comments of a stream, each attached to the node that
/// follows it (by that node's line), so that they move with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comments {
    before: BTreeMap<usize, Vec<String>>,
    trailing: Vec<String>,
}

impl Comments {
    pub fn is_empty(&self) -> bool {
        self.before.is_empty() && self.trailing.is_empty()
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Finds the full-line comments of `text`, leaving out lines that are the
/// content of block scalars (a `#!/bin/sh` in a ConfigMap script).
fn collect_comments(text: &str, b: &Builder) -> Comments {
    let lines: Vec<&str> = text.lines().collect();
    // A block scalar's event is marked at its first content line; its content
    // runs until the next node, at that line's indentation or deeper.
    let in_block = |i: usize| {
        b.blocks.iter().any(|&m| {
            let end = b.lines.range(m + 1..).next().copied().unwrap_or(usize::MAX);
            if !(m <= i && i < end) {
                return false;
            }
            let content_indent = lines
                .iter()
                .skip(m - 1)
                .take(end.saturating_sub(m))
                .find(|l| !l.trim().is_empty())
                .map_or(usize::MAX, |l| indent_of(l));
            indent_of(lines[i - 1]) >= content_indent
        })
    };
    let mut c = Comments::default();
    for (idx, l) in lines.iter().enumerate() {
        let i = idx + 1;
        let t = l.trim_start();
        if !t.starts_with('#') || in_block(i) {
            continue;
        }
        let comment = t.trim_end().to_string();
        match b.lines.range(i + 1..).next() {
            Some(&n) => c.before.entry(n).or_default().push(comment),
            None => c.trailing.push(comment),
        }
    }
    c
}

fn load(text: &str) -> Result<Builder, ParseError> {
    let mut b = Builder {
        docs: Vec::new(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        lines: BTreeSet::new(),
        blocks: Vec::new(),
    };
    let mut parser = Parser::new_from_str(text);
    match parser.load(&mut b, true) {
        Ok(()) => Ok(b),
        // The document that failed is the one after those already complete.
        Err(e) => Err(ParseError {
            doc: b.docs.len() + 1,
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        }),
    }
}

/// Parses a stream of YAML documents.
pub fn parse_stream(text: &str) -> Result<Vec<Doc>, ParseError> {
    load(text).map(|b| b.docs)
}

/// Parses a stream of YAML documents and keeps its full-line comments.
pub fn parse_stream_with_comments(text: &str) -> Result<(Vec<Doc>, Comments), ParseError> {
    let mut b = load(text)?;
    let comments = collect_comments(text, &b);
    Ok((std::mem::take(&mut b.docs), comments))
}

/// Whether a string may be written as a plain scalar and still read back as
/// the same string by YAML 1.1 and 1.2 parsers (Kubernetes uses 1.1 rules).
fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        return false;
    }
    if s.ends_with(' ') || s.ends_with(':') || s.contains(": ") || s.contains(" #") {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " _-./:=@,+%()$|*?^".contains(c))
    {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    // YAML 1.1 booleans and nulls, and the float specials.
    !matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "nan" | "inf"
    )
}

/// What a scalar reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarType {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

/// The type a plain scalar has for a YAML 1.1 or 1.2 reader, taking the
/// wider reading where they differ (`yes`, `0644`, `1_000`, `1:30`).
fn plain_type(text: &str) -> ScalarType {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    if matches!(lower.as_str(), "" | "~" | "null") {
        return ScalarType::Null;
    }
    if matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false"
    ) {
        return ScalarType::Bool;
    }
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    let is_int = !digits.is_empty()
        && (digits.chars().all(|c| c.is_ascii_digit() || c == '_' || c == ':')
            && digits.starts_with(|c: char| c.is_ascii_digit())
            || digits
                .strip_prefix("0x")
                .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == '_'))
            || digits
                .strip_prefix("0o")
                .is_some_and(|o| !o.is_empty() && o.chars().all(|c| c.is_digit(8)))
            || digits
                .strip_prefix("0b")
                .is_some_and(|b| !b.is_empty() && b.chars().all(|c| c == '0' || c == '1' || c == '_')));
    if is_int {
        return ScalarType::Int;
    }
    let is_float = matches!(lower.trim_start_matches(['+', '-']), ".inf" | ".nan")
        || (digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && digits.replace('_', "").parse::<f64>().is_ok_and(f64::is_finite));
    if is_float {
        return ScalarType::Float;
    }
    ScalarType::Str
}

impl Node {
    /// What a scalar reads as; `None` for collections.
    pub fn scalar_type(&self) -> Option<ScalarType> {
        match &self.value {
            Value::Scalar { style: Style::Str, .. } => Some(ScalarType::Str),
            Value::Scalar { text, tag: None, .. } => Some(plain_type(text)),
            _ => None,
        }
    }

    /// Whether two scalars read as the same value (the same text and type),
    /// however they are written.
    pub fn same_scalar(&self, other: &Node) -> bool {
        match (&self.value, &other.value) {
            (Value::Scalar { text: a, .. }, Value::Scalar { text: b, .. }) => {
                a == b && self.scalar_type().is_some() && self.scalar_type() == other.scalar_type()
            }
            _ => false,
        }
    }
}

/// A double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Whether a string can be written as a literal block scalar (`|`).
fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\n', '\t'])
        && s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control())
        && !s.contains('\u{feff}')
        && s.lines().all(|l| !l.ends_with([' ', '\t']))
}

/// Appends a scalar in its shortest faithful form. Block scalars start on the
/// next lines at `indent + 2`.
fn emit_scalar(out: &mut String, text: &str, style: Style, tag: &Option<String>, indent: usize) {
    if let Some(t) = tag {
        out.push_str(t);
        out.push(' ');
    }
    match style {
        Style::Plain if text.is_empty() => out.push_str("null"),
        Style::Plain if !text.contains('\n') && !text.starts_with(' ') && !text.ends_with(' ') => out.push_str(text),
        _ if plain_ok(text) => out.push_str(text),
        _ if literal_ok(text) => {
            let trailing = text.len() - text.trim_end_matches('\n').len();
            out.push_str(match trailing {
                0 => "|-",
                1 => "|",
                _ => "|+",
            });
            let body = text.strip_suffix('\n').unwrap_or(text);
            for line in body.split('\n') {
                out.push('\n');
                if !line.is_empty() {
                    out.push_str(&" ".repeat(indent + 2));
                    out.push_str(line);
                }
            }
        }
        _ => out.push_str(&quoted(text)),
    }
}

/// A node in flow style on one line (for the rare complex mapping key).
fn emit_flow(out: &mut String, node: &Node) {
    match &node.value {
        Value::Scalar { text, style, tag } => {
            if let Some(t) = tag {
                out.push_str(t);
                out.push(' ');
            }
            match style {
                Style::Plain if text.is_empty() => out.push_str("null"),
                Style::Plain if !text.contains('\n') => out.push_str(text),
                _ => out.push_str(&quoted(text)),
            }
        }
        Value::Seq(items) => {
            out.push('[');
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                emit_flow(out, n);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                emit_flow(out, k);
                out.push_str(": ");
                emit_flow(out, v);
            }
            out.push('}');
        }
    }
}

/// Writes a mapping key; returns false for a complex key written as `? key`.
fn emit_key(out: &mut String, key: &Node) -> bool {
    match &key.value {
        Value::Scalar { text, style, tag } if !text.contains('\n') => {
            let mut s = String::new();
            emit_scalar(&mut s, text, *style, tag, 0);
            // A plain key must not look like a flow collection or a block scalar.
            if s.starts_with([
                '[', '{', '|', '>', '?', '-', '&', '*', '!', '%', '@', '`', '"', '\'', '#',
            ]) && matches!(style, Style::Plain)
                && tag.is_none()
            {
                out.push_str(&quoted(text));
            } else {
                out.push_str(&s);
            }
            true
        }
        _ => {
            out.push_str("? ");
            emit_flow(out, key);
            false
        }
    }
}

fn is_empty_collection(node: &Node) -> Option<&'static str> {
    match &node.value {
        Value::Seq(v) if v.is_empty() => Some("[]"),
        Value::Map(v) if v.is_empty() => Some("{}"),
        _ => None,
    }
}

/// Emission state: the comments to put back, and those already written.
struct Cx<'a> {
    comments: Option<&'a Comments>,
    done: HashSet<usize>,
}

impl Cx<'_> {
    /// Writes the comments attached to `line`, once, at `pad`.
    fn comments(&mut self, out: &mut String, line: usize, pad: &str) {
        let Some(c) = self.comments.and_then(|c| c.before.get(&line)) else {
            return;
        };
        if line == 0 || !self.done.insert(line) {
            return;
        }
        for l in c {
            out.push_str(pad);
            out.push_str(l);
            out.push('\n');
        }
    }
}

/// Writes the value after `key:` or `- `, at nesting `indent`.
fn emit_value_after(cx: &mut Cx, out: &mut String, node: &Node, indent: usize, after_dash: bool) {
    if let Some(e) = is_empty_collection(node) {
        out.push(' ');
        out.push_str(e);
        out.push('\n');
        return;
    }
    match &node.value {
        Value::Scalar { text, style, tag } => {
            out.push(' ');
            emit_scalar(out, text, *style, tag, indent);
            out.push('\n');
        }
        Value::Map(_) => {
            out.push('\n');
            emit_block(cx, out, node, indent + 2);
        }
        Value::Seq(_) => {
            out.push('\n');
            // Kubernetes style: a sequence under a key is not indented further.
            emit_block(cx, out, node, if after_dash { indent + 2 } else { indent });
        }
    }
}

fn emit_block(cx: &mut Cx, out: &mut String, node: &Node, indent: usize) {
    let pad = " ".repeat(indent);
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                cx.comments(out, k.line, &pad);
                out.push_str(&pad);
                if !emit_key(out, k) {
                    out.push('\n');
                    out.push_str(&pad);
                }
                out.push(':');
                emit_value_after(cx, out, v, indent, false);
            }
        }
        Value::Seq(items) => {
            for item in items {
                cx.comments(out, item.line, &pad);
                match &item.value {
                    Value::Map(entries) if !entries.is_empty() => {
                        // Comments of the first key go above the dash.
                        cx.comments(out, entries[0].0.line, &pad);
                        out.push_str(&pad);
                        out.push('-');
                        // First entry on the dash line, the others aligned with it.
                        let mut s = String::new();
                        emit_block(cx, &mut s, item, indent + 2);
                        out.push(' ');
                        out.push_str(&s[indent + 2..]);
                    }
                    _ => {
                        out.push_str(&pad);
                        out.push('-');
                        emit_value_after(cx, out, item, indent, true);
                    }
                }
            }
        }
        Value::Scalar { text, style, tag } => {
            out.push_str(&pad);
            emit_scalar(out, text, *style, tag, indent.saturating_sub(2));
            out.push('\n');
        }
    }
    if let Some(e) = is_empty_collection(node) {
        out.push_str(&pad);
        out.push_str(e);
        out.push('\n');
    }
}

/// Writes one node as a block-style YAML document body.
pub fn emit(node: &Node) -> String {
    let mut out = String::new();
    let mut cx = Cx {
        comments: None,
        done: HashSet::new(),
    };
    emit_block(&mut cx, &mut out, node, 0);
    out
}

/// Writes a stream of documents separated by `---`; empty documents are left out.
pub fn emit_stream<'a>(docs: impl IntoIterator<Item = &'a Node>) -> String {
    emit_stream_with_comments(docs, &Comments::default())
}

/// Writes a stream of documents with the comments found by
/// [`parse_stream_with_comments`] put back above the nodes they preceded.
pub fn emit_stream_with_comments<'a>(docs: impl IntoIterator<Item = &'a Node>, comments: &Comments) -> String {
    let mut out = String::new();
    let mut cx = Cx {
        comments: Some(comments),
        done: HashSet::new(),
    };
    for node in docs {
        if node.is_null() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("---\n");
        }
        emit_block(&mut cx, &mut out, node, 0);
    }
    for l in &comments.trailing {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(src: &str) -> String {
        let docs = parse_stream(src).unwrap();
        let out = emit_stream(docs.iter().map(|d| &d.root));
        let again = parse_stream(&out).unwrap();
        assert_eq!(
            docs.iter().map(|d| strip(&d.root)).collect::<Vec<_>>(),
            again.iter().map(|d| strip(&d.root)).collect::<Vec<_>>(),
            "re-parsing the output gives the same tree:\n{out}"
        );
        assert_eq!(emit_stream(again.iter().map(|d| &d.root)), out, "emitting is stable");
        out
    }

    /// The tree without lines, and with string scalars compared by text.
    fn strip(n: &Node) -> Node {
        Node {
            line: 0,
            value: match &n.value {
                Value::Scalar { text, style, tag } => Value::Scalar {
                    text: if n.is_null() { "null".into() } else { text.clone() },
                    style: if *style == Style::Plain && plain_ok(text) && !n.is_null() {
                        Style::Str
                    } else {
                        *style
                    },
                    tag: tag.clone(),
                },
                Value::Seq(v) => Value::Seq(v.iter().map(strip).collect()),
                Value::Map(v) => Value::Map(v.iter().map(|(k, v)| (strip(k), strip(v))).collect()),
            },
        }
    }

    #[test]
    fn lines_are_one_based_and_point_at_fields() {
        let docs = parse_stream("a: 1\nb:\n  c: x\n---\nkind: Service\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].root.key("b").unwrap().line, 2);
        assert_eq!(docs[0].root.path(&["b", "c"]).unwrap().line, 3);
        assert_eq!(docs[1].root.key("kind").unwrap().line, 5);
        assert_eq!(docs[1].index, 2);
    }

    #[test]
    fn errors_name_document_and_line() {
        let e = parse_stream("a: 1\n---\nb: 2\n---\nc: [1,\nd: : :\n").unwrap_err();
        assert_eq!(e.doc, 3, "{e}");
        assert!(e.line >= 5, "{e}");
        let e = parse_stream("a: 1\n---\nkind: x\n  bad: indent\n").unwrap_err();
        assert_eq!((e.doc, e.line), (2, 4), "{e}");
    }

    #[test]
    fn scalars_keep_their_type() {
        let out = round_trip(concat!(
            "a: \"172800\"\n",
            "b: 172800\n",
            "c: 'yes'\n",
            "d: yes\n",
            "e: 0644\n",
            "f: \"\"\n",
            "g:\n",
            "h: '/mysite(/|$)(.*)'\n",
            "i: \"line1\\nline2\\n\"\n",
            "j: \"tab\\there\"\n",
            "k: \"a: b\"\n",
            "l: \"- x\"\n",
            "m: \"0.0.0.0:8080\"\n",
            "n: ~\n",
        ));
        assert!(out.contains("a: \"172800\"\n"), "{out}");
        assert!(out.contains("b: 172800\n"), "{out}");
        assert!(out.contains("c: \"yes\"\n"), "{out}");
        assert!(out.contains("d: yes\n"), "{out}");
        assert!(out.contains("e: 0644\n"), "{out}");
        assert!(out.contains("f: \"\"\n"), "{out}");
        assert!(out.contains("g: null\n"), "{out}");
        assert!(out.contains("h: /mysite(/|$)(.*)\n"), "{out}");
        assert!(out.contains("i: |\n  line1\n  line2\n"), "{out}");
        assert!(out.contains("k: \"a: b\"\n"), "{out}");
        assert!(out.contains("m: \"0.0.0.0:8080\"\n"), "{out}");
    }

    #[test]
    fn collections_round_trip_in_kubernetes_style() {
        let src = "spec:\n  containers:\n  - name: app\n    ports:\n    - containerPort: 80\n      name: http\n    args: [\"a\", b]\n  empty: {}\n  none: []\n  nested:\n  - - 1\n    - 2\n  - {}\n";
        let out = round_trip(src);
        assert!(
            out.contains("  containers:\n  - name: app\n    ports:\n    - containerPort: 80\n"),
            "{out}"
        );
        assert!(out.contains("    args:\n    - a\n    - b\n"), "{out}");
        assert!(out.contains("  empty: {}\n  none: []\n"), "{out}");
    }

    #[test]
    fn multi_line_strings_and_odd_keys() {
        round_trip("data:\n  script: |\n    #!/bin/sh\n    echo hi\n\n    exit 0\n  kept: |+\n    a\n\n  \"quoted key\": 1\n  \"123\": x\n  ? [a, b]\n  : c\n");
        round_trip("a: &x {b: 1}\nc: *x\n");
        let out = round_trip("a: !!str 123\nb: !custom x\n");
        assert!(out.contains("b: !custom x"), "{out}");
        round_trip("- 1\n- - a\n  - b\n- k: v\n  l:\n  - 1\n");
    }

    #[test]
    fn full_line_comments_are_kept_with_their_nodes() {
        let src = concat!(
            "# The app.\n",
            "apiVersion: v1\n",
            "kind: ConfigMap\n",
            "data:\n",
            "  # The start script.\n",
            "  start.sh: |\n",
            "    #!/bin/sh\n",
            "    # not a comment: script content\n",
            "    exec app\n",
            "  # After the block.\n",
            "  other: x # end-of-line comments are not kept\n",
            "list:\n",
            "# first item\n",
            "- a: 1\n",
            "  # inside the item\n",
            "  b: 2\n",
            "---\n",
            "# Second document.\n",
            "kind: Service\n",
            "# trailing\n",
        );
        let (docs, comments) = parse_stream_with_comments(src).unwrap();
        let out = emit_stream_with_comments(docs.iter().map(|d| &d.root), &comments);
        assert_eq!(
            out,
            concat!(
                "# The app.\n",
                "apiVersion: v1\n",
                "kind: ConfigMap\n",
                "data:\n",
                "  # The start script.\n",
                "  start.sh: |\n",
                "    #!/bin/sh\n",
                "    # not a comment: script content\n",
                "    exec app\n",
                "  # After the block.\n",
                "  other: x\n",
                "list:\n",
                "# first item\n",
                "- a: 1\n",
                "  # inside the item\n",
                "  b: 2\n",
                "---\n",
                "# Second document.\n",
                "kind: Service\n",
                "# trailing\n",
            )
        );
        // Stable: the output parses to the same comments.
        let (docs2, comments2) = parse_stream_with_comments(&out).unwrap();
        assert_eq!(
            emit_stream_with_comments(docs2.iter().map(|d| &d.root), &comments2),
            out
        );
    }

    #[test]
    fn scalar_types() {
        let t = |y: &str| {
            parse_stream(&format!("v: {y}\n")).unwrap()[0]
                .root
                .get("v")
                .unwrap()
                .scalar_type()
        };
        for (y, ty) in [
            ("", ScalarType::Null),
            ("~", ScalarType::Null),
            ("yes", ScalarType::Bool),
            ("Off", ScalarType::Bool),
            ("8080", ScalarType::Int),
            ("0644", ScalarType::Int),
            ("-1_000", ScalarType::Int),
            ("0x1F", ScalarType::Int),
            ("1:30", ScalarType::Int),
            ("1.5", ScalarType::Float),
            ("1e3", ScalarType::Float),
            (".inf", ScalarType::Float),
            ("0.0.0.0:8080", ScalarType::Str),
            ("50m", ScalarType::Str),
            ("\"8080\"", ScalarType::Str),
            ("http://x", ScalarType::Str),
        ] {
            assert_eq!(t(y), Some(ty), "{y}");
        }
        let a = parse_stream("a: 0.0.0.0:8080\nb: \"0.0.0.0:8080\"\nc: 8080\nd: \"8080\"\n")
            .unwrap()
            .remove(0)
            .root;
        assert!(a.get("a").unwrap().same_scalar(a.get("b").unwrap()));
        assert!(!a.get("c").unwrap().same_scalar(a.get("d").unwrap()));
    }

    #[test]
    fn builders_and_setters() {
        let mut n = Node::null();
        n.set("a", Node::str("x"));
        n.entry_map("m").unwrap().set("k", Node::int(3));
        n.entry_seq("s").unwrap().push(Node::bool(true));
        n.set("a", Node::str("z"));
        assert_eq!(emit(&n), "a: z\nm:\n  k: 3\ns:\n- true\n");
        assert_eq!(n.path(&["m", "k"]).unwrap().as_i64(), Some(3));
    }
}

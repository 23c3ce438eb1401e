//! Where each value of a merged configuration was written, so that an error
//! found in the merged document points at the file and line (or the `--set`
//! argument) that supplied the offending value.
//!
//! While merging, every source's document is read once more with positions
//! (a [`Tree`]: its key paths and where each key and value starts), and each
//! key path of the merged tree remembers its *suppliers*: the source that
//! last set it — or, for a mapping merged key by key, every source since one
//! last replaced it whole. The merged text (what `print-config` shows) is
//! read the same way, so a position in it names a key path.
//!
//! [`Provenance::locate`] rewrites an error: it finds the key path (from an
//! explicit path, else the error's merged position, else its component
//! path), and reports the supplier's file and position instead (for a
//! mapping merged from several sources: the one that defined it, then
//! "merged with" the others). When no key path or supplier is found the
//! error keeps its merged position with a hint to run `print-config`.
//!
//! Promises: only source names, key paths and positions are kept — never a
//! value, so `${env:…}` values cannot leak through here (a `--set` is named
//! by its argument as written, references unresolved); a position inside a
//! scalar (e.g. at an `${env:…}` reference) maps to the start of that
//! scalar in its source. Bounded by the documents: one entry per key path.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::{ConfigError, Position};

/// A YAML document's shape: its keys and where each key and value starts
/// (no positions for a `--set` value).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tree {
    key: Option<Position>,
    value: Option<Position>,
    kids: Kids,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Kids {
    Map(Vec<(String, Tree)>),
    Seq(Vec<Tree>),
    #[default]
    Leaf,
}

impl Tree {
    /// Reads `text`'s shape with positions; `None` if it does not parse
    /// this way (the error then keeps its merged position).
    pub fn read(text: &str) -> Option<Tree> {
        let shape: Spanned<Shape> = serde_saphyr::from_str(text).ok()?;
        Some(Tree { key: None, value: Some(at(&shape.referenced)), kids: shape.value.0 })
    }

    /// The shape of a `--set` value placed under `keys` (no positions).
    fn set(keys: &[&str], value: &Value) -> Tree {
        keys.iter().rev().fold(Tree::value(value), |inner, key| Tree {
            key: None,
            value: None,
            kids: Kids::Map(vec![((*key).to_owned(), inner)]),
        })
    }

    fn value(value: &Value) -> Tree {
        let kids = match value {
            Value::Object(map) => Kids::Map(map.iter().map(|(k, v)| (k.clone(), Tree::value(v))).collect()),
            Value::Array(items) => Kids::Seq(items.iter().map(Tree::value).collect()),
            _ => Kids::Leaf,
        };
        Tree { key: None, value: None, kids }
    }

    fn children(&self) -> Vec<(String, &Tree)> {
        match &self.kids {
            Kids::Map(entries) => entries.iter().map(|(k, t)| (k.clone(), t)).collect(),
            Kids::Seq(items) => items.iter().enumerate().map(|(i, t)| (i.to_string(), t)).collect(),
            Kids::Leaf => Vec::new(),
        }
    }
}

fn at(l: &serde_saphyr::Location) -> Position {
    Position { line: l.line(), column: l.column() }
}

/// A node's shape, deserialized from any YAML value.
struct Shape(Kids);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

macro_rules! leaf {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<Shape, E> { Ok(Shape(Kids::Leaf)) })*
    };
}

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    leaf!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128, visit_u128: u128,
          visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);
    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape(Kids::Leaf))
    }
    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape(Kids::Leaf))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        Shape::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        Shape::deserialize(d)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value: Spanned<Shape> = map.next_value()?;
            let tree = Tree {
                key: Some(at(&key.referenced)),
                value: Some(at(&value.referenced)),
                kids: value.value.0,
            };
            entries.push((key.value, tree));
        }
        Ok(Shape(Kids::Map(entries)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Shape>>()? {
            items.push(Tree { key: None, value: Some(at(&item.referenced)), kids: item.value.0 });
        }
        Ok(Shape(Kids::Seq(items)))
    }
}

/// One source's contribution to a key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Supplier {
    source: usize,
    key: Option<Position>,
    value: Option<Position>,
    mapping: bool,
}

/// Whether a position in the merged text is a key's or a value's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Key,
    Value,
}

/// Who supplied each key path of a merged configuration (module docs).
/// Suppliers of a path, in merge order: one for a scalar or list (the last
/// source to set it), several for a mapping merged key by key.
#[derive(Debug, Default)]
pub struct Provenance {
    /// Sources in merge order, as named in messages (`a.yaml`, `--set k=v`).
    sources: Vec<String>,
    suppliers: BTreeMap<Vec<String>, Vec<Supplier>>,
    /// Key and value positions in the merged text.
    merged: Vec<(Position, Role, Vec<String>)>,
}

impl Provenance {
    /// Records `tree` (a whole source document, or a `--set` shaped by
    /// [`Tree::set`]) as merged over everything recorded before, following
    /// the merge's rule: mappings merge key by key, anything else replaces.
    pub fn add(&mut self, source: String, tree: &Tree) {
        self.sources.push(source);
        let index = self.sources.len() - 1;
        self.record(index, &mut Vec::new(), tree);
    }

    /// Records a `--set` of `value` at `keys`: it replaces that key path
    /// whole (even a mapping), creating or merging into its parents.
    pub fn add_set(&mut self, source: String, keys: &[&str], value: &Value) {
        let path: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.forget(&path);
        self.add(source, &Tree::set(keys, value));
    }

    /// Drops what is recorded at `path` and below it.
    fn forget(&mut self, path: &[String]) {
        let below: Vec<Vec<String>> = self
            .suppliers
            .range(path.to_vec()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in below {
            self.suppliers.remove(&p);
        }
    }

    fn record(&mut self, source: usize, path: &mut Vec<String>, tree: &Tree) {
        for (key, child) in tree.children() {
            path.push(key);
            let mapping = matches!(child.kids, Kids::Map(_));
            let supplier = Supplier { source, key: child.key, value: child.value, mapping };
            let merges = mapping
                && self.suppliers.get(path.as_slice()).and_then(|s| s.last()).is_some_and(|s| s.mapping);
            if merges {
                self.suppliers.entry(path.clone()).or_default().push(supplier);
            } else {
                // Replaced whole: what earlier sources put under it is gone.
                self.forget(path);
                self.suppliers.insert(path.clone(), vec![supplier]);
            }
            self.record(source, path, child);
            path.pop();
        }
    }

    /// Records the positions of every key and value in the merged text.
    pub fn set_merged(&mut self, tree: &Tree) {
        fn walk(out: &mut Vec<(Position, Role, Vec<String>)>, path: &mut Vec<String>, tree: &Tree) {
            for (key, child) in tree.children() {
                path.push(key);
                if let Some(k) = child.key {
                    out.push((k, Role::Key, path.clone()));
                }
                if let Some(v) = child.value {
                    out.push((v, Role::Value, path.clone()));
                }
                walk(out, path, child);
                path.pop();
            }
        }
        self.merged.clear();
        walk(&mut self.merged, &mut Vec::new(), tree);
    }

    /// The key path at a position in the merged text: of the keys and
    /// values starting exactly there, the error's component if it is one
    /// (a component's position is that of its body), else a key (a block
    /// mapping starts where its first key does, and an unknown key is
    /// reported at the key), else the innermost value; with none exactly
    /// there, the last one starting before it on the same line (e.g. for a
    /// position inside a scalar, at an `${env:…}` reference).
    fn path_at(&self, at: Position, component: Option<&[String]>) -> Option<(Vec<String>, Role)> {
        let exact = self.merged.iter().filter(|(p, _, _)| *p == at);
        let found = exact
            .clone()
            .find(|(_, role, path)| *role == Role::Value && Some(path.as_slice()) == component)
            .or_else(|| exact.clone().find(|(_, role, _)| *role == Role::Key))
            .or_else(|| exact.max_by_key(|(_, _, path)| path.len()))
            .or_else(|| {
                self.merged
                    .iter()
                    .filter(|(p, _, _)| p.line == at.line && p.column < at.column)
                    .max_by_key(|(p, _, path)| (p.column, path.len()))
            })?;
        Some((found.2.clone(), found.1))
    }

    /// Rewrites an error about the merged document to name the source
    /// that supplied the value at `path` (when given and known), else at
    /// the error's position, else at its component path (module docs).
    pub fn locate(&self, mut error: ConfigError, path: Option<&[String]>) -> ConfigError {
        let component: Option<Vec<String>> =
            error.component.as_ref().map(|c| c.split("::").map(str::to_owned).collect());
        let target = path
            .filter(|p| self.suppliers.contains_key(*p))
            .map(|p| (p.to_vec(), Role::Value))
            .or_else(|| error.at.and_then(|at| self.path_at(at, component.as_deref())))
            .or_else(|| component.map(|c| (c, Role::Key)));
        let found = target.and_then(|(path, role)| Some((self.suppliers.get(&path)?, role)));
        let Some((&[first, ref others @ ..], role)) = found.map(|(s, role)| (s.as_slice(), role)) else {
            return in_merged_document(error);
        };
        let place = |s: &Supplier| match role {
            Role::Key => s.key.or(s.value),
            Role::Value => s.value.or(s.key),
        };
        // A value has one supplier; a mapping is named where it was
        // defined, then every source merged into it.
        error.source.clone_from(&self.sources[first.source]);
        error.at = place(&first);
        if !others.is_empty() {
            let others: Vec<String> = others
                .iter()
                .map(|s| match place(s) {
                    Some(p) => format!("{}:{}:{}", self.sources[s.source], p.line, p.column),
                    None => self.sources[s.source].clone(),
                })
                .collect();
            error.message.push_str(&format!(" (merged with {})", others.join(", ")));
        }
        error
    }
}

/// An error left pointing into the merged document, with a hint for
/// finding that position.
pub fn in_merged_document(mut error: ConfigError) -> ConfigError {
    if error.at.is_some() {
        error
            .message
            .push_str(" (the position is in the merged document: see `varta-collector print-config`)");
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "receivers:\n  vlp/x:\n    transport: uds\n    path: /a\nlist: [1, 2]\nold: { gone: 1 }\n";
    const B: &str = "receivers:\n  vlp/x:\n    path: /b\nlist: [3]\nold: 5\n";

    fn provenance(sets: &[(&[&str], &str)]) -> Provenance {
        let mut p = Provenance::default();
        p.add("a.yaml".into(), &Tree::read(A).expect("a"));
        p.add("b.yaml".into(), &Tree::read(B).expect("b"));
        for (keys, value) in sets {
            p.add_set(format!("--set {}={value}", keys.join("::")), keys, &Value::String((*value).into()));
        }
        p
    }

    fn error(at: Option<(u64, u64)>, component: Option<&str>) -> ConfigError {
        ConfigError {
            source: "merged configuration (a.yaml + b.yaml)".into(),
            at: at.map(|(line, column)| Position { line, column }),
            component: component.map(str::to_owned),
            message: "bad".into(),
        }
    }

    fn locate(p: &Provenance, path: &[&str], e: ConfigError) -> String {
        let path: Vec<String> = path.iter().map(|k| (*k).to_owned()).collect();
        p.locate(e, (!path.is_empty()).then_some(path.as_slice())).to_string()
    }

    #[test]
    fn each_path_names_its_supplier() {
        let p = provenance(&[]);
        let e = |path: &[&str]| locate(&p, path, error(None, None));
        assert_eq!(e(&["receivers", "vlp/x", "transport"]), "a.yaml:3:16: bad");
        assert_eq!(e(&["receivers", "vlp/x", "path"]), "b.yaml:3:11: bad");
        // A list is replaced whole; so is a mapping by a scalar.
        assert_eq!(e(&["list", "0"]), "b.yaml:4:8: bad");
        assert_eq!(e(&["old"]), "b.yaml:5:6: bad");
        assert!(!p.suppliers.contains_key(&["old".to_owned(), "gone".to_owned()][..]));
        assert!(!p.suppliers.contains_key(&["list".to_owned(), "1".to_owned()][..]));
        // A mapping merged from both: where it was defined, then the other.
        assert_eq!(e(&["receivers", "vlp/x"]), "a.yaml:3:5: bad (merged with b.yaml:3:5)");
    }

    #[test]
    fn a_set_is_named_by_its_argument() {
        let p = provenance(&[(&["receivers", "vlp/x", "path"], "/c"), (&["list"], "x")]);
        let e = |path: &[&str]| locate(&p, path, error(None, None));
        assert_eq!(e(&["receivers", "vlp/x", "path"]), "--set receivers::vlp/x::path=/c: bad");
        assert_eq!(e(&["list"]), "--set list=x: bad");
        assert!(!p.suppliers.contains_key(&["list".to_owned(), "0".to_owned()][..]));
        assert_eq!(
            e(&["receivers", "vlp/x"]),
            "a.yaml:3:5: bad (merged with b.yaml:3:5, --set receivers::vlp/x::path=/c)"
        );
    }

    #[test]
    fn merged_positions_map_to_key_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ["a.yaml", "b.yaml"].map(|name| dir.path().join(name));
        std::fs::write(&files[0], A).expect("write");
        std::fs::write(&files[1], B).expect("write");
        let merged =
            super::super::Origin { files: files.to_vec(), sets: Vec::new() }.merged().expect("merged");
        assert_eq!(
            merged.text,
            "list:\n- 3\nold: 5\nreceivers:\n  vlp/x:\n    path: /b\n    transport: uds\n"
        );
        // As `provenance` builds it, with short source names.
        let mut p = provenance(&[]);
        p.set_merged(&Tree::read(&merged.text).expect("merged"));
        assert_eq!(merged.provenance.expect("provenance").merged, p.merged);
        // A key (an unknown key is reported there), its value, a position
        // inside a value, a component's body.
        assert_eq!(locate(&p, &[], error(Some((7, 5)), None)), "a.yaml:3:5: bad");
        assert_eq!(locate(&p, &[], error(Some((7, 16)), None)), "a.yaml:3:16: bad");
        assert_eq!(locate(&p, &[], error(Some((6, 13)), None)), "b.yaml:3:11: bad");
        assert_eq!(locate(&p, &[], error(Some((6, 5)), None)), "b.yaml:3:5: bad");
        assert_eq!(
            locate(&p, &[], error(Some((6, 5)), Some("receivers::vlp/x"))),
            "a.yaml:3:5: receivers::vlp/x: bad (merged with b.yaml:3:5)"
        );
        // No position: the component path.
        assert_eq!(
            locate(&p, &[], error(None, Some("receivers::vlp/x"))),
            "a.yaml:2:3: receivers::vlp/x: bad (merged with b.yaml:2:3)"
        );
        // Nothing there: the merged position, with the hint.
        let e = locate(&p, &[], error(Some((40, 1)), None));
        assert!(
            e.starts_with("merged configuration (a.yaml + b.yaml):40:1: bad (the position is in the merged"),
            "{e}"
        );
        let e = locate(&p, &[], error(None, Some("receivers::nope")));
        assert_eq!(e, "merged configuration (a.yaml + b.yaml): receivers::nope: bad");
    }
}

//! The label schema: which classes exist, their ids, colours, whether they are "line" classes
//! (drawn as thin strokes in sparse labels) and the order dense labels paint them in.
//!
//! One schema serves every source (scanner, LabelMe folders, POCUS). The default is embedded
//! (`schema/default.toml`); a user can pass their own TOML file of the same form.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{DataError, Result};

/// The embedded default schema, as TOML text.
pub const DEFAULT_SCHEMA_TOML: &str = include_str!("../schema/default.toml");

/// A display colour, written `"#rrggbb"` in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rgb(pub [u8; 3]);

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

impl std::str::FromStr for Rgb {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let hex = s
            .strip_prefix('#')
            .filter(|h| h.len() == 6 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| format!("colour {s:?} is not of the form \"#rrggbb\""))?;
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex digits");
        Ok(Rgb([byte(0), byte(2), byte(4)]))
    }
}

impl Serialize for Rgb {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rgb {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One class of the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDef {
    /// Class id written into masks.
    pub id: u8,
    /// Canonical name.
    pub name: String,
    /// Display colour.
    pub color: Rgb,
    /// Drawn as a thin stroke along its centre line in sparse labels.
    #[serde(default)]
    pub line: bool,
    /// Dense paint order: higher layers are painted over lower ones.
    #[serde(default)]
    pub layer: i32,
    /// Other accepted spellings (LabelMe files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// A validated label schema. Construct it with [`LabelSchema::from_toml_str`],
/// [`LabelSchema::load`] or [`LabelSchema::default`]; the fields are read-only so a schema
/// that exists is a valid one (deserialising validates too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SchemaFile")]
pub struct LabelSchema {
    name: String,
    #[serde(rename = "class")]
    classes: Vec<ClassDef>,
    /// Every accepted spelling, normalised, with the index of its class: built once, because
    /// `lookup` runs for every shape of every annotation.
    #[serde(skip)]
    spellings: Vec<(String, usize)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    name: String,
    #[serde(rename = "class")]
    classes: Vec<ClassDef>,
}

impl TryFrom<SchemaFile> for LabelSchema {
    type Error = String;
    fn try_from(file: SchemaFile) -> std::result::Result<Self, String> {
        let spellings = file
            .classes
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                std::iter::once(&c.name)
                    .chain(&c.aliases)
                    .map(move |s| (normalize_label(s), i))
            })
            .collect();
        let schema = LabelSchema {
            name: file.name,
            classes: file.classes,
            spellings,
        };
        schema.validate()?;
        Ok(schema)
    }
}

/// Lower-cases and drops '-', '_' and spaces, so "A_Line", "a-line" and "aline" match.
pub fn normalize_label(label: &str) -> String {
    label
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Edit distance with adjacent transpositions (optimal string alignment), for "did you mean"
/// suggestions: a swapped pair of letters ("b-lnie") is one typo, not two.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Adds "did you mean" to serde's "unknown field `x`, expected one of `a`, `b`" messages.
pub fn explain_unknown_key(message: &str) -> String {
    let Some(start) = message.find("unknown field `") else {
        return message.to_string();
    };
    let rest = &message[start + "unknown field `".len()..];
    let Some(end) = rest.find('`') else {
        return message.to_string();
    };
    let unknown = &rest[..end];
    let expected: Vec<&str> = rest[end..]
        .split('`')
        .skip(2)
        .step_by(2)
        .filter(|s| !s.is_empty())
        .collect();
    let best = expected
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .min_by_key(|(d, k)| (*d, k.len()));
    match best {
        Some((d, key)) if d <= 3.max(unknown.len() / 3) => {
            format!("{} (did you mean `{key}`?)", message.trim_end())
        }
        _ => message.to_string(),
    }
}

impl Default for LabelSchema {
    fn default() -> Self {
        Self::from_toml_str(DEFAULT_SCHEMA_TOML, Path::new("<embedded default schema>"))
            .expect("the embedded default schema is valid (tested)")
    }
}

impl LabelSchema {
    /// Reads and validates a schema file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = lus_io::read_text(path)?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates schema TOML; `source` names the text in errors.
    pub fn from_toml_str(text: &str, source: &Path) -> Result<Self> {
        let file: SchemaFile = toml::from_str(text).map_err(|e| DataError::Toml {
            path: source.to_path_buf(),
            message: explain_unknown_key(&e.to_string()),
        })?;
        LabelSchema::try_from(file).map_err(|reason| DataError::Schema {
            path: source.to_path_buf(),
            reason,
        })
    }

    /// The schema as TOML (saved beside results so a run records the classes it used).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a schema always serialises")
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.classes.is_empty() {
            return Err("no classes".into());
        }
        if self.classes.len() > 255 {
            return Err(format!(
                "{} classes; at most 255 fit an 8-bit mask beside an ignore id",
                self.classes.len()
            ));
        }
        let mut by_id: Vec<Option<&ClassDef>> = vec![None; self.classes.len()];
        for class in &self.classes {
            if class.name.trim().is_empty() {
                return Err(format!("class id {} has an empty name", class.id));
            }
            let slot = by_id.get_mut(usize::from(class.id)).ok_or_else(|| {
                format!(
                    "class {:?} has id {}, but ids must run 0..{} without gaps",
                    class.name,
                    class.id,
                    self.classes.len()
                )
            })?;
            if let Some(other) = slot {
                return Err(format!(
                    "classes {:?} and {:?} share id {}",
                    other.name, class.name, class.id
                ));
            }
            *slot = Some(class);
        }
        let mut seen: Vec<(String, &str)> = Vec::new();
        for class in &self.classes {
            for spelling in std::iter::once(&class.name).chain(&class.aliases) {
                let key = normalize_label(spelling);
                if key.is_empty() {
                    return Err(format!("class {:?} has an empty alias", class.name));
                }
                if let Some((_, owner)) = seen.iter().find(|(k, _)| *k == key) {
                    if *owner != class.name {
                        return Err(format!(
                            "label {spelling:?} is claimed by both {owner:?} and {:?}",
                            class.name
                        ));
                    }
                    return Err(format!("class {:?} lists {spelling:?} twice", class.name));
                }
                seen.push((key, &class.name));
            }
        }
        if !self.classes.iter().any(|c| c.line) {
            return Err("no class is marked `line = true`; sparse labels would be empty".into());
        }
        if self.background().line {
            return Err("class id 0 (the background) cannot be a line class".into());
        }
        Ok(())
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of classes (the U-Net's output channels).
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// All classes, in file order.
    pub fn classes(&self) -> &[ClassDef] {
        &self.classes
    }

    /// The class with id `id`.
    pub fn class(&self, id: u8) -> Option<&ClassDef> {
        self.classes.iter().find(|c| c.id == id)
    }

    /// The background class (id 0: outside the field of view; sparse labels' "everything else").
    pub fn background(&self) -> &ClassDef {
        self.class(0).expect("validated: id 0 exists")
    }

    /// The class named `label` (canonical name or alias, ignoring case, '-', '_' and spaces).
    pub fn lookup(&self, label: &str) -> Option<&ClassDef> {
        let key = normalize_label(label);
        self.spellings
            .iter()
            .find(|(spelling, _)| *spelling == key)
            .map(|&(_, i)| &self.classes[i])
    }

    /// The class named `label`, or an error message that lists the classes and suggests the
    /// nearest name.
    pub fn resolve(&self, label: &str) -> std::result::Result<&ClassDef, String> {
        self.lookup(label).ok_or_else(|| {
            let key = &normalize_label(label);
            let nearest = self
                .classes
                .iter()
                .flat_map(|c| {
                    std::iter::once(&c.name)
                        .chain(&c.aliases)
                        .map(move |s| (edit_distance(key, &normalize_label(s)), &c.name))
                })
                .min_by_key(|(d, _)| *d);
            let names: Vec<&str> = self.classes.iter().map(|c| c.name.as_str()).collect();
            match nearest {
                Some((d, name)) if d <= 3 => format!(
                    "unknown class {label:?} (did you mean {name:?}?); classes of schema {:?}: {}",
                    self.name,
                    names.join(", ")
                ),
                _ => format!(
                    "unknown class {label:?}; classes of schema {:?}: {}",
                    self.name,
                    names.join(", ")
                ),
            }
        })
    }

    /// The id of the class called exactly `name` (canonical name). For code that names
    /// classes of the default schema, e.g. the scanner.
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.lookup(name).map(|c| c.id)
    }

    /// The line classes (sparse labels draw only these).
    pub fn line_classes(&self) -> impl Iterator<Item = &ClassDef> {
        self.classes.iter().filter(|c| c.line)
    }

    /// Colour of each id, indexed by id (for colourising masks).
    pub fn palette(&self) -> Vec<Rgb> {
        let mut palette = vec![Rgb([0, 0, 0]); self.classes.len()];
        for c in &self.classes {
            palette[usize::from(c.id)] = c.color;
        }
        palette
    }
}

/// Where a schema came from, for saving beside results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemaSource {
    Default,
    File(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<LabelSchema, String> {
        LabelSchema::from_toml_str(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn default_schema_has_the_architecture_classes() {
        let s = LabelSchema::default();
        let names: Vec<&str> = s.classes().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "background",
                "chest-wall",
                "rib",
                "pleural-line",
                "a-line",
                "b-line",
                "lung",
                "consolidation",
                "effusion"
            ]
        );
        let lines: Vec<&str> = s.line_classes().map(|c| c.name.as_str()).collect();
        assert_eq!(lines, ["pleural-line", "a-line", "b-line"]);
        assert_eq!(s.num_classes(), 9);
        assert_eq!(s.lookup("A_Line").unwrap().id, 4);
        assert_eq!(s.lookup("Pleura").unwrap().id, 3);
        assert!(s.lookup("liver").is_none());
        // round trip through TOML
        let again = parse(&s.to_toml_string()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn unknown_label_suggests_the_nearest_class() {
        let s = LabelSchema::default();
        let msg = s.resolve("b-lnie").unwrap_err();
        assert!(msg.contains("did you mean \"b-line\""), "{msg}");
        assert_eq!(edit_distance("blnie", "bline"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        let msg = s.resolve("xyzzy-quux").unwrap_err();
        assert!(!msg.contains("did you mean"), "{msg}");
        assert!(msg.contains("pleural-line"), "{msg}");
    }

    #[test]
    fn invalid_schemas_are_rejected_with_reasons() {
        let two = |a: &str, b: &str| format!("name = \"t\"\n[[class]]\n{a}\n[[class]]\n{b}\n");
        let cases = [
            (
                two(
                    "id = 0\nname = \"bg\"\ncolor = \"#000000\"",
                    "id = 2\nname = \"x\"\ncolor = \"#ffffff\"\nline = true",
                ),
                "without gaps",
            ),
            (
                two(
                    "id = 0\nname = \"bg\"\ncolor = \"#000000\"",
                    "id = 0\nname = \"x\"\ncolor = \"#ffffff\"\nline = true",
                ),
                "share id 0",
            ),
            (
                two(
                    "id = 0\nname = \"bg\"\ncolor = \"#000000\"",
                    "id = 1\nname = \"B_G\"\ncolor = \"#ffffff\"\nline = true",
                ),
                "claimed by both",
            ),
            (
                two(
                    "id = 0\nname = \"bg\"\ncolor = \"#000000\"",
                    "id = 1\nname = \"x\"\ncolor = \"#ffffff\"",
                ),
                "no class is marked",
            ),
            (
                two(
                    "id = 0\nname = \"bg\"\ncolor = \"black\"",
                    "id = 1\nname = \"x\"\ncolor = \"#ffffff\"\nline = true",
                ),
                "#rrggbb",
            ),
            (
                two(
                    "id = 0\nname = \"bg\"\ncolour = \"#000000\"",
                    "id = 1\nname = \"x\"\ncolor = \"#ffffff\"\nline = true",
                ),
                "unknown field `colour`, expected one of `id`, `name`, `color`, `line`, `layer`, `aliases` (did you mean `color`?)",
            ),
            ("name = \"t\"\nclass = []\n".to_string(), "no classes"),
            ("name = \"t\"\n[[class]\n".to_string(), "invalid TOML"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
            assert!(err.starts_with("test.toml: "), "{err}");
        }
    }
}

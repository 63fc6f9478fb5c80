//! Label recipes: how the vector annotation of an image becomes the class-id mask a network
//! trains on. A recipe says, for each class of the schema, whether its objects are drawn over
//! their **full** extent, as a **stroke** along their centre line, or not at all (**off**).
//! Dense and sparse labels are the two built-in recipes; any other is a small TOML table:
//!
//! ```toml
//! # Line classes at full extent, nothing else: dense labels' density, sparse labels' vocabulary.
//! name = "dense-lines"
//! default = "off"
//! lines = "full"
//! ```
//!
//! # Which render a class gets
//! `classes` names classes (schema names or aliases) explicitly; a class it does not name gets
//! `lines` when it is a line class of the schema and `lines` is set, else `default`. The
//! background class (id 0) is the exception: unless `classes` names it, it is `full`, so a
//! shape an annotator labelled `background` ("known to be nothing") paints id 0 under every
//! recipe (at the bottom layer, where it changes nothing unless unlabelled pixels would get the
//! ignore id) instead of vanishing or becoming "ignore" with the `off` classes.
//!
//! # Strokes
//! A stroke follows the object's centre line (a polyline's points, a band's `centerline`, the
//! centre line [`crate::raster::derived_centerline`] derives from a polygon) with butt caps and
//! round joins, `stroke_width` wide. The width is **relative to the image** (by default pixels
//! of a 128-px-wide image, scaled with the width), so a recipe means the same at every size: an
//! absolute width that suits 256 px is a smear at 64 px. With `clip_strokes` (the default) a
//! stroke is also cut to its object's full extent, so a stroke is **never wider than the object
//! it stands for**: a 1-px pleural line stays 1 px in sparse labels, a 12-px B-line band gets a
//! stroke of the recipe's width inside it. `stroke_width = { px = 3.0 }` with
//! `clip_strokes = false` reproduces lus's sparse labels from before recipes.
//!
//! # What is not drawn
//! - `off` classes with `off = "hidden"` (the default) are not drawn at all: their pixels show
//!   what lies beneath them (the lung under a consolidation, say) or, where nothing drawn lies
//!   beneath, the `unlabelled` rule. With `off = "ignore"` their objects are drawn over their full
//!   extent (in layer order, like any class) with the ignore id, so a loss with that ignore id
//!   skips them: "we know something is there, we do not say what".
//! - `unlabelled`: field-of-view pixels no drawn object covers are `background` (id 0: what
//!   sparse labels mean by "everything else") or `ignore` (the ignore id: nobody said what they
//!   are; dense labels' choice). Pixels outside the field of view are always background.
//! - "ignore" uses [`crate::raster::RasterOptions::ignore_id`]. Without one, `unlabelled =
//!   "ignore"` leaves those pixels background (dense labels without an ignore id label every
//!   pixel), while `off = "ignore"` is an error: the recipe asks for something the options
//!   cannot express.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::schema::{ClassDef, LabelSchema};

/// Image width (pixels) at which [`StrokeWidth::PxAt128`] is in pixels.
pub const REFERENCE_WIDTH_PX: f32 = 128.0;

/// Smallest width (pixels) a relative stroke width gives: a one-pixel line stays continuous.
pub const MIN_RELATIVE_STROKE_PX: f32 = 1.0;

/// Default stroke width of the built-in `sparse` recipe: 3 px on a 128-px-wide image.
pub const DEFAULT_STROKE_PX_AT_128: f32 = 3.0;

/// How the objects of one class are drawn.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ClassRender {
    /// The object's whole extent (a filled polygon, a band's outline, a polyline at its width).
    Full,
    /// A stroke along the object's centre line (see the module documentation).
    Stroke,
    /// Not drawn as the class (see [`OffAs`]).
    Off,
}

impl fmt::Display for ClassRender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClassRender::Full => "full",
            ClassRender::Stroke => "stroke",
            ClassRender::Off => "off",
        })
    }
}

/// The width of a recipe's strokes. In TOML `{ px_at_128 = 3.0 }`, `{ fraction = 0.025 }` or
/// `{ px = 3.0 }`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub enum StrokeWidth {
    /// Pixels of an image 128 px wide, scaled with the image's width.
    #[serde(rename = "px_at_128")]
    PxAt128(f32),
    /// A fraction of the image's width.
    #[serde(rename = "fraction")]
    Fraction(f32),
    /// Pixels whatever the image's size.
    #[serde(rename = "px")]
    Px(f32),
}

impl StrokeWidth {
    /// The full width in pixels on an image `image_width` pixels wide. A relative width is at
    /// least [`MIN_RELATIVE_STROKE_PX`]: scaled down to a small image, a thinner stroke could
    /// miss every pixel centre and vanish. An absolute width is taken as given.
    pub fn pixels(self, image_width: u32) -> f32 {
        match self {
            StrokeWidth::PxAt128(px) => {
                (px * image_width as f32 / REFERENCE_WIDTH_PX).max(MIN_RELATIVE_STROKE_PX)
            }
            StrokeWidth::Fraction(f) => (f * image_width as f32).max(MIN_RELATIVE_STROKE_PX),
            StrokeWidth::Px(px) => px,
        }
    }

    fn value(self) -> f32 {
        match self {
            StrokeWidth::PxAt128(v) | StrokeWidth::Fraction(v) | StrokeWidth::Px(v) => v,
        }
    }
}

impl fmt::Display for StrokeWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrokeWidth::PxAt128(px) => write!(f, "{px} px at 128 px"),
            StrokeWidth::Fraction(v) => write!(f, "{v} of the image width"),
            StrokeWidth::Px(px) => write!(f, "{px} px"),
        }
    }
}

/// What the objects of an `off` class become.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum OffAs {
    /// Not drawn: what lies beneath shows (another class, or the `unlabelled` rule).
    #[default]
    Hidden,
    /// Drawn over their full extent with the ignore id.
    Ignore,
}

/// What field-of-view pixels that no drawn object covers become.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unlabelled {
    /// Background (id 0).
    #[default]
    Background,
    /// The ignore id when the options carry one, else background.
    Ignore,
}

/// A label recipe (see the module documentation). In TOML every key but `name` may be left
/// out: `default = "off"`, no `lines`, no `classes`, `stroke_width = { px_at_128 = 3.0 }`,
/// `clip_strokes = true`, `off = "hidden"`, `unlabelled = "background"`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LabelRecipe {
    /// The recipe's name (file names, tables and reports use it): ASCII letters, digits, `-`
    /// and `_`.
    pub name: String,
    /// Render of the classes that neither `classes` nor `lines` covers.
    pub default: ClassRender,
    /// Render of the schema's line classes that `classes` does not name (unset: `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<ClassRender>,
    /// Render of named classes (schema names or aliases).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, ClassRender>,
    /// Width of the strokes.
    pub stroke_width: StrokeWidth,
    /// Cut each stroke to its object's full extent (never wider than the object).
    pub clip_strokes: bool,
    /// What `off` objects become.
    pub off: OffAs,
    /// What field-of-view pixels no drawn object covers become.
    pub unlabelled: Unlabelled,
}

impl Default for LabelRecipe {
    fn default() -> Self {
        LabelRecipe {
            name: String::new(),
            default: ClassRender::Off,
            lines: None,
            classes: BTreeMap::new(),
            stroke_width: StrokeWidth::PxAt128(DEFAULT_STROKE_PX_AT_128),
            clip_strokes: true,
            off: OffAs::Hidden,
            unlabelled: Unlabelled::Background,
        }
    }
}

/// Names of the built-in recipes, in the order they are listed to users.
pub const BUILTIN_RECIPES: [&str; 2] = ["dense", "sparse"];

impl LabelRecipe {
    /// Dense labels: every class over its full extent; field-of-view pixels nobody labelled
    /// get the ignore id when there is one.
    pub fn dense() -> Self {
        LabelRecipe {
            name: "dense".into(),
            default: ClassRender::Full,
            unlabelled: Unlabelled::Ignore,
            ..LabelRecipe::default()
        }
    }

    /// Sparse labels: the schema's line classes as strokes of `width` (clipped to their
    /// objects), every other pixel background.
    pub fn sparse(width: StrokeWidth) -> Self {
        LabelRecipe {
            name: "sparse".into(),
            default: ClassRender::Off,
            lines: Some(ClassRender::Stroke),
            stroke_width: width,
            ..LabelRecipe::default()
        }
    }

    /// lus's sparse labels before recipes: line-class strokes of `width_px` pixels whatever the
    /// image size, not clipped to their objects (what the rasterization golden masks show).
    pub fn legacy_sparse(width_px: f32) -> Self {
        LabelRecipe {
            stroke_width: StrokeWidth::Px(width_px),
            clip_strokes: false,
            ..LabelRecipe::sparse(StrokeWidth::Px(width_px))
        }
    }

    /// The built-in recipe called `name` (see [`BUILTIN_RECIPES`]); `sparse` with the default
    /// width.
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "dense" => Some(LabelRecipe::dense()),
            "sparse" => Some(LabelRecipe::sparse(StrokeWidth::PxAt128(
                DEFAULT_STROKE_PX_AT_128,
            ))),
            _ => None,
        }
    }

    /// Parses a recipe from TOML (unknown keys are errors with the nearest key suggested) and
    /// checks it against `schema`. A recipe without a `name` takes `default_name`. `source`
    /// names the text in errors.
    pub fn from_toml_str(
        text: &str,
        default_name: &str,
        schema: &LabelSchema,
        source: &Path,
    ) -> Result<Self> {
        let mut recipe: LabelRecipe = toml::from_str(text).map_err(|e| DataError::Toml {
            path: source.to_path_buf(),
            message: crate::schema::explain_unknown_key(&e.to_string()),
        })?;
        if recipe.name.is_empty() {
            recipe.name = default_name.to_string();
        }
        recipe.validate(schema).map_err(|e| match e {
            DataError::Config { reason, .. } => DataError::Toml {
                path: source.to_path_buf(),
                message: reason,
            },
            other => other,
        })?;
        Ok(recipe)
    }

    /// A built-in recipe by name, or a recipe file (`.toml`; its name defaults to the file
    /// stem).
    pub fn load(name_or_path: &str, schema: &LabelSchema) -> Result<Self> {
        if let Some(recipe) = LabelRecipe::builtin(name_or_path) {
            return Ok(recipe);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") || path.is_file() {
            let text = lus_io::read_text(path)?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            return LabelRecipe::from_toml_str(&text, &stem, schema, path);
        }
        Err(DataError::config(
            "label recipe",
            format!(
                "{name_or_path:?} is neither a built-in recipe ({}) nor a .toml recipe file",
                BUILTIN_RECIPES.join(", ")
            ),
        ))
    }

    /// Checks the recipe against `schema`: a valid name, named classes that exist (each once),
    /// a positive finite stroke width, and at least one class besides the background drawn.
    pub fn validate(&self, schema: &LabelSchema) -> Result<()> {
        let what = || format!("label recipe {:?}", self.name);
        if !valid_name(&self.name) {
            return Err(DataError::config(
                what(),
                "the name must be non-empty ASCII letters, digits, '-' or '_'",
            ));
        }
        let width = self.stroke_width.value();
        if !(width.is_finite() && width > 0.0) {
            return Err(DataError::config(
                what(),
                format!("stroke_width {} is not a positive finite number", width),
            ));
        }
        if let StrokeWidth::Fraction(f) = self.stroke_width
            && f > 1.0
        {
            return Err(DataError::config(
                what(),
                format!("stroke_width fraction {f} is wider than the image"),
            ));
        }
        let mut seen: Vec<u8> = Vec::new();
        for name in self.classes.keys() {
            let class = schema
                .resolve(name)
                .map_err(|reason| DataError::config(what(), format!("classes: {reason}")))?;
            if seen.contains(&class.id) {
                return Err(DataError::config(
                    what(),
                    format!(
                        "classes: {name:?} names class {:?}, which another key names too",
                        class.name
                    ),
                ));
            }
            seen.push(class.id);
        }
        if schema
            .classes()
            .iter()
            .all(|c| c.id == 0 || self.render_of(c, schema) == ClassRender::Off)
        {
            return Err(DataError::config(
                what(),
                "draws no class: every class is off",
            ));
        }
        Ok(())
    }

    /// How `class` of `schema` is drawn. Unknown names in `classes` are ignored here
    /// ([`LabelRecipe::validate`] rejects them).
    pub fn render_of(&self, class: &ClassDef, schema: &LabelSchema) -> ClassRender {
        for (name, render) in &self.classes {
            if schema.lookup(name).is_some_and(|c| c.id == class.id) {
                return *render;
            }
        }
        if class.id == 0 {
            // An explicit "known to be nothing": painting id 0 at the bottom layer changes
            // nothing where unlabelled pixels are background, and keeps the annotator's word
            // where they would be the ignore id.
            return ClassRender::Full;
        }
        match self.lines {
            Some(render) if class.line => render,
            _ => self.default,
        }
    }

    /// The render of every class id of `schema` (index = id), as the rasterizer uses it.
    pub fn renders(&self, schema: &LabelSchema) -> Vec<ClassRender> {
        let mut out = vec![ClassRender::Off; schema.num_classes()];
        for class in schema.classes() {
            out[usize::from(class.id)] = self.render_of(class, schema);
        }
        out
    }

    /// Whether any class is drawn as a stroke.
    pub fn has_strokes(&self, schema: &LabelSchema) -> bool {
        self.renders(schema).contains(&ClassRender::Stroke)
    }

    /// One line describing the recipe for reports: which classes are full, stroked, off.
    pub fn describe(&self, schema: &LabelSchema) -> String {
        let renders = self.renders(schema);
        let names = |wanted: ClassRender| -> Vec<&str> {
            schema
                .classes()
                .iter()
                .filter(|c| c.id != 0 && renders[usize::from(c.id)] == wanted)
                .map(|c| c.name.as_str())
                .collect()
        };
        let mut parts = Vec::new();
        let full = names(ClassRender::Full);
        if !full.is_empty() {
            parts.push(format!("full extent: {}", full.join(", ")));
        }
        let stroke = names(ClassRender::Stroke);
        if !stroke.is_empty() {
            parts.push(format!(
                "strokes ({}{}): {}",
                self.stroke_width,
                if self.clip_strokes {
                    ", never wider than the object"
                } else {
                    ""
                },
                stroke.join(", ")
            ));
        }
        let off = names(ClassRender::Off);
        if !off.is_empty() {
            parts.push(format!(
                "{}: {}",
                match self.off {
                    OffAs::Hidden => "not drawn",
                    OffAs::Ignore => "ignored (ignore id)",
                },
                off.join(", ")
            ));
        }
        parts.push(format!(
            "unlabelled pixels {}",
            match self.unlabelled {
                Unlabelled::Background => "background",
                Unlabelled::Ignore => "ignore id (if set)",
            }
        ));
        parts.join("; ")
    }
}

/// Whether `name` is a usable recipe (or arm) name: non-empty ASCII letters, digits, `-`, `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_render_as_documented() {
        let schema = LabelSchema::default();
        let dense = LabelRecipe::dense().renders(&schema);
        assert!(dense.iter().all(|&r| r == ClassRender::Full));
        let sparse = LabelRecipe::builtin("sparse").unwrap();
        for class in schema.classes() {
            let expected = if class.id == 0 {
                ClassRender::Full
            } else if class.line {
                ClassRender::Stroke
            } else {
                ClassRender::Off
            };
            assert_eq!(sparse.render_of(class, &schema), expected, "{}", class.name);
        }
        for name in BUILTIN_RECIPES {
            let recipe = LabelRecipe::builtin(name).unwrap();
            assert_eq!(recipe.name, name);
            recipe.validate(&schema).unwrap();
        }
    }

    #[test]
    fn toml_recipes_parse_with_defaults_and_precedence() {
        let schema = LabelSchema::default();
        let recipe = LabelRecipe::from_toml_str(
            "lines = \"stroke\"\nstroke_width = { fraction = 0.01 }\n\
             [classes]\nconsolidation = \"full\"\nEffusion = \"full\"\nb_line = \"full\"\n",
            "sparse-pathology",
            &schema,
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(recipe.name, "sparse-pathology");
        let render = |name: &str| recipe.render_of(schema.lookup(name).unwrap(), &schema);
        assert_eq!(render("a-line"), ClassRender::Stroke);
        assert_eq!(render("b-line"), ClassRender::Full);
        assert_eq!(render("consolidation"), ClassRender::Full);
        assert_eq!(render("effusion"), ClassRender::Full);
        assert_eq!(render("lung"), ClassRender::Off);
        assert_eq!(recipe.stroke_width.pixels(200), 2.0);
        assert!(recipe.clip_strokes);
        let text = toml::to_string(&recipe).unwrap();
        let back: LabelRecipe = toml::from_str(&text).unwrap();
        assert_eq!(back, recipe);
    }

    #[test]
    fn bad_recipes_name_what_is_wrong() {
        let schema = LabelSchema::default();
        for (text, expected) in [
            ("lines = \"strok\"\n", "unknown variant"),
            ("line = \"stroke\"\n", "did you mean `lines`"),
            ("[classes]\nb-lnie = \"full\"\n", "did you mean \"b-line\""),
            (
                "[classes]\nb-line = \"full\"\nblines = \"off\"\n",
                "another key",
            ),
            ("default = \"off\"\n", "draws no class"),
            (
                "lines = \"stroke\"\nstroke_width = { px = 0.0 }\n",
                "stroke_width 0",
            ),
            (
                "lines = \"stroke\"\nstroke_width = { fraction = 2.0 }\n",
                "wider than the image",
            ),
            ("name = \"a b\"\nlines = \"full\"\n", "name"),
        ] {
            let err = LabelRecipe::from_toml_str(text, "r", &schema, Path::new("bad.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("bad.toml"), "{text}: {err}");
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn stroke_widths_scale_with_the_image() {
        assert_eq!(StrokeWidth::PxAt128(3.0).pixels(64), 1.5);
        assert_eq!(StrokeWidth::PxAt128(3.0).pixels(256), 6.0);
        assert_eq!(StrokeWidth::Px(3.0).pixels(64), 3.0);
        assert_eq!(StrokeWidth::Fraction(0.5).pixels(64), 32.0);
        // Scaled down, a relative width stops at one pixel; an absolute one is as given.
        assert_eq!(StrokeWidth::PxAt128(3.0).pixels(32), 1.0);
        assert_eq!(StrokeWidth::Fraction(0.001).pixels(64), 1.0);
        assert_eq!(StrokeWidth::Px(0.5).pixels(32), 0.5);
    }
}

//! Connected-component labelling (two-pass, union-find), matching `scipy.ndimage.label`.
//!
//! Labels are `1..=count` in the order in which each component's first pixel appears in a
//! row-major (raster) scan; background is 0. This is exactly what `scipy.ndimage.label`
//! returns with the cross structuring element (4-connectivity) or the full 3x3 one
//! (8-connectivity); the test fixture compares label images pixel for pixel.

use crate::error::{MetricsError, Result};

/// Which neighbours touch: edge neighbours only, or edges and corners. In config files the
/// number of neighbours: `4` or `8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Connectivity {
    /// Up, down, left, right.
    Four,
    /// The 8 surrounding pixels. The default: a thin diagonal line (an oblique B-line stroke
    /// rasterised one pixel wide) stays one object.
    #[default]
    Eight,
}

impl Connectivity {
    /// The number of neighbours: 4 or 8.
    pub fn neighbours(self) -> u8 {
        match self {
            Connectivity::Four => 4,
            Connectivity::Eight => 8,
        }
    }
}

impl TryFrom<u8> for Connectivity {
    type Error = String;
    fn try_from(neighbours: u8) -> std::result::Result<Self, String> {
        match neighbours {
            4 => Ok(Connectivity::Four),
            8 => Ok(Connectivity::Eight),
            other => Err(format!("connectivity must be 4 or 8, is {other}")),
        }
    }
}

impl From<Connectivity> for u8 {
    fn from(connectivity: Connectivity) -> u8 {
        connectivity.neighbours()
    }
}

impl std::fmt::Display for Connectivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-connected", self.neighbours())
    }
}

/// The result of labelling one binary image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// Row-major labels: 0 = not foreground, `1..=count` = component.
    pub labels: Vec<u32>,
    /// Number of components.
    pub count: usize,
    /// Pixel count of component `k` at index `k - 1`.
    pub areas: Vec<usize>,
}

/// Labels the pixels of `mask` equal to `class`.
pub fn label_class(
    mask: &[u8],
    width: usize,
    height: usize,
    class: u8,
    connectivity: Connectivity,
) -> Result<Components> {
    check_len("component labelling", mask.len(), width, height)?;
    Ok(label_with(width, height, connectivity, |i| {
        mask[i] == class
    }))
}

/// Labels the `true` pixels of a binary mask.
pub fn label_binary(
    foreground: &[bool],
    width: usize,
    height: usize,
    connectivity: Connectivity,
) -> Result<Components> {
    check_len("component labelling", foreground.len(), width, height)?;
    Ok(label_with(width, height, connectivity, |i| foreground[i]))
}

pub(crate) fn check_len(what: &'static str, len: usize, width: usize, height: usize) -> Result<()> {
    match width.checked_mul(height) {
        Some(n) if n == len => Ok(()),
        _ => Err(MetricsError::LengthMismatch {
            what,
            left_name: "mask",
            left: len,
            right_name: "width x height",
            right: width.saturating_mul(height),
        }),
    }
}

/// Union-find root with path halving.
fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let grand = parent[parent[x as usize] as usize];
        parent[x as usize] = grand;
        x = grand;
    }
    x
}

/// Joins the sets of `a` and `b`, keeping the smaller provisional label as the root (any
/// choice would be correct: the second pass numbers sets by their first pixel).
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra < rb {
        parent[rb as usize] = ra;
    } else if rb < ra {
        parent[ra as usize] = rb;
    }
}

fn label_with(
    width: usize,
    height: usize,
    connectivity: Connectivity,
    is_fg: impl Fn(usize) -> bool,
) -> Components {
    let mut labels = vec![0u32; width * height];
    // parent[0] is a dummy so that provisional label k lives at index k.
    let mut parent: Vec<u32> = vec![0];
    // First pass: give each foreground pixel the smallest label among its already-visited
    // neighbours (left, and the row above), recording every other neighbour label as
    // equivalent.
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            if !is_fg(i) {
                continue;
            }
            let mut neighbours = [0u32; 4];
            let mut k = 0;
            let mut push = |l: u32| {
                if l != 0 {
                    neighbours[k] = l;
                    k += 1;
                }
            };
            if x > 0 {
                push(labels[i - 1]);
            }
            if y > 0 {
                let up = i - width;
                push(labels[up]);
                if connectivity == Connectivity::Eight {
                    if x > 0 {
                        push(labels[up - 1]);
                    }
                    if x + 1 < width {
                        push(labels[up + 1]);
                    }
                }
            }
            let found = &neighbours[..k];
            let label = match found.iter().copied().min() {
                None => {
                    let new = parent.len() as u32;
                    parent.push(new);
                    new
                }
                Some(min) => {
                    for &l in found {
                        union(&mut parent, min, l);
                    }
                    min
                }
            };
            labels[i] = label;
        }
    }
    // Second pass: replace provisional labels by consecutive final ones, numbered in the
    // raster order of each set's first pixel (the order scipy uses).
    let mut final_of_root = vec![0u32; parent.len()];
    let mut areas = Vec::new();
    for l in labels.iter_mut() {
        if *l == 0 {
            continue;
        }
        let root = find(&mut parent, *l) as usize;
        if final_of_root[root] == 0 {
            areas.push(0);
            final_of_root[root] = areas.len() as u32;
        }
        *l = final_of_root[root];
        areas[*l as usize - 1] += 1;
    }
    Components {
        width,
        height,
        count: areas.len(),
        labels,
        areas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let w = rows[0].len();
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| u8::from(b == b'#')))
            .collect();
        (data, w, rows.len())
    }

    #[test]
    fn diagonal_touch_joins_only_with_eight_connectivity() {
        let (m, w, h) = parse(&["#..", ".#.", "..#"]);
        let four = label_class(&m, w, h, 1, Connectivity::Four).unwrap();
        assert_eq!(four.count, 3);
        assert_eq!(four.labels, vec![1, 0, 0, 0, 2, 0, 0, 0, 3]);
        let eight = label_class(&m, w, h, 1, Connectivity::Eight).unwrap();
        assert_eq!(eight.count, 1);
        assert_eq!(eight.areas, vec![3]);
    }

    #[test]
    fn u_shape_merges_and_labels_follow_first_pixel_order() {
        // The two arms get different provisional labels and meet in the bottom row; the
        // isolated pixel top right is numbered after the U because the U starts first.
        let (m, w, h) = parse(&["#.#.#", "#.#..", "###.."]);
        let c = label_class(&m, w, h, 1, Connectivity::Four).unwrap();
        assert_eq!(c.count, 2);
        assert_eq!(c.labels, vec![1, 0, 1, 0, 2, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0]);
        assert_eq!(c.areas, vec![7, 1]);
    }

    #[test]
    fn wrong_size_is_an_error_and_empty_image_has_no_components() {
        assert!(label_class(&[0; 5], 2, 3, 1, Connectivity::Eight).is_err());
        let c = label_class(&[], 0, 0, 1, Connectivity::Eight).unwrap();
        assert_eq!(c.count, 0);
    }
}
